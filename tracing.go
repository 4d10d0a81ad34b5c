package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"fanout/destination"
	"fanout/dispatch"
)

// Traces, with OpenTelemetry: off unless the standard OTEL_* environment
// or --otlp-endpoint asks for them.
//
// What an event's trace holds:
//
//	POST /v1/batch            SERVER, the child of the client's traceparent if it sent one
//	  create event            PRODUCER, one per event: its context is stored with the event
//	    deliver dst_...       CONSUMER, one per delivery attempt, wherever and whenever it runs
//	      POST                CLIENT, the request to the destination, which carries its traceparent
//
// A request of one event (POST /v1/event) has no create span: the
// request's span is the event's creation context, and the attempts are its
// children. The event's context travels in the store (dispatch.Call.Meta,
// which its deliveries inherit), so that an attempt hours later, on
// another replica or after a restart, joins the event's trace as a child
// of its creation context. An attempt's span is made from the runtime's report once the
// attempt's outcome is stored (it knows the retry delay then); its id is
// derived from the delivery's id and attempt number, so that the request,
// made while the attempt runs, can already name it as its parent.
type tracing struct {
	tp      *sdktrace.TracerProvider
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
	sampler sdktrace.Sampler
}

// traceSettings is what turns tracing on and configures it: flags, then
// the OTEL_* environment, read through run's getenv.
type traceSettings struct {
	endpoint    string // the traces endpoint URL
	grpc        bool   // OTLP over gRPC, not HTTP
	headers     map[string]string
	timeout     time.Duration
	compression string // "gzip" or "none"
	sampler     sdktrace.Sampler
	propagators []propagation.TextMapPropagator
	resource    []attribute.KeyValue
	bsp         []sdktrace.BatchSpanProcessorOption
	// exporter replaces the OTLP exporter (tests: an in-memory one, whose
	// spans are then exported as they end).
	exporter sdktrace.SpanExporter
}

// traceSettingsFrom reads the tracing settings; nil when tracing is off.
// The flag --otlp-endpoint turns it on; so do OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_TRACES_EXPORTER=otlp, unless
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
func traceSettingsFrom(cfg *config, getenv func(string) string) (*traceSettings, error) {
	env := func(name string) string { return strings.TrimSpace(getenv(name)) }
	// A signal-specific variable wins over the generic one.
	otlp := func(name string) string {
		return cmp.Or(env("OTEL_EXPORTER_OTLP_TRACES_"+name), env("OTEL_EXPORTER_OTLP_"+name))
	}
	exporter := strings.ToLower(env("OTEL_TRACES_EXPORTER"))
	switch {
	case cfg.otlpEndpoint != "":
	case strings.EqualFold(env("OTEL_SDK_DISABLED"), "true"), exporter == "none":
		return nil, nil
	case exporter != "" && exporter != "otlp":
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%s: fanout exports traces over OTLP only (otlp or none)", exporter)
	case exporter == "" && env("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "":
		return nil, nil
	}
	// No compression unless asked (the specification's default): gzip
	// was half of the export's CPU, which matters more on the two cores
	// fanout shares with its store than bytes on a local network.
	s := &traceSettings{compression: "none", timeout: 10 * time.Second}

	protocol := cmp.Or(cfg.otlpProtocol, otlp("PROTOCOL"), "http/protobuf")
	switch protocol {
	case "http/protobuf":
	case "grpc":
		s.grpc = true
	default:
		return nil, fmt.Errorf("OTLP protocol %q (--otlp-protocol, OTEL_EXPORTER_OTLP_PROTOCOL): fanout speaks http/protobuf or grpc", protocol)
	}
	var err error
	if s.endpoint, err = traceEndpoint(cfg.otlpEndpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
		env("OTEL_EXPORTER_OTLP_ENDPOINT"), s.grpc); err != nil {
		return nil, err
	}
	if h := otlp("HEADERS"); h != "" {
		kv, err := parseKeyValues(h)
		if err != nil {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_HEADERS: %w", err)
		}
		s.headers = map[string]string{}
		for _, p := range kv {
			s.headers[p[0]] = p[1]
		}
	}
	if v := otlp("TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_TIMEOUT=%q: want a positive number of milliseconds", v)
		}
		s.timeout = time.Duration(ms) * time.Millisecond
	}
	if v := strings.ToLower(otlp("COMPRESSION")); v != "" {
		if v != "gzip" && v != "none" {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_COMPRESSION=%q: want gzip or none", v)
		}
		s.compression = v
	}
	if s.sampler, err = samplerFrom(env("OTEL_TRACES_SAMPLER"), env("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		return nil, err
	}
	if s.propagators, err = propagatorsFrom(env("OTEL_PROPAGATORS")); err != nil {
		return nil, err
	}
	if s.resource, err = resourceFrom(env("OTEL_SERVICE_NAME"), env("OTEL_RESOURCE_ATTRIBUTES")); err != nil {
		return nil, err
	}
	for _, b := range []struct {
		name string
		opt  func(int) sdktrace.BatchSpanProcessorOption
	}{
		{"OTEL_BSP_SCHEDULE_DELAY", func(ms int) sdktrace.BatchSpanProcessorOption {
			return sdktrace.WithBatchTimeout(time.Duration(ms) * time.Millisecond)
		}},
		{"OTEL_BSP_EXPORT_TIMEOUT", func(ms int) sdktrace.BatchSpanProcessorOption {
			return sdktrace.WithExportTimeout(time.Duration(ms) * time.Millisecond)
		}},
		{"OTEL_BSP_MAX_QUEUE_SIZE", sdktrace.WithMaxQueueSize},
		{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", sdktrace.WithMaxExportBatchSize},
	} {
		if v := env(b.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("%s=%q: want a positive integer", b.name, v)
			}
			s.bsp = append(s.bsp, b.opt(n))
		}
	}
	return s, nil
}

