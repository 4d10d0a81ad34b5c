package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"fanout/destination"
	"fanout/internal/natstest"
	"fanout/internal/service"
	"fanout/sink"
	"fanout/sink/kinds"
)

// Broker destinations end to end: events go in through run()'s API and come
// out of the broker with the delivery's id, fanout's headers and the
// event's bytes; a broker that is down is retried and opens the breaker as
// an HTTP destination does; credentials appear nowhere but where they are
// set and in the secret route.

// natsPassword is the password of the test's NATS user: no answer, error or
// log line may hold it.
const natsPassword = "nats-pw-0123456789abcdef"

// startNATS starts Debian's nats-server with JetStream (file storage)
// and a user with natsPassword, and a stream EVENTS on "events.>".
func startNATS(t *testing.T) (addr string, js jetstream.JetStream) {
	t.Helper()
	s := natstest.Start(t, natstest.Options{User: "fan", Password: natsPassword})
	addr = s.Addr
	nc, err := nats.Connect(s.URL, nats.UserInfo("fan", natsPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}}); err != nil {
		t.Fatal(err)
	}
	return addr, js
}

// brokerDest is a destination as the API answers it.
type brokerDest struct {
	destination.Destination
	Config json.RawMessage `json:"config"`
}

// postEvent sends one event and returns its id.
func postEvent(t *testing.T, base, body string) string {
	t.Helper()
	var r struct{ ID string }
	if st := call(t, "POST", base+"/v1/event", body, &r); st != 202 {
		t.Fatalf("POST /v1/event: %d", st)
	}
	return r.ID
}

// delivered waits for the one delivery of event id to end, and returns it.
func deliveryOf(t *testing.T, base, id, state string) service.DeliveryView {
	t.Helper()
	var ev service.EventView
	eventually(t, "delivery "+state, 15*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+id, nil, &ev)
		return len(ev.Deliveries) == 1 && ev.Deliveries[0].State == state
	})
	return ev.Deliveries[0]
}

