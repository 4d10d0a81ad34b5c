package app

import (
	"context"
	"encoding/json"
	"fanout/internal/service"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestTraceSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		off      bool
		endpoint string
		grpc     bool
		err      string
	}{
		{name: "OffByDefault", off: true},
		{name: "GenericEndpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
			endpoint: "http://collector:4318/v1/traces"},
		{name: "TracesEndpointAsIs", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/otlp/traces",
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318"}, endpoint: "https://c.example/otlp/traces"},
		{name: "ExporterOTLPDefaultEndpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"},
			endpoint: "http://localhost:4318/v1/traces"},
		{name: "GRPC", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			endpoint: "http://collector:4317", grpc: true},
		{name: "FlagWins", args: []string{"--otlp-endpoint", "http://flag:4318", "--otlp-protocol", "http/protobuf"},
			env:      map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			endpoint: "http://flag:4318/v1/traces"},
		{name: "Disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, off: true},
		{name: "ExporterNone", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, off: true},
		{name: "ExporterConsole", env: map[string]string{"OTEL_TRACES_EXPORTER": "console"}, err: "OTLP only"},
		{name: "BadProtocol", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, err: "http/protobuf or grpc"},
		{name: "BadEndpoint", args: []string{"--otlp-endpoint", "collector:4318"}, err: "http:// or https://"},
		{name: "BadSampler", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, err: "OTEL_TRACES_SAMPLER"},
		{name: "BadRatio", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, err: "between 0 and 1"},
		{name: "BadHeaders", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, err: "key=value"},
		{name: "BadTimeout", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, err: "milliseconds"},
		{name: "BadBatch", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, err: "positive integer"},
		{name: "BadPropagator", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_PROPAGATORS": "b3"}, err: "tracecontext"},
		{name: "Everything", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=a%20b,x=y",
			"OTEL_EXPORTER_OTLP_TIMEOUT": "500", "OTEL_EXPORTER_OTLP_COMPRESSION": "none", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_PROPAGATORS": "tracecontext", "OTEL_SERVICE_NAME": "ingest",
			"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=core", "OTEL_BSP_SCHEDULE_DELAY": "100"},
			endpoint: "https://c:4318/v1/traces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseConfig(tc.args, func(string) string { return "" }, nil, nil)
			if err != nil && tc.err == "" {
				t.Fatal(err)
			}
			var s *service.TraceSettings
			if err == nil {
				s, err = service.TraceSettingsFrom(service.TraceOptions{Endpoint: cfg.otlpEndpoint, Protocol: cfg.otlpProtocol}, func(k string) string { return tc.env[k] })
			}
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one that says %q", err, tc.err)
				}
				return
			case err != nil:
				t.Fatal(err)
			case tc.off:
				if s != nil {
					t.Fatalf("tracing on (%+v), want off", s)
				}
				return
			case s == nil:
				t.Fatal("tracing off, want on")
			}
			if s.Endpoint != tc.endpoint || s.Grpc != tc.grpc {
				t.Errorf("endpoint %q (grpc %v), want %q (grpc %v)", s.Endpoint, s.Grpc, tc.endpoint, tc.grpc)
			}
			if tc.name == "GenericEndpoint" && (s.Compression != "none" || s.Timeout != 10*time.Second) {
				t.Errorf("defaults: compression %q, timeout %v; want none (the specification's), 10s", s.Compression, s.Timeout)
			}
			if tc.name == "Everything" {
				if s.Headers["api-key"] != "a b" || s.Headers["x"] != "y" || s.Timeout != 500*time.Millisecond ||
					s.Compression != "none" || len(s.Propagators) != 1 || len(s.Bsp) != 1 {
					t.Errorf("settings %+v", s)
				}
				res := attribute.NewSet(s.Resource...)
				if v, _ := res.Value("service.name"); v.AsString() != "ingest" {
					t.Errorf("service.name %q, want OTEL_SERVICE_NAME's", v.AsString())
				}
				if v, _ := res.Value("team"); v.AsString() != "core" {
					t.Errorf("OTEL_RESOURCE_ATTRIBUTES not in the resource: %v", s.Resource)
				}
			}
		})
	}
}