// traceEndpoint is the URL traces are sent to: the flag's, the signal's
// own, or the generic one (to which OTLP/HTTP adds /v1/traces), by default
// the local collector's.
func traceEndpoint(flagURL, tracesURL, genericURL string, grpc bool) (string, error) {
	raw, generic := cmp.Or(flagURL, tracesURL), false
	if raw == "" {
		raw, generic = genericURL, true
	}
	if raw == "" {
		raw = "http://localhost:4318"
		if grpc {
			raw = "http://localhost:4317"
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("OTLP endpoint %q (--otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT): want an http:// or https:// URL", raw)
	}
	if !grpc && (generic || flagURL != "") && (u.Path == "" || u.Path == "/") {
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

// samplerFrom is the sampler OTEL_TRACES_SAMPLER names (the SDK's rules;
// the default follows the caller's decision and samples every root).
func samplerFrom(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 0, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio between 0 and 1", arg)
		}
		return r, nil
	}
	switch strings.ToLower(name) {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		r, err := ratio()
		return sdktrace.TraceIDRatioBased(r), err
	case "parentbased_traceidratio":
		r, err := ratio()
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), err
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio", name)
}

// propagatorsFrom reads OTEL_PROPAGATORS: tracecontext and baggage (the
// default), or none.
func propagatorsFrom(v string) ([]propagation.TextMapPropagator, error) {
	if v == "" {
		v = "tracecontext,baggage"
	}
	var ps []propagation.TextMapPropagator
	for _, name := range strings.Split(v, ",") {
		switch strings.TrimSpace(strings.ToLower(name)) {
		case "tracecontext":
			ps = append(ps, propagation.TraceContext{})
		case "baggage":
			ps = append(ps, propagation.Baggage{})
		case "none", "":
		default:
			return nil, fmt.Errorf("OTEL_PROPAGATORS=%q: fanout knows tracecontext, baggage and none", v)
		}
	}
	return ps, nil
}

// resourceFrom describes this process: service.name (OTEL_SERVICE_NAME,
// else fanout), service.version, a service.instance.id of its own, and
// OTEL_RESOURCE_ATTRIBUTES.
func resourceFrom(serviceName, attrs string) ([]attribute.KeyValue, error) {
	kv, err := parseKeyValues(attrs)
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	out := []attribute.KeyValue{semconv.ServiceName("fanout"), semconv.ServiceVersion(version),
		semconv.ServiceInstanceID(uuid.NewString())}
	for _, p := range kv {
		out = append(out, attribute.String(p[0], p[1]))
	}
	if serviceName != "" {
		out = append(out, semconv.ServiceName(serviceName))
	}
	return out, nil // later ones win
}

// parseKeyValues reads the W3C Baggage-like lists of OTEL_RESOURCE_ATTRIBUTES
// and OTEL_EXPORTER_OTLP_HEADERS: key=value pairs separated by commas, the
// values percent-encoded.
func parseKeyValues(s string) ([][2]string, error) {
	var out [][2]string
	for _, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", item)
		}
		val, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("the value of %s: %v", k, err)
		}
		out = append(out, [2]string{k, val})
	}
	return out, nil
}