// checkHeaders checks fanout's attributes of a message, however the kind
// names its headers (get reads one).
func checkHeaders(t *testing.T, get func(string) string, d service.DeliveryView, eventType string) {
	t.Helper()
	for k, want := range map[string]string{sink.HeaderDeliveryID: d.ID, sink.HeaderEventID: d.EventID, sink.HeaderEventType: eventType} {
		if got := get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
}

func TestRun_BrokerNATS(t *testing.T) {
	t.Parallel()
	addr, js := startNATS(t)
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	url := fmt.Sprintf("nats://fan:%s@%s", natsPassword, addr)

	var created brokerDest
	st := call(t, "POST", base+"/v1/destinations", map[string]any{"type": "nats",
		"config": map[string]any{"url": url, "subject": "events.orders", "stream": "EVENTS"}, "headers": map[string]string{"X-Team": "billing"}}, &created)
	if st != 201 {
		t.Fatalf("create: %d %+v", st, created)
	}
	if !strings.Contains(string(created.Config), natsPassword) || created.Type != "nats" || created.URL != "" {
		t.Fatalf("the answer of the create shows the config in full: %+v %s", created.Destination, created.Config)
	}
	if !strings.Contains(created.Target, addr) || strings.Contains(created.Target, natsPassword) || !strings.Contains(created.Delivered, "JetStream") {
		t.Fatalf("target %q, delivered %q", created.Target, created.Delivered)
	}
	var got brokerDest
	call(t, "GET", base+"/v1/destinations/"+created.ID, nil, &got)
	if strings.Contains(string(got.Config), natsPassword) || !strings.Contains(string(got.Config), sink.Ellipsis) || got.Target != created.Target {
		t.Fatalf("a read shows the config masked: %s (target %q)", got.Config, got.Target)
	}
	var secrets destination.Secrets
	call(t, "GET", base+"/v1/destinations/"+created.ID+"/secret", nil, &secrets)
	if !strings.Contains(string(secrets.Config), natsPassword) {
		t.Fatalf("the secret route shows the config in full: %s", secrets.Config)
	}

	// Events in, messages out: the delivery's id as Nats-Msg-Id, the
	// event's bytes, fanout's headers and the destination's own.
	body := `{"type":"order.paid","id":"e-1","amount": 12}`
	id := postEvent(t, base, body)
	d := deliveryOf(t, base, id, "delivered")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, "EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != body || msg.Subject != "events.orders" {
		t.Fatalf("message %s on %s, want %s", msg.Data, msg.Subject, body)
	}
	checkHeaders(t, msg.Header.Get, d, "order.paid")
	if msg.Header.Get("Nats-Msg-Id") != d.ID || msg.Header.Get("X-Team") != "billing" || msg.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v, delivery %s", msg.Header, d.ID)
	}

	// A raw event: its bytes and its content type.
	var raw struct{ ID string }
	if st, b, _ := rawCall(t, "POST", base+"/v1/event?raw=true", "a,b,c\n", "Content-Type", "text/csv"); st != 202 {
		t.Fatalf("raw event: %d %s", st, b)
	} else {
		_ = json.Unmarshal(b, &raw)
	}
	deliveryOf(t, base, raw.ID, "delivered")
	msg, err = stream.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != "a,b,c\n" || !strings.HasPrefix(msg.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("raw message %q, content type %q", msg.Data, msg.Header.Get("Content-Type"))
	}

	// The masked config posted back keeps the password; the same masked
	// password to another address is refused.
	var patched brokerDest
	if st := call(t, "PATCH", base+"/v1/destinations/"+created.ID, map[string]any{"config": got.Config, "description": "orders"}, &patched); st != 200 {
		t.Fatalf("PATCH with the masked config: %d", st)
	}
	call(t, "GET", base+"/v1/destinations/"+created.ID+"/secret", nil, &secrets)
	if !strings.Contains(string(secrets.Config), natsPassword) {
		t.Fatalf("the masked config posted back lost the password: %s", secrets.Config)
	}
	moved := strings.Replace(string(got.Config), "127.0.0.1", "127.0.0.2", 1)
	st, b, _ := rawCall(t, "PATCH", base+"/v1/destinations/"+created.ID, `{"config":`+moved+`}`)
	if st != 400 || !strings.Contains(string(b), "config.url") {
		t.Fatalf("a masked password to a new address: %d %s", st, b)
	}
	// A webhook's fields and a transformation do not belong on a broker.
	for _, body := range []string{`{"url":"http://127.0.0.1:1/x"}`, `{"transform":"function handler(w){return w}"}`, `{"type":"webhook"}`} {
		if st, b, _ := rawCall(t, "PATCH", base+"/v1/destinations/"+created.ID, body); st != 400 {
			t.Errorf("PATCH %s: %d %s, want 400", body, st, b)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRun_BrokerKindRights: a broker destination is an operator's unless
// the operator grants its kind to a token; fanout's own cloud credentials
// serve an operator's token only, and only with the flag.
func TestRun_BrokerKindRights(t *testing.T) {
	t.Parallel()
	addr, _ := startNATS(t)
	f := newTenantFixture(t, "--allow-ambient-aws")
	natsDest := map[string]any{"type": "nats", "config": map[string]any{"url": "nats://" + addr, "subject": "events.acme"}}
	ambient := map[string]any{"type": "sqs", "config": map[string]any{"queue_url": "http://127.0.0.1:1/123456789012/q",
		"region": "us-east-1", "ambient_credentials": true}}
	own := map[string]any{"type": "sqs", "config": map[string]any{"queue_url": "http://127.0.0.1:1/123456789012/q",
		"region": "us-east-1", "access_key_id": "AKIAEXAMPLE", "secret_access_key": "secret-access-key-0123456789"}}

	// acmeAll has manage but no kind: 403 naming the kind.
	st, b := f.as(t, f.tokens["acmeAll"], "POST", "/v1/destinations", natsDest)
	if st != 403 || !strings.Contains(b, `\"kinds\": [\"nats\"]`) {
		t.Fatalf("a token without the kind: %d %s", st, b)
	}
	// Kinds are granted with manage only, and must exist.
	for _, in := range []map[string]any{
		{"name": "k", "rights": []string{"read"}, "tenant": "acme", "kinds": []string{"nats"}},
		{"name": "k", "rights": []string{"manage"}, "tenant": "acme", "kinds": []string{"mqtt"}},
	} {
		if st, b := f.as(t, f.operator, "POST", "/v1/tokens", in); st != 400 {
			t.Errorf("mint %v: %d %s, want 400", in, st, b)
		}
	}
	var tok struct {
		Token string
		Kinds []string
	}
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "acme nats", "rights": []string{"read", "manage"},
		"tenant": "acme", "kinds": []string{"nats", "sqs"}, "expires_in": "1h"}, &tok)
	if !slices.Equal(tok.Kinds, []string{"nats", "sqs"}) {
		t.Fatalf("minted kinds %v", tok.Kinds)
	}
	var d brokerDest
	f.must(t, 201, tok.Token, "POST", "/v1/destinations", natsDest, &d)
	if d.Tenant != "acme" {
		t.Fatalf("the token's broker destination is of tenant %q", d.Tenant)
	}
	// The kind's token may create its own-credential SQS destination, not
	// one with fanout's own credentials.
	f.must(t, 201, tok.Token, "POST", "/v1/destinations", own, nil)
	st, b = f.as(t, tok.Token, "POST", "/v1/destinations", ambient)
	if st != 403 || !strings.Contains(b, "--allow-ambient-aws") {
		t.Fatalf("a tenant's token asking for fanout's AWS credentials: %d %s", st, b)
	}
	// The operator may, for a tenant's destination too.
	var amb brokerDest
	f.must(t, 201, f.operator, "POST", "/v1/tenants/acme/destinations", ambient, &amb)
	// acmeAll (no kind) may pause the broker destination, not change its
	// config nor the ambient one's.
	f.must(t, 200, f.tokens["acmeAll"], "PATCH", "/v1/destinations/"+d.ID, map[string]any{"paused": true}, nil)
	st, b = f.as(t, f.tokens["acmeAll"], "PATCH", "/v1/destinations/"+d.ID,
		map[string]any{"config": map[string]any{"url": "nats://" + addr, "subject": "events.other"}})
	if st != 403 || !strings.Contains(b, "nats") {
		t.Fatalf("a config change without the kind: %d %s", st, b)
	}
	st, b = f.as(t, tok.Token, "PATCH", "/v1/destinations/"+amb.ID, map[string]any{"config": map[string]any{
		"queue_url": "http://127.0.0.1:2/123456789012/mine", "region": "us-east-1", "ambient_credentials": true}})
	if st != 403 {
		t.Fatalf("a tenant's token moving an ambient destination: %d %s", st, b)
	}
	// Another tenant's token, kind or not, finds none of acme's.
	f.must(t, 404, f.tokens["globexAll"], "PATCH", "/v1/destinations/"+d.ID, map[string]any{"paused": false}, nil)
	// A portal link grants kinds too.
	var link struct{ URL string }
	f.must(t, 201, f.operator, "POST", "/v1/tenants/acme/portal", map[string]any{"kinds": []string{"redis"}}, &link)
	st, b = f.as(t, f.operator, "POST", "/v1/tenants/acme/portal", map[string]any{"access": "read", "kinds": []string{"redis"}})
	if st != 400 {
		t.Fatalf("a read portal with kinds: %d %s", st, b)
	}
}

