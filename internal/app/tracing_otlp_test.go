package app

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"fanout/internal/otlptest"
)

// TestTracing_OTLPAcrossRestart exports to a real OTLP/HTTP endpoint (a
// receiver in the test that decodes the protobuf) and follows events
// across a restart of fanout: their first attempts fail before the
// restart, the ones that deliver them run after, in a new process, and all
// are children of their event's creation context: the ingest span of a
// single event, the create span of an event of a batch (under the batch's
// ingest span), both under the client's span.
func TestTracing_OTLPAcrossRestart(t *testing.T) {
	t.Parallel()
	collector := otlptest.Start(t)
	dest := newTraceReceiver(t, 1<<30) // refuses until told otherwise
	data := t.TempDir()
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL, "OTEL_BSP_SCHEDULE_DELAY": "20",
		"OTEL_SERVICE_NAME": "fanout-test", "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cr%C3%A9t",
		"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
	args := []string{"--data", data, "--destination", dest.URL, "--retry-initial", "100ms", "--retry-max", "200ms"}

	const clientTrace, clientSpan = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"
	base, stop := startRun(t, args, env)
	var res struct{ ID string }
	if code := call(t, "POST", base+"/v1/event", `{"type":"user.created"}`, &res, "traceparent",
		"00-"+clientTrace+"-"+clientSpan+"-01"); code != http.StatusAccepted {
		t.Fatalf("POST /v1/event: %d", code)
	}
	const batchTrace, batchSpan = "8bf92f3577b34da6a3ce929d0e0e4736", "40f067aa0ba902b7"
	var batch struct{ IDs []string }
	if code := call(t, "POST", base+"/v1/batch", `[{"n":1},{"n":2}]`, &batch, "traceparent",
		"00-"+batchTrace+"-"+batchSpan+"-01"); code != http.StatusAccepted {
		t.Fatalf("POST /v1/batch: %d", code)
	}
	attempts := func(outcome string) []otlptest.Span {
		var out []otlptest.Span
		for _, s := range collector.Trace(clientTrace) {
			if s.Kind == tracepb.Span_SPAN_KIND_CONSUMER && (outcome == "" || s.Attributes["fanout.delivery.outcome"] == outcome) {
				out = append(out, s)
			}
		}
		return out
	}
	eventually(t, "a failed attempt exported", 10*time.Second, func() bool { return len(attempts("retried")) > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	before := len(attempts(""))

	dest.mu.Lock()
	dest.failLeft = 0
	dest.mu.Unlock()
	base2, _ := startRun(t, args, env)
	eventually(t, "the delivery exported after the restart", 15*time.Second, func() bool { return len(attempts("done")) == 1 })
	_ = base2

	// The batch's events: each attempt under its event's create span,
	// each create span under the batch's ingest span, before and after
	// the restart.
	eventually(t, "the batch's deliveries exported", 15*time.Second, func() bool {
		done := 0
		for _, s := range collector.Trace(batchTrace) {
			if s.Kind == tracepb.Span_SPAN_KIND_CONSUMER && s.Attributes["fanout.delivery.outcome"] == "done" {
				done++
			}
		}
		return done == 2
	})
	creates, ingest := map[string]string{}, ""
	for _, s := range collector.Trace(batchTrace) {
		switch s.Kind {
		case tracepb.Span_SPAN_KIND_SERVER:
			ingest = s.SpanID
			if s.ParentSpanID != batchSpan || s.Name != "POST /v1/batch" {
				t.Errorf("batch ingest span %q under %q", s.Name, s.ParentSpanID)
			}
		case tracepb.Span_SPAN_KIND_PRODUCER:
			creates[s.SpanID] = s.Attributes["messaging.message.id"]
		}
	}
	if len(creates) != 2 {
		t.Fatalf("%d create spans for a batch of 2", len(creates))
	}
	for _, s := range collector.Trace(batchTrace) {
		switch s.Kind {
		case tracepb.Span_SPAN_KIND_PRODUCER:
			if s.ParentSpanID != ingest {
				t.Errorf("create span under %q, want the batch's ingest span %s", s.ParentSpanID, ingest)
			}
		case tracepb.Span_SPAN_KIND_CONSUMER:
			if event, ok := creates[s.ParentSpanID]; !ok || event != s.Attributes["messaging.message.id"] {
				t.Errorf("attempt of event %s under %q, not its event's create span", s.Attributes["messaging.message.id"], s.ParentSpanID)
			}
		}
	}

	spans := collector.Trace(clientTrace)
	var server otlptest.Span
	for _, s := range spans {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			server = s
		}
	}
	if server.Name != "POST /v1/event" || server.ParentSpanID != clientSpan {
		t.Fatalf("ingest span %q under %q, want POST /v1/event under the client's %s", server.Name, server.ParentSpanID, clientSpan)
	}
	if server.Attributes["messaging.message.id"] != res.ID {
		t.Fatalf("ingest span's message id %q, want the event's %s", server.Attributes["messaging.message.id"], res.ID)
	}
	create := server // a single event's creation context is its ingest span
	if server.Resource["service.name"] != "fanout-test" || server.Resource["service.instance.id"] == "" {
		t.Errorf("resource %v", server.Resource)
	}
	if got := collector.Header("x-api-key"); got != "s3crét" {
		t.Errorf("export header x-api-key %q, want OTEL_EXPORTER_OTLP_HEADERS's", got)
	}
	if got := collector.Header("content-encoding"); got != "gzip" {
		t.Errorf("export Content-Encoding %q with OTEL_EXPORTER_OTLP_COMPRESSION=gzip", got)
	}
	all := attempts("")
	if len(all) <= before {
		t.Fatalf("%d attempts exported before the restart, %d in all", before, len(all))
	}
	consumers := map[string]otlptest.Span{}
	instances := map[string]bool{}
	for _, a := range all {
		consumers[a.SpanID] = a
		instances[a.Resource["service.instance.id"]] = true
		if a.ParentSpanID != create.SpanID {
			t.Errorf("attempt %s (%s) under %q, want the ingest span %s", a.Attributes["fanout.delivery.attempt"],
				a.Attributes["fanout.delivery.outcome"], a.ParentSpanID, create.SpanID)
		}
	}
	done := attempts("done")[0]
	if done.Resource["service.instance.id"] == server.Resource["service.instance.id"] || len(instances) != 2 {
		t.Errorf("the delivering attempt ran in process %s, the ingest in %s: want two processes (%v)",
			done.Resource["service.instance.id"], server.Resource["service.instance.id"], instances)
	}
	requests := 0
	for _, s := range spans {
		if s.Kind != tracepb.Span_SPAN_KIND_CLIENT {
			continue
		}
		requests++
		if _, ok := consumers[s.ParentSpanID]; !ok {
			t.Errorf("request span %s under %q, not under an attempt", s.SpanID, s.ParentSpanID)
		}
		if s.Name != "POST" || s.Attributes["http.request.method"] != "POST" || s.Attributes["server.address"] != "127.0.0.1" {
			t.Errorf("request span %q %v", s.Name, s.Attributes)
		}
	}
	if requests != len(all) {
		t.Errorf("%d request spans for %d attempts", requests, len(all))
	}
	var last string // the last request of the single event's trace (the batch's have their own)
	for _, p := range dest.got() {
		if strings.HasPrefix(p, "00-"+clientTrace+"-") {
			last = p
		}
	}
	var lastRequest string
	for _, s := range spans {
		if s.Kind == tracepb.Span_SPAN_KIND_CLIENT && s.ParentSpanID == done.SpanID {
			lastRequest = s.SpanID
		}
	}
	if want := "00-" + clientTrace + "-" + lastRequest + "-01"; last != want {
		t.Errorf("the delivered request carried %q, want %q", last, want)
	}
}

// TestTracing_CollectorDown: with the collector out of reach, events are
// accepted and delivered as ever, and a shutdown does not wait long for
// the spans it cannot send.
func TestTracing_CollectorDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	dest := newTraceReceiver(t, 0)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--destination", dest.URL},
		map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_BSP_SCHEDULE_DELAY": "10"})
	for i := range 20 {
		if code, body := post(t, base+"/v1/event", fmt.Sprintf(`{"n":%d}`, i)); code != http.StatusAccepted {
			t.Fatalf("POST: %d %s", code, body)
		}
	}
	eventually(t, "every event delivered", 10*time.Second, func() bool { return len(dest.got()) == 20 })
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the shutdown took %v with the collector down", took)
	}
}