// newTracing starts the tracer provider and its exporter.
func newTracing(ctx context.Context, s *traceSettings, log *slog.Logger) (*tracing, error) {
	exp := s.exporter
	var processor sdktrace.SpanProcessor
	if exp != nil {
		processor = sdktrace.NewSimpleSpanProcessor(exp)
	} else {
		var err error
		if s.grpc {
			opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(s.endpoint), otlptracegrpc.WithTimeout(s.timeout)}
			if s.headers != nil {
				opts = append(opts, otlptracegrpc.WithHeaders(s.headers))
			}
			if s.compression == "gzip" {
				opts = append(opts, otlptracegrpc.WithCompressor("gzip"))
			}
			exp, err = otlptracegrpc.New(ctx, opts...)
		} else {
			opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(s.endpoint), otlptracehttp.WithTimeout(s.timeout)}
			if s.headers != nil {
				opts = append(opts, otlptracehttp.WithHeaders(s.headers))
			}
			if s.compression == "gzip" {
				opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
			} else {
				opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.NoCompression))
			}
			exp, err = otlptracehttp.New(ctx, opts...)
		}
		if err != nil {
			return nil, fmt.Errorf("start the OTLP trace exporter: %w", err)
		}
		processor = sdktrace.NewBatchSpanProcessor(&loggedExporter{SpanExporter: exp, log: log, endpoint: s.endpoint}, s.bsp...)
	}
	res, err := resource.New(ctx, resource.WithSchemaURL(semconv.SchemaURL), resource.WithTelemetrySDK(),
		resource.WithAttributes(s.resource...))
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("describe the process for traces: %w", err)
	}
	sampler := s.sampler
	if sampler == nil {
		sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(processor), sdktrace.WithSampler(sampler),
		sdktrace.WithResource(res), sdktrace.WithIDGenerator(idGenerator{}))
	props := s.propagators
	if props == nil {
		props = []propagation.TextMapPropagator{propagation.TraceContext{}, propagation.Baggage{}}
	}
	return &tracing{tp: tp, tracer: tp.Tracer("fanout", trace.WithInstrumentationVersion(version)),
		prop: propagation.NewCompositeTextMapPropagator(props...), sampler: sampler}, nil
}

// shutdown exports the spans still queued, until ctx ends.
func (t *tracing) shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// loggedExporter logs failed exports, once a minute at most, instead of
// handing them to OpenTelemetry's global error handler: spans that cannot
// be exported are dropped, and fanout carries on.
type loggedExporter struct {
	sdktrace.SpanExporter
	log      *slog.Logger
	endpoint string

	mu      sync.Mutex
	logged  time.Time
	dropped int
}

func (e *loggedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropped += len(spans)
	if time.Since(e.logged) >= time.Minute {
		e.log.Warn("spans could not be exported to the OTLP endpoint; dropping them", "endpoint", e.endpoint,
			"spans", e.dropped, "err", err)
		e.logged, e.dropped = time.Now(), 0
	}
	return nil
}

// --- spans of the HTTP API ---