// traceReceiver is a destination that records the traceparent of each
// request, and answers 503 to the first failFirst of them.
type traceReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	parents  []string
	failLeft int
}

func newTraceReceiver(t *testing.T, failFirst int) *traceReceiver {
	r := &traceReceiver{failLeft: failFirst}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.parents = append(r.parents, req.Header.Get("traceparent"))
		if r.failLeft > 0 {
			r.failLeft--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *traceReceiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.parents)
}

func attr(s tracetest.SpanStub, key string) attribute.Value {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func spansOf(exp *tracetest.InMemoryExporter, kind trace.SpanKind) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.SpanKind == kind {
			out = append(out, s)
		}
	}
	return out
}

func postWith(t *testing.T, url, body string, header ...string) (int, []byte) {
	t.Helper()
	var out json.RawMessage
	code := call(t, "POST", url, body, &out, header...)
	return code, out
}

// TestTracing_EventToAttempts follows one event: the client's traceparent
// is the parent of the ingest span, which is the event's creation context
// (a request of one event has no create span of its own); each delivery
// attempt (a failed one, then the retry that delivers) is a span under it,
// with its request to the destination under that; and the destination
// gets that request's traceparent, so that its own trace continues
// fanout's.
func TestTracing_EventToAttempts(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	dest := newTraceReceiver(t, 1)
	a := startApp(t, []string{"--data", t.TempDir(), "--destination", dest.URL, "--retry-initial", "10ms", "--retry-max", "50ms",
		"--otlp-endpoint", "http://127.0.0.1:9"}, nil, exp)

	const clientTrace, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	var res struct{ ID string }
	code := call(t, "POST", a.URL+"/v1/event", `{"type":"order.paid"}`, &res, "traceparent", "00-"+clientTrace+"-"+clientSpan+"-01")
	if code != http.StatusAccepted {
		t.Fatalf("POST /v1/event: %d", code)
	}
	eventually(t, "two attempts traced", 10*time.Second, func() bool {
		return len(spansOf(exp, trace.SpanKindConsumer)) == 2 && len(spansOf(exp, trace.SpanKindClient)) == 2
	})

	servers, creates := spansOf(exp, trace.SpanKindServer), spansOf(exp, trace.SpanKindProducer)
	if len(servers) != 1 || len(creates) != 0 {
		t.Fatalf("%d server spans and %d create spans, want 1 and none", len(servers), len(creates))
	}
	server, create := servers[0], servers[0]
	if server.Name != "POST /v1/event" || server.Parent.TraceID().String() != clientTrace || server.Parent.SpanID().String() != clientSpan ||
		!server.Parent.IsRemote() {
		t.Errorf("server span %q, parent %v: want POST /v1/event under the client's span", server.Name, server.Parent)
	}
	if got := attr(server, "http.response.status_code").AsInt64(); got != 202 || attr(server, "http.route").AsString() != "/v1/event" {
		t.Errorf("server span status %d route %q", got, attr(server, "http.route").AsString())
	}
	if attr(server, "messaging.message.id").AsString() != res.ID || attr(server, "fanout.event.type").AsString() != "order.paid" {
		t.Errorf("ingest span: message id %q (event %s), type %q", attr(server, "messaging.message.id").AsString(), res.ID,
			attr(server, "fanout.event.type").AsString())
	}

	attempts := spansOf(exp, trace.SpanKindConsumer)
	slices.SortFunc(attempts, func(x, y tracetest.SpanStub) int {
		return int(attr(x, "fanout.delivery.attempt").AsInt64() - attr(y, "fanout.delivery.attempt").AsInt64())
	})
	clients := spansOf(exp, trace.SpanKindClient)
	parents := dest.got()
	for i, at := range attempts {
		n := int64(i + 1)
		if at.SpanContext.TraceID().String() != clientTrace || at.Parent.SpanID() != create.SpanContext.SpanID() {
			t.Errorf("attempt %d: trace %v parent %v, want the ingest span %v of trace %s", n, at.SpanContext.TraceID(),
				at.Parent.SpanID(), create.SpanContext.SpanID(), clientTrace)
		}
		if got := attr(at, "fanout.delivery.attempt").AsInt64(); got != n {
			t.Errorf("attempt span %d says attempt %d", n, got)
		}
		deliveryID := attr(at, "fanout.delivery.id").AsString()
		if at.SpanContext.SpanID() != service.AttemptSpanID(deliveryID, int(n)) || !strings.HasPrefix(deliveryID, res.ID+".") {
			t.Errorf("attempt %d of delivery %s: span id %v, want the derived one", n, deliveryID, at.SpanContext.SpanID())
		}
		if !strings.HasPrefix(at.Name, "deliver dst_") || attr(at, "messaging.destination.name").AsString() != at.Name[len("deliver "):] {
			t.Errorf("attempt span named %q, destination %q", at.Name, attr(at, "messaging.destination.name").AsString())
		}
		var client *tracetest.SpanStub
		for j := range clients {
			if clients[j].Parent.SpanID() == at.SpanContext.SpanID() {
				client = &clients[j]
			}
		}
		if client == nil {
			t.Fatalf("attempt %d has no request span under it", n)
		}
		want := "00-" + clientTrace + "-" + client.SpanContext.SpanID().String() + "-01"
		if i >= len(parents) || parents[i] != want {
			t.Errorf("request %d carried traceparent %q, want its span's %q (all: %q)", n, parents, want, parents)
		}
		if got := attr(*client, "fanout.delivery.attempt").AsInt64(); got != n {
			t.Errorf("request span of attempt %d says %d", n, got)
		}
	}
	first, second := attempts[0], attempts[1]
	if attr(first, "fanout.delivery.outcome").AsString() != "retried" || attr(first, "http.response.status_code").AsInt64() != 503 ||
		attr(first, "error.type").AsString() != "503" || attr(first, "fanout.delivery.retry_delay").AsFloat64() <= 0 ||
		first.Status.Code.String() != "Error" {
		t.Errorf("first attempt: %v", first.Attributes)
	}
	if attr(second, "fanout.delivery.outcome").AsString() != "done" || second.Status.Code.String() == "Error" {
		t.Errorf("second attempt: %v %v", second.Attributes, second.Status)
	}
	if !first.EndTime.After(first.StartTime) || second.StartTime.Before(first.EndTime) {
		t.Errorf("attempts timed %v-%v and %v-%v", first.StartTime, first.EndTime, second.StartTime, second.EndTime)
	}
}

