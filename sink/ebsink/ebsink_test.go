package ebsink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"fanout/internal/mototest"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

func TestMain(m *testing.M) { mototest.Main(m) }

func msg(id string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: "cust-9"}
}

type clients struct {
	eb  *eventbridge.Client
	sqs *sqs.Client
}

func admin(t *testing.T, srv *mototest.Server) clients {
	t.Helper()
	a := awsbase.Auth{Region: mototest.Region, EndpointURL: srv.URL, AccessKeyID: srv.Admin.AccessKeyID, SecretAccessKey: srv.Admin.SecretAccessKey}
	cfg, _, err := a.Load(mototest.Ctx(t), mototest.Loopback())
	if err != nil {
		t.Fatal(err)
	}
	return clients{eventbridge.NewFromConfig(cfg), sqs.NewFromConfig(cfg)}
}

// busToQueue makes a bus and a rule that sends every event of source to a
// queue, and returns the queue's URL.
func busToQueue(t *testing.T, c clients, bus, source string) string {
	t.Helper()
	ctx := mototest.Ctx(t)
	if _, err := c.eb.CreateEventBus(ctx, &eventbridge.CreateEventBusInput{Name: aws.String(bus)}); err != nil {
		t.Fatal(err)
	}
	q, err := c.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(bus + "-q")})
	if err != nil {
		t.Fatal(err)
	}
	qa, err := c.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String("all"), EventBusName: aws.String(bus),
		EventPattern: aws.String(`{"source":["` + source + `"]}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.eb.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String("all"), EventBusName: aws.String(bus),
		Targets: []types.Target{{Id: aws.String("q"), Arn: aws.String(qa.Attributes["QueueArn"])}}}); err != nil {
		t.Fatal(err)
	}
	return *q.QueueUrl
}

// received are the events the queue got, decoded.
func received(t *testing.T, c clients, queue string) []map[string]json.RawMessage {
	t.Helper()
	out, err := c.sqs.ReceiveMessage(mototest.Ctx(t), &sqs.ReceiveMessageInput{QueueUrl: aws.String(queue), MaxNumberOfMessages: 10})
	if err != nil {
		t.Fatal(err)
	}
	var evs []map[string]json.RawMessage
	for _, m := range out.Messages {
		var ev map[string]json.RawMessage
		if err := json.Unmarshal([]byte(*m.Body), &ev); err != nil {
			t.Fatalf("%s: %v", *m.Body, err)
		}
		evs = append(evs, ev)
	}
	return evs
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

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

func str(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

func TestSend(t *testing.T) {
	srv := mototest.Need(t)
	c := admin(t, srv)
	queue := busToQueue(t, c, "orders", "shop.orders")
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"event_bus":"orders","source":"shop.orders"}`, srv.Auth(srv.Admin)))
	if err := s.Send(mototest.Ctx(t), msg("dlv_1")); err != nil {
		t.Fatal(err)
	}
	env := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"event_bus":"orders","source":"shop.orders","detail_type":"Order","envelope":true}`, srv.Auth(srv.Admin)))
	if err := env.Send(mototest.Ctx(t), msg("dlv_2")); err != nil {
		t.Fatal(err)
	}
	evs := received(t, c, queue)
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2", len(evs))
	}
	byType := map[string]map[string]json.RawMessage{}
	for _, ev := range evs {
		if str(ev["source"]) != "shop.orders" {
			t.Errorf("source %s", ev["source"])
		}
		byType[str(ev["detail-type"])] = ev
	}
	// (moto writes the detail again, with spaces: compare it compacted.)
	if d := compact(byType["order.paid"]["detail"]); d != `{"type":"order.paid","n":1}` {
		t.Errorf("detail = %s, want the body", d)
	}
	var wrapped struct {
		Fanout map[string]string `json:"fanout"`
		Data   json.RawMessage   `json:"data"`
	}
	if err := json.Unmarshal(byType["Order"]["detail"], &wrapped); err != nil {
		t.Fatalf("envelope detail %s: %v", byType["Order"]["detail"], err)
	}
	want := map[string]string{"delivery_id": "dlv_2", "event_id": "evt_dlv_2", "type": "order.paid", "tenant": "acme", "key": "cust-9"}
	if fmt.Sprint(wrapped.Fanout) != fmt.Sprint(want) || compact(wrapped.Data) != `{"type":"order.paid","n":1}` {
		t.Errorf("envelope = %s", byType["Order"]["detail"])
	}
}

func fake(t *testing.T, status int, body string) string {
	f := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f.URL
}

const testCreds = `"access_key_id":"AKIATESTTESTTEST","secret_access_key":"config-secret-key-0123456789","session_token":"config-session-token-0123456789"`

func fakeCfg(url string) string {
	return `{"region":"us-east-1","endpoint_url":"` + url + `",` + testCreds + `}`
}

func failedEntry(code string) string {
	return `{"FailedEntryCount":1,"Entries":[{"ErrorCode":"` + code + `","ErrorMessage":"entry refused"}]}`
}

func TestSend_Outcomes(t *testing.T) {
	srv := mototest.Need(t)
	busToQueue(t, admin(t, srv), "outcomes", "fanout")
	cfg := func(c mototest.Creds, bus string) string {
		return fmt.Sprintf(`{%s,"event_bus":%q}`, srv.Auth(c), bus)
	}
	tests := []struct {
		name string
		cfg  func(t *testing.T) string
		body string
		want sink.Outcome
	}{
		{"unknown access key", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: "AKIANOSUCHKEY0000000", SecretAccessKey: "x"}, "outcomes")
		}, "", sink.Permanent},
		{"no such bus", func(*testing.T) string { return cfg(srv.Admin, "missing") }, "", sink.Retryable},
		{"body not JSON", func(*testing.T) string { return cfg(srv.Admin, "outcomes") }, "a,b,c", sink.Permanent},
		{"body a JSON array", func(*testing.T) string { return cfg(srv.Admin, "outcomes") }, "[1]", sink.Permanent},
		{"entry throttled", func(t *testing.T) string { return fakeCfg(fake(t, 200, failedEntry("ThrottlingException"))) }, "", sink.Retryable},
		{"entry failed inside", func(t *testing.T) string { return fakeCfg(fake(t, 200, failedEntry("InternalFailure"))) }, "", sink.Retryable},
		{"entry malformed", func(t *testing.T) string { return fakeCfg(fake(t, 200, failedEntry("MalformedDetail"))) }, "", sink.Permanent},
		{"entry of a source not allowed", func(t *testing.T) string {
			return fakeCfg(fake(t, 200, failedEntry("NotAuthorizedForSourceException")))
		}, "", sink.Permanent},
		{"throttled request", func(t *testing.T) string {
			return fakeCfg(fake(t, 400, `{"__type":"ThrottlingException","message":"Rate exceeded"}`))
		}, "", sink.Retryable},
		{"500", func(t *testing.T) string { return fakeCfg(fake(t, 500, `{"__type":"InternalException"}`)) }, "", sink.Retryable},
		{"no entry id", func(t *testing.T) string { return fakeCfg(fake(t, 200, `{"FailedEntryCount":0,"Entries":[{}]}`)) }, "", sink.Retryable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, mototest.Loopback(), tt.cfg(t))
			m := msg("dlv_x")
			if tt.body != "" {
				m.Body, m.ContentType = []byte(tt.body), "text/csv"
			}
			err := s.Send(mototest.Ctx(t), m)
			t.Log(err)
			if got := sink.OutcomeOf(err); got != tt.want {
				t.Fatalf("outcome %v (%v), want %v", got, err, tt.want)
			}
			if tt.body == "a,b,c" && !strings.Contains(err.Error(), "not JSON, text/csv") {
				t.Errorf("the error does not say why: %v", err)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	url := fake(t, 200, `{"FailedEntryCount":1,"Entries":[{"ErrorCode":"AccessDeniedException","ErrorMessage":"AKIATESTTESTTEST with token config-session-token-0123456789 / config-secret-key-0123456789"}]}`)
	s := open(t, mototest.Loopback(), fakeCfg(url))
	err := s.Send(mototest.Ctx(t), msg("d"))
	if err == nil {
		t.Fatal("no error")
	}
	for _, secret := range []string{"AKIATESTTESTTEST", "config-secret-key", "config-session-token"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows %s: %v", secret, err)
		}
	}
}

func TestGuard(t *testing.T) {
	for _, endpoint := range []string{"http://169.254.169.254", "http://[::1]:4566", "http://100.64.0.1"} {
		s := open(t, mototest.Strict(), `{"region":"us-east-1","endpoint_url":"`+endpoint+`",`+testCreds+`}`)
		err := s.Send(mototest.Ctx(t), msg("d"))
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", endpoint, err)
		}
	}
}

func TestParse(t *testing.T) {
	const auth = `"region":"eu-west-1","access_key_id":"AKIA1","secret_access_key":"s"`
	tests := []struct {
		cfg   string
		field string
	}{
		{`{` + auth + `}`, ""},
		{`{` + auth + `,"event_bus":"arn:aws:events:eu-west-1:1234:event-bus/orders","source":"shop","detail_type":"Order"}`, ""},
		{`{` + auth + `,"event_bus":"a bus"}`, "event_bus"},
		{`{` + auth + `,"event_bus":"arn:aws:sns:eu-west-1:1234:x"}`, "event_bus"},
		{`{` + auth + `,"source":"aws.s3"}`, "source"},
		{`{` + auth + `,"detail_type":"a\nb"}`, "detail_type"},
		{`{"region":"eu-west-1"}`, "access_key_id"},
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
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: %v, want a config error on %s", tt.cfg, err, tt.field)
		}
	}
}