// serve makes a SERVER span of each request but probes and scrapes, the
// child of the traceparent the client sent, if any.
func (t *tracing) serve(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics", "/healthz", "/readyz":
			next.ServeHTTP(w, r)
			return
		}
		ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		attrs := make([]attribute.KeyValue, 0, 9)
		attrs = append(attrs, semconv.HTTPRequestMethodKey.String(r.Method), semconv.URLPath(r.URL.Path),
			semconv.URLScheme("http"), semconv.NetworkProtocolVersion(protocolVersion(r)))
		if host, port, err := net.SplitHostPort(r.Host); err == nil {
			attrs = append(attrs, semconv.ServerAddress(host))
			if p, err := strconv.Atoi(port); err == nil {
				attrs = append(attrs, semconv.ServerPort(p))
			}
		} else if r.Host != "" {
			attrs = append(attrs, semconv.ServerAddress(r.Host))
		}
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			attrs = append(attrs, semconv.ClientAddress(host))
		}
		if ua := r.UserAgent(); ua != "" {
			attrs = append(attrs, semconv.UserAgentOriginal(ua))
		}
		ctx, span := t.tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(ctx)
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		after := make([]attribute.KeyValue, 0, 3)
		after = append(after, semconv.HTTPResponseStatusCode(status))
		if _, path, ok := strings.Cut(r.Pattern, " "); ok {
			span.SetName(r.Method + " " + path)
			after = append(after, semconv.HTTPRoute(path))
		}
		if status >= 500 {
			after = append(after, semconv.ErrorTypeKey.String(strconv.Itoa(status)))
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		span.SetAttributes(after...)
	})
}

// protocolVersion is network.protocol.version: "1.1", "2".
func protocolVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		return "1.1"
	case r.ProtoMinor == 0:
		return strconv.Itoa(r.ProtoMajor)
	}
	return strconv.Itoa(r.ProtoMajor) + "." + strconv.Itoa(r.ProtoMinor)
}

// createSpans are the creation contexts of the events of one ingest
// request: a PRODUCER span per event of a batch; for a request of one
// event, the request's own span (OpenTelemetry's messaging conventions let
// a single message's creation context be the span that sends it), which
// halves what tracing costs the common case.
type createSpans struct {
	t      *tracing
	ctx    context.Context
	spans  []trace.Span
	single trace.Span // the request's span, for a request of one event
}

func (t *tracing) startCreate(ctx context.Context, n int) *createSpans {
	c := &createSpans{t: t, ctx: ctx}
	if parent := trace.SpanFromContext(ctx); n == 1 && parent.SpanContext().IsValid() && !parent.SpanContext().IsRemote() {
		c.single = parent
		return c
	}
	c.spans = make([]trace.Span, 0, n)
	return c
}

// start starts the creation context of the i-th event and returns it, to
// be stored with the event (see encodeTraceMeta).
func (c *createSpans) start(i int, eventType string) []byte {
	if c.single != nil {
		if eventType != "" {
			c.single.SetAttributes(attribute.String("fanout.event.type", eventType))
		}
		return encodeTraceMeta(c.single.SpanContext())
	}
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs, semconv.MessagingSystemKey.String("fanout"), semconv.MessagingOperationTypeCreate,
		semconv.MessagingOperationName("create"))
	if eventType != "" {
		attrs = append(attrs, attribute.String("fanout.event.type", eventType))
	}
	if cap(c.spans) > 1 {
		attrs = append(attrs, attribute.Int("fanout.event.index", i))
	}
	_, span := c.t.tracer.Start(c.ctx, "create event", trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	c.spans = append(c.spans, span)
	return encodeTraceMeta(span.SpanContext())
}

// end ends the spans once the events are stored (ids) or refused (err).
func (c *createSpans) end(ids []string, err error) {
	if c.single != nil {
		if len(ids) == 1 {
			c.single.SetAttributes(semconv.MessagingMessageID(ids[0]))
		}
		return // the request's span ends with the request, with its status
	}
	for i, span := range c.spans {
		if i < len(ids) {
			span.SetAttributes(semconv.MessagingMessageID(ids[i]))
		}
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "not stored")
		}
		span.End()
	}
}

// --- the trace context stored with an event ---

// traceMeta is what an event's Call.Meta holds: its W3C trace context.
type traceMeta struct {
	Traceparent string `json:"traceparent"`
	Tracestate  string `json:"tracestate,omitempty"`
}

