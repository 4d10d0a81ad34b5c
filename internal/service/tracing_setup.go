package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// TraceSettings is what turns tracing on and configures it: flags, then
// the OTEL_* environment, read through run's getenv.
type TraceSettings struct {
	Endpoint    string // the traces endpoint URL
	Grpc        bool   // OTLP over gRPC, not HTTP
	Headers     map[string]string
	Timeout     time.Duration
	Compression string // "gzip" or "none"
	sampler     sdktrace.Sampler
	Propagators []propagation.TextMapPropagator
	Resource    []attribute.KeyValue
	Bsp         []sdktrace.BatchSpanProcessorOption
	// exporter replaces the OTLP exporter (tests: an in-memory one, whose
	// spans are then exported as they end).
	exporter sdktrace.SpanExporter
	// version is fanout's, for service.version and the tracer.
	version string
}

// TraceOptions is what fanout's own flags say of tracing; the OTEL_*
// environment says the rest.
type TraceOptions struct {
	Endpoint, Protocol string // --otlp-endpoint, --otlp-protocol
	Version            string // fanout's
	// Exporter, set by tests only, replaces the OTLP exporter.
	Exporter sdktrace.SpanExporter
}

// TraceSettingsFrom reads the tracing settings; nil when tracing is off.
// The flag --otlp-endpoint turns it on; so do OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_TRACES_EXPORTER=otlp, unless
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
func TraceSettingsFrom(cfg TraceOptions, getenv func(string) string) (*TraceSettings, error) {
	env := func(name string) string { return strings.TrimSpace(getenv(name)) }
	// A signal-specific variable wins over the generic one.
	otlp := func(name string) string {
		return cmp.Or(env("OTEL_EXPORTER_OTLP_TRACES_"+name), env("OTEL_EXPORTER_OTLP_"+name))
	}
	exporter := strings.ToLower(env("OTEL_TRACES_EXPORTER"))
	switch {
	case cfg.Endpoint != "":
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
	s := &TraceSettings{Compression: "none", Timeout: 10 * time.Second, exporter: cfg.Exporter, version: cfg.Version}

	protocol := cmp.Or(cfg.Protocol, otlp("PROTOCOL"), "http/protobuf")
	switch protocol {
	case "http/protobuf":
	case "grpc":
		s.Grpc = true
	default:
		return nil, fmt.Errorf("OTLP protocol %q (--otlp-protocol, OTEL_EXPORTER_OTLP_PROTOCOL): fanout speaks http/protobuf or grpc", protocol)
	}
	var err error
	if s.Endpoint, err = traceEndpoint(cfg.Endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
		env("OTEL_EXPORTER_OTLP_ENDPOINT"), s.Grpc); err != nil {
		return nil, err
	}
	if h := otlp("HEADERS"); h != "" {
		kv, err := parseKeyValues(h)
		if err != nil {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_HEADERS: %w", err)
		}
		s.Headers = map[string]string{}
		for _, p := range kv {
			s.Headers[p[0]] = p[1]
		}
	}
	if v := otlp("TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_TIMEOUT=%q: want a positive number of milliseconds", v)
		}
		s.Timeout = time.Duration(ms) * time.Millisecond
	}
	if v := strings.ToLower(otlp("COMPRESSION")); v != "" {
		if v != "gzip" && v != "none" {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_COMPRESSION=%q: want gzip or none", v)
		}
		s.Compression = v
	}
	if s.sampler, err = samplerFrom(env("OTEL_TRACES_SAMPLER"), env("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		return nil, err
	}
	if s.Propagators, err = propagatorsFrom(env("OTEL_PROPAGATORS")); err != nil {
		return nil, err
	}
	if s.Resource, err = resourceFrom(env("OTEL_SERVICE_NAME"), env("OTEL_RESOURCE_ATTRIBUTES"), cfg.Version); err != nil {
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
			s.Bsp = append(s.Bsp, b.opt(n))
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
func resourceFrom(serviceName, attrs, version string) ([]attribute.KeyValue, error) {
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

// NewTracing starts the tracer provider and its exporter.
func NewTracing(ctx context.Context, s *TraceSettings, log *slog.Logger) (*Tracing, error) {
	exp := s.exporter
	var processor sdktrace.SpanProcessor
	if exp != nil {
		processor = sdktrace.NewSimpleSpanProcessor(exp)
	} else {
		var err error
		if s.Grpc {
			opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(s.Endpoint), otlptracegrpc.WithTimeout(s.Timeout)}
			if s.Headers != nil {
				opts = append(opts, otlptracegrpc.WithHeaders(s.Headers))
			}
			if s.Compression == "gzip" {
				opts = append(opts, otlptracegrpc.WithCompressor("gzip"))
			}
			exp, err = otlptracegrpc.New(ctx, opts...)
		} else {
			opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(s.Endpoint), otlptracehttp.WithTimeout(s.Timeout)}
			if s.Headers != nil {
				opts = append(opts, otlptracehttp.WithHeaders(s.Headers))
			}
			if s.Compression == "gzip" {
				opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
			} else {
				opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.NoCompression))
			}
			exp, err = otlptracehttp.New(ctx, opts...)
		}
		if err != nil {
			return nil, fmt.Errorf("start the OTLP trace exporter: %w", err)
		}
		processor = sdktrace.NewBatchSpanProcessor(&loggedExporter{SpanExporter: exp, log: log, endpoint: s.Endpoint}, s.Bsp...)
	}
	res, err := resource.New(ctx, resource.WithSchemaURL(semconv.SchemaURL), resource.WithTelemetrySDK(),
		resource.WithAttributes(s.Resource...))
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("describe the process for traces: %w", err)
	}
	sampler := s.sampler
	if sampler == nil {
		sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(processor), sdktrace.WithSampler(sampler),
		sdktrace.WithResource(res), sdktrace.WithIDGenerator(idGenerator{}))
	props := s.Propagators
	if props == nil {
		props = []propagation.TextMapPropagator{propagation.TraceContext{}, propagation.Baggage{}}
	}
	return &Tracing{tp: tp, tracer: tp.Tracer("fanout", trace.WithInstrumentationVersion(s.version)),
		prop: propagation.NewCompositeTextMapPropagator(props...), Sampler: sampler}, nil
}

// Shutdown exports the spans still queued, until ctx ends.
func (t *Tracing) Shutdown(ctx context.Context) error {
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