// TestRun_BrokerAmbientNeedsFlag: without --allow-ambient-aws, even the
// operator cannot have fanout's own credentials used.
func TestRun_BrokerAmbientNeedsFlag(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	st, b, _ := rawCall(t, "POST", base+"/v1/destinations", map[string]any{"type": "sqs", "config": map[string]any{
		"queue_url": "http://127.0.0.1:1/123456789012/q", "region": "us-east-1", "ambient_credentials": true}})
	if st != 400 || !strings.Contains(string(b), "--allow-ambient-aws") {
		t.Fatalf("ambient credentials without the flag: %d %s", st, b)
	}
	for _, c := range []struct{ body, want string }{
		{`{"type":"nats","config":{"url":"nats://127.0.0.1:1","subject":"a","bogus":1}}`, "config.bogus"},
		{`{"type":"nats","config":{"url":"nats://127.0.0.1:1"}}`, "config.subject"},
		{`{"type":"nats","url":"http://127.0.0.1:1/","config":{"url":"nats://127.0.0.1:1","subject":"a"}}`, "url is for webhooks"},
		{`{"type":"nats"}`, "config is required"},
		{`{"type":"mqtt","config":{}}`, "unknown destination type"},
		{`{"url":"http://127.0.0.1:1/","config":{"subject":"a"}}`, "config is for broker"},
		{`{"type":"webhook"}`, "url is required"},
		{`{"type":"redis","config":{"url":"redis://127.0.0.1:1","stream":"s"},"transform":"function handler(w){return w}"}`, "transform applies to webhooks only"},
	} {
		st, b, _ := rawCall(t, "POST", base+"/v1/destinations", c.body)
		if st != 400 || !strings.Contains(string(b), c.want) {
			t.Errorf("%s: %d %s, want 400 with %q", c.body, st, b, c.want)
		}
	}
}