// encodeTraceMeta writes a span context as a Call.Meta, nil when it is not
// valid: {"traceparent":"00-<trace id>-<span id>-<flags>"}, and its
// "tracestate" when it has one. It runs for every event ingested while
// tracing is on: the traceparent is written by hand, as the W3C propagator
// would write it.
func encodeTraceMeta(sc trace.SpanContext) []byte {
	if !sc.IsValid() {
		return nil
	}
	const head = `{"traceparent":"00-`
	b := make([]byte, 0, len(head)+32+1+16+1+2+2)
	b = append(b, head...)
	tid, sid := sc.TraceID(), sc.SpanID()
	b = hex.AppendEncode(b, tid[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, sid[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, []byte{byte(sc.TraceFlags() & trace.FlagsSampled)})
	b = append(b, '"')
	if ts := sc.TraceState().String(); ts != "" {
		q, _ := json.Marshal(ts)
		b = append(b, `,"tracestate":`...)
		b = append(b, q...)
	}
	return append(b, '}')
}

// decodeTraceMeta reads a Call.Meta written by encodeTraceMeta: the span
// context it names, invalid when it names none (a Meta of another kind, an
// event stored while tracing was off).
func decodeTraceMeta(meta []byte) trace.SpanContext {
	if len(meta) == 0 {
		return trace.SpanContext{}
	}
	var m traceMeta
	if json.Unmarshal(meta, &m) != nil || m.Traceparent == "" {
		return trace.SpanContext{}
	}
	carrier := propagation.MapCarrier{"traceparent": m.Traceparent}
	if m.Tracestate != "" {
		carrier["tracestate"] = m.Tracestate
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
}

// --- spans of deliveries ---

// attemptIdentity is the span context of a delivery attempt's CONSUMER
// span, which the same inputs give wherever they are computed: the event's
// trace (or, for an event stored without one, a trace named after its id),
// a span id derived from the delivery's id and attempt, and the sampler's
// decision. parent is the event's create span, if it was stored.
func (t *tracing) attemptIdentity(meta []byte, eventID, deliveryID string, attempt int, destinationID string) (parent, sc trace.SpanContext) {
	parent = decodeTraceMeta(meta)
	traceID := parent.TraceID()
	if !parent.IsValid() {
		traceID = eventTraceID(eventID)
	}
	spanID := attemptSpanID(deliveryID, attempt)
	ctx := context.Background()
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	res := t.sampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: traceID,
		Name: "deliver " + destinationID, Kind: trace.SpanKindConsumer})
	var flags trace.TraceFlags
	if res.Decision == sdktrace.RecordAndSample {
		flags = trace.FlagsSampled
	}
	return parent, trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: flags,
		TraceState: res.Tracestate, Remote: true})
}

// eventTraceID is the trace of an event stored without a trace context:
// its id (a UUID, 16 bytes, like a trace id), so that all its attempts
// share one trace.
func eventTraceID(eventID string) trace.TraceID {
	if u, err := uuid.Parse(eventID); err == nil {
		return trace.TraceID(u)
	}
	sum := sha256.Sum256([]byte(eventID))
	return trace.TraceID(sum[:16])
}

// attemptSpanID is the span id of a delivery's attempt.
func attemptSpanID(deliveryID string, attempt int) trace.SpanID {
	sum := sha256.Sum256([]byte(deliveryID + "#" + strconv.Itoa(attempt)))
	var id trace.SpanID
	copy(id[:], sum[:8])
	if !id.IsValid() {
		id[7] = 1
	}
	return id
}