// TestTracing_GRPC exports over gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc) to
// a receiver in the test.
func TestTracing_GRPC(t *testing.T) {
	t.Parallel()
	collector := otlptest.StartGRPC(t)
	dest := newTraceReceiver(t, 0)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--destination", dest.URL}, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "20",
		"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=k"})
	const clientTrace = "7bf92f3577b34da6a3ce929d0e0e4736"
	if code := call(t, "POST", base+"/v1/event", `{}`, nil, "traceparent", "00-"+clientTrace+"-30f067aa0ba902b7-01"); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	eventually(t, "the attempt exported over gRPC", 10*time.Second, func() bool {
		for _, s := range collector.Trace(clientTrace) {
			if s.Kind == tracepb.Span_SPAN_KIND_CONSUMER && s.Attributes["fanout.delivery.outcome"] == "done" {
				return true
			}
		}
		return false
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	kinds := map[tracepb.Span_SpanKind]int{}
	for _, s := range collector.Trace(clientTrace) {
		kinds[s.Kind]++
	}
	if kinds[tracepb.Span_SPAN_KIND_SERVER] != 1 || kinds[tracepb.Span_SPAN_KIND_CONSUMER] != 1 || kinds[tracepb.Span_SPAN_KIND_CLIENT] != 1 {
		t.Errorf("spans by kind %v", kinds)
	}
	if collector.Header("x-api-key") != "k" {
		t.Errorf("gRPC metadata x-api-key %q", collector.Header("x-api-key"))
	}
}
