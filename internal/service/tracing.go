package service

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/webhook"
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
type Tracing struct {
	tp      *sdktrace.TracerProvider
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
	Sampler sdktrace.Sampler
}

// --- spans of the HTTP API ---

// maxTracestate is the longest tracestate a request may hand on, in bytes:
// the W3C spec's 32 entries of a usual size fit in it.
const maxTracestate = 512

// serve makes a SERVER span of each request but probes and scrapes, the
// child of the traceparent the client sent, if any.
func (t *Tracing) serve(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics", "/healthz", "/readyz":
			next.ServeHTTP(w, r)
			return
		}
		if ts := r.Header.Values("tracestate"); len(ts) > 0 && len(strings.Join(ts, ",")) > maxTracestate {
			// Carried into every delivery of the request's events: a
			// producer's 8 KB would be sent to each destination. The W3C
			// spec lets a vendor drop tracestate it cannot keep whole.
			r.Header.Del("tracestate")
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
	t      *Tracing
	ctx    context.Context
	spans  []trace.Span
	single trace.Span // the request's span, for a request of one event
}

func (t *Tracing) startCreate(ctx context.Context, n int) *createSpans {
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

// traceMetaBinary is the first byte of a Meta in the compact form
// encodeTraceMeta writes; the JSON form stored before starts with '{'.
const traceMetaBinary = 1

// encodeTraceMeta writes a span context as a Call.Meta, nil when it is not
// valid: a version byte, the trace id (16 bytes), the span id (8), the
// sampled flag (1), then the tracestate as text when it has one: 26 bytes
// instead of the 71 of {"traceparent":"00-..."}, in the row of every event
// ingested while tracing is on.
func encodeTraceMeta(sc trace.SpanContext) []byte {
	if !sc.IsValid() {
		return nil
	}
	ts := sc.TraceState().String()
	b := make([]byte, 0, 26+len(ts))
	b = append(b, traceMetaBinary)
	tid, sid := sc.TraceID(), sc.SpanID()
	b = append(b, tid[:]...)
	b = append(b, sid[:]...)
	b = append(b, byte(sc.TraceFlags()&trace.FlagsSampled))
	return append(b, ts...)
}

// decodeTraceMeta reads a Call.Meta written by encodeTraceMeta, or in the
// JSON form of earlier versions: the span context it names, invalid when
// it names none (a Meta of another kind, an event stored while tracing was
// off).
func decodeTraceMeta(meta []byte) trace.SpanContext {
	if len(meta) == 0 {
		return trace.SpanContext{}
	}
	if meta[0] == traceMetaBinary {
		if len(meta) < 26 {
			return trace.SpanContext{}
		}
		cfg := trace.SpanContextConfig{TraceFlags: trace.TraceFlags(meta[25]) & trace.FlagsSampled, Remote: true}
		copy(cfg.TraceID[:], meta[1:17])
		copy(cfg.SpanID[:], meta[17:25])
		if len(meta) > 26 {
			ts, err := trace.ParseTraceState(string(meta[26:]))
			if err != nil {
				return trace.SpanContext{}
			}
			cfg.TraceState = ts
		}
		sc := trace.NewSpanContext(cfg)
		if !sc.IsValid() {
			return trace.SpanContext{}
		}
		return sc
	}
	var m traceMeta
	if json.Unmarshal(meta, &m) != nil || m.Traceparent == "" {
		return trace.SpanContext{}
	}
	carrier := propagation.MapCarrier{"traceparent": m.Traceparent}
	if m.Tracestate != "" {
		carrier["tracestate"] = m.Tracestate
	}
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
	// Only the sampled flag is kept, as encodeTraceMeta keeps it: flags
	// this version does not know (W3C level 2's random flag, found by
	// FuzzDecodeTraceMeta) would not survive the next write.
	return sc.WithTraceFlags(sc.TraceFlags() & trace.FlagsSampled)
}

// --- spans of deliveries ---

// AttemptIdentity is the span context of a delivery attempt's CONSUMER
// span, which the same inputs give wherever they are computed: the event's
// trace (or, for an event stored without one, a trace named after its id),
// a span id derived from the delivery's id and attempt, and the sampler's
// decision. parent is the event's create span, if it was stored.
func (t *Tracing) AttemptIdentity(meta []byte, eventID, deliveryID string, attempt int, destinationID string) (parent, sc trace.SpanContext) {
	parent = decodeTraceMeta(meta)
	traceID := parent.TraceID()
	if !parent.IsValid() {
		traceID = eventTraceID(eventID)
	}
	spanID := AttemptSpanID(deliveryID, attempt)
	ctx := context.Background()
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	res := t.Sampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: traceID,
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

// AttemptSpanID is the span id of a delivery's attempt.
func AttemptSpanID(deliveryID string, attempt int) trace.SpanID {
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
func (t *Tracing) startSend(ctx context.Context, d *destination.Destination, header http.Header) (http.Header, func(status int, err error)) {
	call, ok := dispatch.CallFromContext(ctx)
	if !ok {
		return header, func(int, error) {}
	}
	_, attempt := t.AttemptIdentity(call.Meta, call.ParentID, call.ID, call.Attempt, d.ID)
	ctx = trace.ContextWithRemoteSpanContext(ctx, attempt)
	attrs := []attribute.KeyValue{semconv.HTTPRequestMethodPost, attribute.String("fanout.destination.id", d.ID),
		attribute.Int("fanout.delivery.attempt", call.Attempt)}
	if u, err := url.Parse(d.URL); err == nil {
		attrs = append(attrs, semconv.URLFull(webhook.Redact(u)), semconv.ServerAddress(u.Hostname()))
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

// startPublish starts the PRODUCER span of a send to broker destination d,
// the child of the delivery attempt's span, and returns header with its
// traceparent added (the kinds carry it among the message's headers, so
// that a consumer can continue the trace) and the function that ends it
// with the send's error. It follows OpenTelemetry's messaging conventions:
// named "publish <kind>" (the kind is the low-cardinality part; the
// convention's "{operation} {destination}" would make a span name per
// queue), messaging.system the kind (the convention's well-known value
// where it has one: aws_sqs, gcp_pubsub...), messaging.destination.name
// the destination's target, which its kind writes without credentials.
func (t *Tracing) startPublish(ctx context.Context, d *destination.Destination, deliveryID string, header http.Header) (http.Header, func(err error)) {
	call, ok := dispatch.CallFromContext(ctx)
	if !ok {
		return header, func(error) {}
	}
	_, attempt := t.AttemptIdentity(call.Meta, call.ParentID, call.ID, call.Attempt, d.ID)
	ctx = trace.ContextWithRemoteSpanContext(ctx, attempt)
	attrs := []attribute.KeyValue{semconv.MessagingSystemKey.String(messagingSystem(d.Type)),
		semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("publish"),
		semconv.MessagingDestinationName(d.Target), semconv.MessagingMessageID(deliveryID),
		attribute.String("fanout.destination.id", d.ID), attribute.String("fanout.destination.type", d.Type),
		attribute.Int("fanout.delivery.attempt", call.Attempt)}
	ctx, span := t.tracer.Start(ctx, "publish "+d.Type, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	if header == nil {
		header = http.Header{}
	}
	t.prop.Inject(ctx, propagation.HeaderCarrier(header))
	return header, func(err error) {
		if err != nil {
			// A kind's errors carry no credential (sink.Redact).
			span.SetAttributes(semconv.ErrorTypeKey.String(errorClass(err)))
			span.SetStatus(codes.Error, truncate(err.Error(), 256))
		}
		span.End()
	}
}

// messagingSystem is messaging.system for a destination kind: the
// convention's well-known value where there is one, the kind's name
// otherwise.
func messagingSystem(kind string) string {
	switch kind {
	case "sqs":
		return semconv.MessagingSystemAWSSQS.Value.AsString()
	case "pubsub":
		return semconv.MessagingSystemGCPPubSub.Value.AsString()
	case "rabbitmq":
		return semconv.MessagingSystemRabbitMQ.Value.AsString()
	case "kafka":
		return semconv.MessagingSystemKafka.Value.AsString()
	}
	return kind
}

// errorClass names the class of a delivery error for error.type.
func errorClass(err error) string {
	return strings.ReplaceAll(dispatch.ErrorStatus(err).String(), " ", "_")
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
func (t *Tracing) attempted(d deliveryAttempt) {
	parent, sc := t.AttemptIdentity(d.Trace, d.EventID, d.ID, d.Attempt, d.DestinationID)
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