// TestTracing_Ingest covers the other ways into ingest: a batch (a create
// span per event, under the request's), a request without traceparent (a
// new trace), and one whose caller did not sample (no spans, and the
// destination gets an unsampled traceparent).
func TestTracing_Ingest(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	dest := newTraceReceiver(t, 0)
	a := startApp(t, []string{"--data", t.TempDir(), "--destination", dest.URL, "--otlp-endpoint", "http://127.0.0.1:9"}, nil, exp)

	const batchTrace = "0af7651916cd43dd8448eb211c80319c"
	if code, _ := postWith(t, a.URL+"/v1/batch", `[{"a":1},{"a":2}]`, "traceparent", "00-"+batchTrace+"-b7ad6b7169203331-01"); code != 202 {
		t.Fatalf("batch: %d", code)
	}
	if code, _ := postWith(t, a.URL+"/v1/event", `{"plain":1}`); code != 202 {
		t.Fatalf("event: %d", code)
	}
	const unsampled = "11111111111111111111111111111111"
	if code, _ := postWith(t, a.URL+"/v1/event", `{"quiet":1}`, "traceparent", "00-"+unsampled+"-2222222222222222-00"); code != 202 {
		t.Fatalf("unsampled event: %d", code)
	}
	eventually(t, "four deliveries", 10*time.Second, func() bool { return len(dest.got()) == 4 })
	eventually(t, "three attempts traced", 10*time.Second, func() bool { return len(spansOf(exp, trace.SpanKindConsumer)) == 3 })

	byTrace := map[string][]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		byTrace[s.SpanContext.TraceID().String()] = append(byTrace[s.SpanContext.TraceID().String()], s)
	}
	if len(byTrace[unsampled]) != 0 {
		t.Errorf("the unsampled request left %d spans", len(byTrace[unsampled]))
	}
	batch := byTrace[batchTrace]
	var server tracetest.SpanStub
	var creates []tracetest.SpanStub
	for _, s := range batch {
		switch s.SpanKind {
		case trace.SpanKindServer:
			server = s
		case trace.SpanKindProducer:
			creates = append(creates, s)
		}
	}
	if server.Name != "POST /v1/batch" || len(creates) != 2 {
		t.Fatalf("batch trace: server %q, %d create spans", server.Name, len(creates))
	}
	for _, c := range creates {
		if c.Parent.SpanID() != server.SpanContext.SpanID() {
			t.Errorf("create span %v not under the batch's request", c.SpanContext.SpanID())
		}
	}
	delete(byTrace, batchTrace)
	if len(byTrace) != 1 {
		t.Fatalf("%d other traces, want 1 (the event without traceparent)", len(byTrace))
	}
	for _, spans := range byTrace {
		for _, s := range spans {
			if s.SpanKind == trace.SpanKindServer && s.Parent.IsValid() {
				t.Errorf("the request without traceparent has a parent: %v", s.Parent)
			}
		}
	}
	var sawUnsampled bool
	for _, p := range dest.got() {
		if strings.HasPrefix(p, "00-"+unsampled+"-") {
			sawUnsampled = strings.HasSuffix(p, "-00")
		}
	}
	if !sawUnsampled {
		t.Errorf("the destination did not get the unsampled trace's traceparent: %q", dest.got())
	}
}