// startSend starts the CLIENT span of a delivery's request, the child of
// the attempt's span, and adds its traceparent to header (which may be
// nil). end ends it with what the destination answered.
func (t *tracing) startSend(ctx context.Context, d *destination.Destination, header http.Header) (http.Header, func(status int, err error)) {
	call, ok := dispatch.CallFromContext(ctx)
	if !ok {
		return header, func(int, error) {}
	}
	_, attempt := t.attemptIdentity(call.Meta, call.ParentID, call.ID, call.Attempt, d.ID)
	ctx = trace.ContextWithRemoteSpanContext(ctx, attempt)
	attrs := []attribute.KeyValue{semconv.HTTPRequestMethodPost, attribute.String("fanout.destination.id", d.ID),
		attribute.Int("fanout.delivery.attempt", call.Attempt)}
	if u, err := url.Parse(d.URL); err == nil {
		attrs = append(attrs, semconv.URLFull(redactURL(u)), semconv.ServerAddress(u.Hostname()))
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, semconv.ServerPort(p))
		}
	}
	if call.Attempt > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(call.Attempt-1))
	}
	ctx, span := t.tracer.Start(ctx, "POST", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	if header == nil {
		header = http.Header{}
	}
	t.prop.Inject(ctx, propagation.HeaderCarrier(header))
	return header, func(status int, err error) {
		if status > 0 {
			span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		}
		switch {
		case status >= 400:
			span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
			span.SetStatus(codes.Error, http.StatusText(status))
		case err != nil:
			span.SetAttributes(semconv.ErrorTypeKey.String(errorClass(err)))
			span.SetStatus(codes.Error, truncate(err.Error(), 256))
		}
		span.End()
	}
}

// errorClass names the class of a delivery error for error.type.
func errorClass(err error) string {
	return strings.ReplaceAll(dispatch.ErrorStatus(err).String(), " ", "_")
}

// redactURL is a URL for a span: its query's values could be secrets.
func redactURL(u *url.URL) string {
	c := *u
	if c.RawQuery != "" {
		q := c.Query()
		for k := range q {
			q[k] = []string{"REDACTED"}
		}
		c.RawQuery = q.Encode()
	}
	c.User = nil
	return c.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// attempted makes the CONSUMER span of a delivery attempt, from the
// runtime's report: the child of the event's create span, with the span id
// its request named as its parent, timed as the attempt ran.
func (t *tracing) attempted(d deliveryAttempt) {
	parent, sc := t.attemptIdentity(d.Trace, d.EventID, d.ID, d.Attempt, d.DestinationID)
	ctx := context.WithValue(context.Background(), fixedIDsKey{}, fixedIDs{trace: sc.TraceID(), span: sc.SpanID()})
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	attrs := []attribute.KeyValue{semconv.MessagingSystemKey.String("fanout"), semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("deliver"), semconv.MessagingDestinationName(d.DestinationID),
		semconv.MessagingMessageID(d.EventID), attribute.String("fanout.delivery.id", d.ID),
		attribute.Int("fanout.delivery.attempt", d.Attempt), attribute.String("fanout.delivery.outcome", d.Outcome)}
	if d.Status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(d.Status))
	}
	if d.ErrorClass != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(d.ErrorClass))
	}
	end := d.Started.Add(d.Duration)
	if d.Outcome == outcomeRetried {
		attrs = append(attrs, attribute.Float64("fanout.delivery.retry_delay", d.RetryAt.Sub(end).Seconds()),
			attribute.String("fanout.delivery.retry_at", d.RetryAt.UTC().Format(time.RFC3339Nano)))
	}
	_, span := t.tracer.Start(ctx, "deliver "+d.DestinationID, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithTimestamp(d.Started), trace.WithAttributes(attrs...))
	if d.Outcome != outcomeDone {
		msg := d.Outcome
		if d.Err != nil {
			msg = truncate(d.Err.Error(), 256)
		}
		span.SetStatus(codes.Error, msg)
	}
	span.End(trace.WithTimestamp(end))
}

// idGenerator is the SDK's random one, but for a span started with
// fixedIDs in its context: an attempt's span, whose ids are derived.
type idGenerator struct{}

type fixedIDsKey struct{}

type fixedIDs struct {
	trace trace.TraceID
	span  trace.SpanID
}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if f, ok := ctx.Value(fixedIDsKey{}).(fixedIDs); ok && f.trace.IsValid() && f.span.IsValid() {
		return f.trace, f.span
	}
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, randomSpanID()
}

func (idGenerator) NewSpanID(ctx context.Context, _ trace.TraceID) trace.SpanID {
	if f, ok := ctx.Value(fixedIDsKey{}).(fixedIDs); ok && f.span.IsValid() {
		return f.span
	}
	return randomSpanID()
}

func randomSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
