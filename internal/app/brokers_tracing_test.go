package app

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"fanout/internal/otlptest"
)

// TestTracing_BrokerPublish: a send to a broker destination is a PRODUCER
// span of its own, "publish <kind>", under the delivery attempt, with the
// messaging conventions' attributes (the kind, the target, the delivery
// id) and no credential in any attribute, name or status; the message
// carries its traceparent. A send that fails is an error span whose
// message holds no password either.
func TestTracing_BrokerPublish(t *testing.T) {
	t.Parallel()
	collector := otlptest.Start(t)
	addr, js := startNATS(t)
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL, "OTEL_BSP_SCHEDULE_DELAY": "20"}
	base, stop := startRun(t, []string{"--data", t.TempDir()}, env)
	const wrong = "wrong-password-0123456789"
	ok := createBroker(t, base, map[string]any{"type": "nats", "filter": []string{"order.paid"},
		"config": map[string]any{"url": fmt.Sprintf("nats://fan:%s@%s", natsPassword, addr), "subject": "events.orders", "stream": "EVENTS"}})
	bad := createBroker(t, base, map[string]any{"type": "nats", "filter": []string{"order.lost"},
		"config": map[string]any{"url": fmt.Sprintf("nats://fan:%s@%s", wrong, addr), "subject": "events.orders"}})

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	var res struct{ ID string }
	if st := call(t, "POST", base+"/v1/event", `{"type":"order.paid"}`, &res, "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01"); st != 202 {
		t.Fatalf("POST /v1/event: %d", st)
	}
	d := deliveryOf(t, base, res.ID, "delivered")
	lost := deliveryOf(t, base, postEvent(t, base, `{"type":"order.lost"}`), "failed")

	publishes := func(dest string) []otlptest.Span {
		var out []otlptest.Span
		for _, s := range collector.Spans() {
			if s.Attributes["fanout.destination.id"] == dest && s.Kind == tracepb.Span_SPAN_KIND_PRODUCER {
				out = append(out, s)
			}
		}
		return out
	}
	eventually(t, "both publish spans exported", 10*time.Second, func() bool {
		return len(publishes(ok.ID)) == 1 && len(publishes(bad.ID)) == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, s := range collector.Spans() {
		if strings.Contains(s.Name+s.StatusMessage, natsPassword) || strings.Contains(s.Name+s.StatusMessage, wrong) {
			t.Errorf("span %q (status %q) holds a password", s.Name, s.StatusMessage)
		}
		for k, v := range s.Attributes {
			if strings.Contains(v, natsPassword) || strings.Contains(v, wrong) {
				t.Errorf("span %q: attribute %s = %q holds a password", s.Name, k, v)
			}
		}
		if s.Kind == tracepb.Span_SPAN_KIND_CLIENT && s.Name == "POST" {
			t.Errorf("a webhook request span for a broker send: %v", s.Attributes)
		}
	}

	p := publishes(ok.ID)[0]
	want := map[string]string{"messaging.system": "nats", "messaging.operation.type": "send", "messaging.operation.name": "publish",
		"messaging.destination.name": ok.Target, "messaging.message.id": d.ID, "fanout.destination.type": "nats"}
	for k, v := range want {
		if p.Attributes[k] != v {
			t.Errorf("publish span: %s = %q, want %q", k, p.Attributes[k], v)
		}
	}
	if p.Name != "publish nats" || p.TraceID != traceID || p.StatusCode == tracepb.Status_STATUS_CODE_ERROR ||
		!strings.Contains(p.Attributes["messaging.destination.name"], addr) || !strings.Contains(p.Attributes["messaging.destination.name"], "events.orders") {
		t.Errorf("publish span %q in trace %s, status %v, attributes %v", p.Name, p.TraceID, p.StatusCode, p.Attributes)
	}
	var parent otlptest.Span
	for _, s := range collector.Trace(traceID) {
		if s.SpanID == p.ParentSpanID {
			parent = s
		}
	}
	if parent.Kind != tracepb.Span_SPAN_KIND_CONSUMER || parent.Attributes["fanout.delivery.id"] != d.ID {
		t.Errorf("publish span under %q (%v), want the delivery attempt", parent.Name, parent.Kind)
	}
	// The message carries the publish span's context.
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
	if tp := msg.Header.Get("Traceparent"); tp != "00-"+traceID+"-"+p.SpanID+"-01" {
		t.Errorf("the message's traceparent %q, want the publish span's %s", tp, p.SpanID)
	}

	f := publishes(bad.ID)[0]
	if f.Name != "publish nats" || f.StatusCode != tracepb.Status_STATUS_CODE_ERROR || f.Attributes["error.type"] == "" || f.StatusMessage == "" ||
		f.Attributes["messaging.message.id"] != lost.ID {
		t.Errorf("failed publish span %q status %v %q attributes %v", f.Name, f.StatusCode, f.StatusMessage, f.Attributes)
	}
}