// TestTracing_Off: without tracing, no trace context is stored with events
// and deliveries carry no traceparent.
func TestTracing_Off(t *testing.T) {
	t.Parallel()
	dest := newTraceReceiver(t, 0)
	a := startApp(t, []string{"--data", t.TempDir(), "--destination", dest.URL}, nil, nil)
	var res struct{ ID string }
	if code := call(t, "POST", a.URL+"/v1/event", `{}`, &res, "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	eventually(t, "delivered", 10*time.Second, func() bool { return len(dest.got()) == 1 })
	if p := dest.got()[0]; p != "" {
		t.Errorf("delivery carried traceparent %q with tracing off", p)
	}
	c, err := a.store.CallGet(context.Background(), res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta != nil {
		t.Errorf("event stored with Meta %s with tracing off", c.Meta)
	}
	if a.svc.Tracing != nil {
		t.Error("tracing on")
	}
}

// TestTracing_LongTracestateDropped: a producer's tracestate is carried into
// every delivery of its events, so one over 512 bytes is dropped at the
// door (the W3C spec allows it), and a usual one kept.
func TestTracing_LongTracestateDropped(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	a := startApp(t, []string{"--data", t.TempDir(), "--otlp-endpoint", "http://127.0.0.1:9"}, nil, exp)
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	long := "a=" + strings.Repeat("x", 250) + ",b=" + strings.Repeat("y", 250) + ",c=" + strings.Repeat("z", 100)
	tests := []struct {
		name, tracestate string
		wantEntries      int
	}{
		{"Usual", "vendor=abc,other=def", 2},
		{"Long", long, 0},
	}
	for _, tc := range tests {
		exp.Reset()
		if code := call(t, "POST", a.URL+"/v1/event", `{"type":"t"}`, nil, "traceparent", traceparent, "tracestate", tc.tracestate); code != 202 {
			t.Fatalf("%s: POST /v1/event: %d", tc.name, code)
		}
		servers := spansOf(exp, trace.SpanKindServer)
		if len(servers) != 1 {
			t.Fatalf("%s: %d server spans, want 1", tc.name, len(servers))
		}
		if got := servers[0].Parent.TraceState().Len(); got != tc.wantEntries || !servers[0].Parent.IsValid() {
			t.Errorf("%s (%d bytes): the request's trace context has %d tracestate entries (valid %v), want %d and its traceparent",
				tc.name, len(tc.tracestate), got, servers[0].Parent.IsValid(), tc.wantEntries)
		}
	}
}
