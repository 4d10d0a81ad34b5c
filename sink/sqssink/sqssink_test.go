package sqssink

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"fanout/internal/mototest"
	"fanout/sink"
)

func TestMain(m *testing.M) { mototest.Main(m) }

func msg(id, key string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: key,
		Headers: map[string]string{"X-Team": "billing"}}
}

// admin is an SQS client of the test's own, with the moto admin's key.
func admin(t *testing.T, srv *mototest.Server) *sqs.Client {
	t.Helper()
	c, err := parse(json.RawMessage(`{`+srv.Auth(srv.Admin)+`,"queue_url":"http://x/1/q"}`), sink.Ambient{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := c.(*Config).Load(mototest.Ctx(t), mototest.Loopback())
	if err != nil {
		t.Fatal(err)
	}
	return sqs.NewFromConfig(cfg)
}

func createQueue(t *testing.T, client *sqs.Client, name string) string {
	t.Helper()
	in := &sqs.CreateQueueInput{QueueName: aws.String(name)}
	if strings.HasSuffix(name, ".fifo") {
		in.Attributes = map[string]string{"FifoQueue": "true"}
	}
	out, err := client.CreateQueue(mototest.Ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	return *out.QueueUrl
}

func open(t *testing.T, env sink.Env, cfg string) sink.Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(mototest.Ctx(t), env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func receive(t *testing.T, client *sqs.Client, queue string) []types.Message {
	t.Helper()
	out, err := client.ReceiveMessage(mototest.Ctx(t), &sqs.ReceiveMessageInput{
		QueueUrl: aws.String(queue), MaxNumberOfMessages: 10,
		MessageAttributeNames:       []string{"All"},
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameAll},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Messages
}

func TestSend_Standard(t *testing.T) {
	srv := mototest.Need(t)
	client := admin(t, srv)
	queue := createQueue(t, client, "orders-std")
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"queue_url":%q}`, srv.Auth(srv.Admin), queue))
	if err := s.Send(mototest.Ctx(t), msg("dlv_1", "cust-9")); err != nil {
		t.Fatal(err)
	}
	got := receive(t, client, queue)
	if len(got) != 1 {
		t.Fatalf("%d messages, want 1", len(got))
	}
	if b := *got[0].Body; b != `{"type":"order.paid","n":1}` {
		t.Errorf("body = %q", b)
	}
	want := map[string]string{
		sink.HeaderDeliveryID: "dlv_1", sink.HeaderEventID: "evt_dlv_1", sink.HeaderEventType: "order.paid",
		sink.HeaderTenant: "acme", sink.HeaderKey: "cust-9", "content-type": "application/json", "X-Team": "billing",
	}
	for k, v := range want {
		if a, ok := got[0].MessageAttributes[k]; !ok || *a.StringValue != v || *a.DataType != "String" {
			t.Errorf("attribute %s = %+v, want %q", k, a, v)
		}
	}
	if len(got[0].MessageAttributes) != len(want) {
		t.Errorf("%d attributes, want %d", len(got[0].MessageAttributes), len(want))
	}
}

// TestSend_FIFO: the delivery id is the deduplication id, so a resend is
// dropped; the key is the group, and a message without one goes to the
// configured group.
func TestSend_FIFO(t *testing.T) {
	srv := mototest.Need(t)
	client := admin(t, srv)
	queue := createQueue(t, client, "orders.fifo")
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"queue_url":%q,"message_group_id":"all-orders"}`, srv.Auth(srv.Admin), queue))
	ctx := mototest.Ctx(t)
	for _, m := range []*sink.Message{msg("dlv_1", "cust-9"), msg("dlv_1", "cust-9"), msg("dlv_2", "")} {
		if err := s.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got := receive(t, client, queue)
	groups := map[string]string{}
	for _, m := range got {
		groups[m.Attributes["MessageDeduplicationId"]] = m.Attributes["MessageGroupId"]
	}
	if len(got) != 2 || groups["dlv_1"] != "cust-9" || groups["dlv_2"] != "all-orders" {
		t.Fatalf("%d messages, dedup id -> group %v; want dlv_1 -> cust-9, dlv_2 -> all-orders and the resend dropped", len(got), groups)
	}
}

// fake is an SQS endpoint that answers every request with status and body,
// and records the requests' Authorization headers.
type fake struct {
	*httptest.Server
	mu    sync.Mutex
	auths []string
	heads []http.Header
}

func newFake(t *testing.T, status int, body string) *fake {
	f := &fake{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		f.mu.Lock()
		f.auths = append(f.auths, r.Header.Get("Authorization"))
		f.heads = append(f.heads, r.Header.Clone())
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.0")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f
}

func fakeCfg(f *fake, extra string) string {
	return `{"region":"us-east-1","endpoint_url":"` + f.URL + `","queue_url":"` + f.URL + `/123456789012/q"` + extra + `}`
}

const testCreds = `,"access_key_id":"AKIATESTTESTTEST","secret_access_key":"config-secret-key-0123456789"`

func TestSend_Outcomes(t *testing.T) {
	srv := mototest.Need(t)
	client := admin(t, srv)
	queue := createQueue(t, client, "outcomes")
	cfg := func(c mototest.Creds, q string) string {
		return fmt.Sprintf(`{%s,"queue_url":%q}`, srv.Auth(c), q)
	}
	tests := []struct {
		name string
		cfg  func(t *testing.T) string
		m    *sink.Message
		want sink.Outcome
	}{
		// The credentials are the config's: only an edit mends them.
		{"unknown access key", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: "AKIANOSUCHKEY0000000", SecretAccessKey: srv.Admin.SecretAccessKey}, queue)
		}, nil, sink.Permanent},
		{"wrong secret", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: srv.Admin.AccessKeyID, SecretAccessKey: "wrong-secret-wrong-secret"}, queue)
		}, nil, sink.Permanent},
		{"unknown access key (AWS's answer)", func(t *testing.T) string {
			return fakeCfg(newFake(t, 400, `{"__type":"com.amazon.coral.service#InvalidClientTokenId","message":"The security token included in the request is invalid."}`), testCreds)
		}, nil, sink.Permanent},
		// The account may change without an edit: a queue created, a
		// policy granted.
		{"no such queue", func(*testing.T) string {
			return cfg(srv.Admin, strings.TrimSuffix(queue, "outcomes")+"missing")
		}, nil, sink.Retryable},
		// (moto answers SQS's JSON protocol with an XML AccessDenied, which
		// the SDK cannot decode: AWS's own answer, faked.)
		{"not allowed", func(t *testing.T) string {
			return fakeCfg(newFake(t, 400, `{"__type":"com.amazon.coral.service#AccessDeniedException","message":"not authorized to perform sqs:sendmessage"}`), testCreds)
		}, nil, sink.Retryable},
		// The message itself cannot go.
		{"body not UTF-8", func(*testing.T) string { return cfg(srv.Admin, queue) },
			&sink.Message{DeliveryID: "d", Body: []byte{'{', 0xff, '}'}}, sink.Permanent},
		{"body with a control character", func(*testing.T) string { return cfg(srv.Admin, queue) },
			&sink.Message{DeliveryID: "d", Body: []byte("a\x01b")}, sink.Permanent},
		{"too many attributes", func(*testing.T) string { return cfg(srv.Admin, queue) },
			&sink.Message{DeliveryID: "d", EventID: "e", Type: "t", Tenant: "x", Body: []byte("{}"), Headers: map[string]string{"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6", "g": "7"}}, sink.Permanent},
		{"header AWS refuses as an attribute", func(*testing.T) string { return cfg(srv.Admin, queue) },
			&sink.Message{DeliveryID: "d", Body: []byte("{}"), Headers: map[string]string{"AWS.x": "1"}}, sink.Permanent},
		// AWS says later.
		{"throttled", func(t *testing.T) string {
			return fakeCfg(newFake(t, 400, `{"__type":"com.amazonaws.sqs#RequestThrottled","message":"slow down"}`), testCreds)
		}, nil, sink.Retryable},
		{"500", func(t *testing.T) string {
			return fakeCfg(newFake(t, 500, `{"__type":"com.amazonaws.sqs#InternalError","message":"oops"}`), testCreds)
		}, nil, sink.Retryable},
		{"503 without a body", func(t *testing.T) string { return fakeCfg(newFake(t, 503, ``), testCreds) }, nil, sink.Retryable},
		{"nothing listening", func(t *testing.T) string {
			f := newFake(t, 200, "")
			f.Close()
			return fakeCfg(f, testCreds)
		}, nil, sink.Retryable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, mototest.Loopback(), tt.cfg(t))
			m := tt.m
			if m == nil {
				m = msg("dlv_x", "")
			}
			err := s.Send(mototest.Ctx(t), m)
			t.Log(err)
			if got := sink.OutcomeOf(err); got != tt.want {
				t.Fatalf("outcome %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

// TestRedact: an error never shows the credentials, even when the server
// quotes them.
func TestRedact(t *testing.T) {
	f := newFake(t, 400, `{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"key AKIATESTTESTTEST secret config-secret-key-0123456789 token config-session-token-0123456789"}`)
	s := open(t, mototest.Loopback(), fakeCfg(f, testCreds+`,"session_token":"config-session-token-0123456789"`))
	err := s.Send(mototest.Ctx(t), msg("d", ""))
	if err == nil {
		t.Fatal("no error")
	}
	for _, secret := range []string{"AKIATESTTESTTEST", "config-secret-key", "config-session-token"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows %s: %v", secret, err)
		}
	}
	if sink.OutcomeOf(err) != sink.Permanent {
		t.Errorf("outcome %v, want permanent", sink.OutcomeOf(err))
	}
}

// TestGuard: the endpoint is dialed through the SSRF guard: the metadata
// service and other internal addresses are refused for good unless
// allowed, and so is moto on loopback when loopback is not allowed.
func TestGuard(t *testing.T) {
	srv := mototest.Need(t)
	queue := createQueue(t, admin(t, srv), "guarded")
	for _, endpoint := range []string{"http://169.254.169.254", "http://10.1.2.3:4566", "http://[fd00:ec2::254]", srv.URL} {
		c, err := Parse(json.RawMessage(fmt.Sprintf(`{"region":"us-east-1","endpoint_url":%q,"queue_url":%q%s}`, endpoint, queue, testCreds)))
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.Open(mototest.Ctx(t), mototest.Strict())
		if err != nil {
			t.Fatal(err)
		}
		err = s.Send(mototest.Ctx(t), msg("d", ""))
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", endpoint, err)
		}
		_ = s.Close()
	}
	// Allowed, the same endpoint takes the message.
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"queue_url":%q}`, srv.Auth(srv.Admin), queue))
	if err := s.Send(mototest.Ctx(t), msg("d", "")); err != nil {
		t.Fatal(err)
	}
}

// TestAmbient: a destination without credentials of its own never signs
// with fanout's, whatever the environment holds; ambient credentials work
// only in a kind the operator built with them, for a config that asks.
func TestAmbient(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAFANOUTOWNIDENTITY")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fanout-own-secret-0123456789")
	t.Setenv("AWS_SESSION_TOKEN", "fanout-own-session-token")
	t.Setenv("AWS_REGION", "eu-west-1")
	elsewhere := newFake(t, 500, "")
	t.Setenv("AWS_ENDPOINT_URL", elsewhere.URL)
	t.Setenv("AWS_ENDPOINT_URL_SQS", elsewhere.URL)

	f := newFake(t, 200, `{"MessageId":"m-1","MD5OfMessageBody":"`+md5hex(`{"type":"order.paid","n":1}`)+`"}`)

	// No credentials in the config: refused, not filled from the
	// environment.
	for _, k := range []*sink.Kind{Kind, NewKind(sink.Ambient{AWS: true})} {
		_, err := k.Parse(json.RawMessage(fakeCfg(f, "")))
		var ce *sink.ConfigError
		if !errorsAs(err, &ce) || ce.Field != "access_key_id" {
			t.Errorf("no credentials: %v, want a config error on access_key_id", err)
		}
	}
	// Asking for ambient credentials where the operator did not allow
	// them: refused, naming the flag.
	_, err := Kind.Parse(json.RawMessage(fakeCfg(f, `,"ambient_credentials":true`)))
	var ce *sink.ConfigError
	if !errorsAs(err, &ce) || ce.Field != "ambient_credentials" || !strings.Contains(err.Error(), sink.FlagAmbientAWS) {
		t.Errorf("ambient not allowed: %v, want a config error naming %s", err, sink.FlagAmbientAWS)
	}

	send := func(k *sink.Kind, cfg string) {
		t.Helper()
		c, err := k.Parse(json.RawMessage(cfg))
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.Open(mototest.Ctx(t), mototest.Loopback())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.Send(mototest.Ctx(t), msg("d", "")); err != nil {
			t.Fatal(err)
		}
	}
	send(Kind, fakeCfg(f, testCreds))
	f.mu.Lock()
	auth, head := f.auths[len(f.auths)-1], f.heads[len(f.heads)-1]
	f.mu.Unlock()
	if !strings.Contains(auth, "Credential=AKIATESTTESTTEST/") || !strings.Contains(auth, "/us-east-1/sqs/") {
		t.Errorf("signed as %q, want the config's key and region", auth)
	}
	if head.Get("X-Amz-Security-Token") != "" {
		t.Errorf("sent the environment's session token %q", head.Get("X-Amz-Security-Token"))
	}
	if c := sink.AmbientFlag(mustParse(t, Kind, fakeCfg(f, testCreds))); c != "" {
		t.Errorf("AmbientFlag = %q for a config with its own credentials", c)
	}

	// Allowed and asked for, the chain's credentials sign.
	amb := NewKind(sink.Ambient{AWS: true})
	cfg := fakeCfg(f, `,"ambient_credentials":true`)
	if c := sink.AmbientFlag(mustParse(t, amb, cfg)); c != sink.FlagAmbientAWS {
		t.Errorf("AmbientFlag = %q, want %s", c, sink.FlagAmbientAWS)
	}
	send(amb, cfg)
	f.mu.Lock()
	auth, head = f.auths[len(f.auths)-1], f.heads[len(f.heads)-1]
	f.mu.Unlock()
	if !strings.Contains(auth, "Credential=AKIAFANOUTOWNIDENTITY/") || head.Get("X-Amz-Security-Token") != "fanout-own-session-token" {
		t.Errorf("ambient: signed as %q, token %q", auth, head.Get("X-Amz-Security-Token"))
	}
	elsewhere.mu.Lock()
	defer elsewhere.mu.Unlock()
	if len(elsewhere.auths) > 0 {
		t.Errorf("%d requests went to AWS_ENDPOINT_URL", len(elsewhere.auths))
	}
}

func TestParse(t *testing.T) {
	const auth = `"region":"eu-west-1","access_key_id":"AKIA1","secret_access_key":"s"`
	tests := []struct {
		cfg   string
		field string // "" valid
	}{
		{`{` + auth + `,"queue_url":"https://sqs.eu-west-1.amazonaws.com/1234/q"}`, ""},
		{`{` + auth + `,"queue_url":"https://sqs.eu-west-1.amazonaws.com/1234/q.fifo","message_group_id":"g"}`, ""},
		{`{` + auth + `,"queue_url":"https://x/1/q","endpoint_url":"http://127.0.0.1:4566"}`, ""},
		{`{` + auth + `}`, "queue_url"},
		{`{` + auth + `,"queue_url":"ftp://x/1/q"}`, "queue_url"},
		{`{` + auth + `,"queue_url":"https://x/q"}`, "queue_url"},
		{`{` + auth + `,"queue_url":"https://u:p@x/1/q"}`, "queue_url"},
		{`{` + auth + `,"queue_url":"https://x/1/q","message_group_id":"g"}`, "message_group_id"},
		{`{` + auth + `,"queue_url":"https://x/1/q.fifo","message_group_id":"a b"}`, "message_group_id"},
		{`{"access_key_id":"A","secret_access_key":"s","queue_url":"https://x/1/q"}`, "region"},
		{`{"region":"Europe","access_key_id":"A","secret_access_key":"s","queue_url":"https://x/1/q"}`, "region"},
		{`{"region":"eu-west-1","queue_url":"https://x/1/q"}`, "access_key_id"},
		{`{"region":"eu-west-1","access_key_id":"A","queue_url":"https://x/1/q"}`, "secret_access_key"},
		{`{` + auth + `,"queue_url":"https://x/1/q","ambient_credentials":true}`, "ambient_credentials"},
		{`{` + auth + `,"queue_url":"https://x/1/q","endpoint_url":"ftp://h"}`, "endpoint_url"},
		{`{` + auth + `,"queue_url":"https://x/1/q","endpoint_url":"https://u:p@h"}`, "endpoint_url"},
		{`{` + auth + `,"queue_url":"https://x/1/q","extra":1}`, "extra"},
		{`{` + auth + `,"queue_url":5}`, "queue_url"},
	}
	for _, tt := range tests {
		_, err := Parse(json.RawMessage(tt.cfg))
		if tt.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.cfg, err)
			}
			continue
		}
		var ce *sink.ConfigError
		if !errorsAs(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: %v, want a config error on %s", tt.cfg, err, tt.field)
		}
	}
}

// TestMask: the credentials are write-only, and a change of endpoint or
// queue does not keep them.
func TestMask(t *testing.T) {
	stored := json.RawMessage(`{"region":"eu-west-1","queue_url":"https://sqs.eu-west-1.amazonaws.com/1/q","access_key_id":"AKIAABCDEFGHIJKLMNOP","secret_access_key":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","session_token":"FwoGZXIvYXdzEBYaDFAKETOKEN"}`)
	masked, err := Kind.Mask(stored)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"AKIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMI", "FwoGZXIvYXdzEBYaDFAKETOKEN"} {
		if strings.Contains(string(masked), s) {
			t.Errorf("masked config shows %s: %s", s, masked)
		}
	}
	back, err := Kind.Unmask(masked, stored)
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	_ = json.Unmarshal(back, &a)
	_ = json.Unmarshal(stored, &b)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("unmasked %s, want %s", back, stored)
	}
	for _, moved := range []string{
		strings.Replace(string(masked), `"region":"eu-west-1"`, `"region":"eu-west-1","endpoint_url":"https://attacker.example"`, 1),
		strings.Replace(string(masked), `/1/q`, `/2/q`, 1),
	} {
		if _, err := Kind.Unmask(json.RawMessage(moved), stored); err == nil {
			t.Errorf("kept the stored credentials for %s", moved)
		}
	}
}
