package app

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"fanout/destination"
	"fanout/internal/service"
	"fanout/sink"
)

// Broker destinations end to end: events go in through run()'s API and come
// out of the broker with the delivery's id, fanout's headers and the
// event's bytes; a broker that is down is retried and opens the breaker as
// an HTTP destination does; credentials appear nowhere but where they are
// set and in the secret route.

// natsPassword is the password of the test's NATS user: no answer, error or
// log line may hold it.
const natsPassword = "nats-pw-0123456789abcdef"

// startNATS starts an embedded NATS server with JetStream (file storage)
// and a user with natsPassword, and a stream EVENTS on "events.>".
func startNATS(t *testing.T) (addr string, js jetstream.JetStream) {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, DisableJetStreamBanner: true, Username: "fan", Password: natsPassword}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	addr = s.Addr().String()
	nc, err := nats.Connect("nats://"+addr, nats.UserInfo("fan", natsPassword))
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