// TestRun_BrokerDownAndSecrets: a broker that refuses the password fails
// the delivery for good, and neither the delivery's error nor the logs
// hold the password; a broker that is down is retried and opens the
// breaker as an HTTP destination does.
func TestRun_BrokerDownAndSecrets(t *testing.T) {
	t.Parallel()
	addr, _ := startNATS(t)
	base, stop, logs := startRunLogs(t, []string{"--addr", "127.0.0.1:0", "--allow-network", "127.0.0.0/8", "--data", t.TempDir(),
		"--breaker-failures", "3", "--breaker-window", "0s", "--breaker-cooldown", "1h", "--retry-initial", "10ms", "--retry-max", "20ms"}, nil)
	const wrong = "wrong-password-0123456789"
	var bad brokerDest
	call(t, "POST", base+"/v1/destinations", map[string]any{"type": "nats", "filter": []string{"bad"},
		"config": map[string]any{"url": fmt.Sprintf("nats://fan:%s@%s", wrong, addr), "subject": "events.x"}}, &bad)
	id := postEvent(t, base, `{"type":"bad"}`)
	d := deliveryOf(t, base, id, "failed")
	if d.LastError == "" || strings.Contains(d.LastError, wrong) {
		t.Fatalf("last_error %q: empty or with the password", d.LastError)
	}
	_, b, _ := rawCall(t, "GET", base+"/v1/deliveries/"+d.ID, nil)
	if strings.Contains(string(b), wrong) {
		t.Fatalf("the delivery shows the password: %s", b)
	}

	// A broker that is not there: retried, then the breaker pauses it.
	var down brokerDest
	call(t, "POST", base+"/v1/destinations", map[string]any{"type": "nats", "filter": []string{"down"},
		"config": map[string]any{"url": "nats://fan:" + wrong + "@127.0.0.1:1", "subject": "events.x"}}, &down)
	id = postEvent(t, base, `{"type":"down"}`)
	eventually(t, "the breaker pauses the broker destination", 15*time.Second, func() bool {
		call(t, "GET", base+"/v1/destinations/"+down.ID, nil, &down)
		return down.CircuitOpenUntil != nil && strings.Contains(down.Reason, "circuit breaker")
	})
	var ev service.EventView
	call(t, "GET", base+"/v1/events/"+id, nil, &ev)
	if len(ev.Deliveries) != 1 || ev.Deliveries[0].State == "failed" || ev.Deliveries[0].Attempts < 3 {
		t.Fatalf("delivery %+v: want it retried and kept while the breaker is open", ev.Deliveries)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs(), wrong) || strings.Contains(down.Reason, wrong) || strings.Contains(ev.Deliveries[0].LastError, wrong) {
		t.Fatalf("the password is in the logs, the reason or the error")
	}
}

// TestREADME_BrokerExamples: every broker example of the README is a
// config its kind accepts, and there is one per kind.
func TestREADME_BrokerExamples(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	reg := kinds.Registry(sink.Ambient{})
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`/v1/destinations -d '(\{"type":[^']+)'`).FindAllStringSubmatch(string(b), -1) {
		var in struct {
			Type   string
			Config json.RawMessage
		}
		if err := json.Unmarshal([]byte(m[1]), &in); err != nil {
			t.Fatalf("%s: %v", m[1], err)
		}
		if _, err := reg.Parse(in.Type, in.Config); err != nil {
			t.Errorf("README example %s: %v", m[1], err)
		}
		seen[in.Type] = true
	}
	for _, n := range reg.Names() {
		if !seen[n] {
			t.Errorf("the README has no example of a %s destination", n)
		}
	}
}

// TestRun_BrokerKafka: events in, records out of a kfake cluster, with the
// partition key from the event and fanout's headers.
func TestRun_BrokerKafka(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	addrs, _ := json.Marshal(c.ListenAddrs())
	if st := call(t, "POST", base+"/v1/destinations", `{"type":"kafka","config":{"brokers":`+string(addrs)+`,"topic":"events","partition_key":"customer"}}`, nil); st != 201 {
		t.Fatalf("create: %d", st)
	}
	body := `{"type":"order.paid","customer":"c-7"}`
	d := deliveryOf(t, base, postEvent(t, base, body), "delivered")
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("events"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) == 0 && ctx.Err() == nil {
		recs = append(recs, cl.PollFetches(ctx).Records()...)
	}
	if len(recs) != 1 || string(recs[0].Value) != body || string(recs[0].Key) != "c-7" {
		t.Fatalf("records %v", recs)
	}
	headers := map[string]string{}
	for _, h := range recs[0].Headers {
		headers[h.Key] = string(h.Value)
	}
	checkHeaders(t, func(k string) string { return headers[k] }, d, "order.paid")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
