package service

import (
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func TestTraceMeta(t *testing.T) {
	t.Parallel()
	ts, _ := trace.ParseTraceState("vendor=abc")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5},
		TraceFlags: trace.FlagsSampled, TraceState: ts})
	meta := encodeTraceMeta(sc)
	if len(meta) != 26+len("vendor=abc") || meta[0] != traceMetaBinary {
		t.Fatalf("meta %x: want the compact form, 36 bytes", meta)
	}
	// The JSON form that earlier versions stored still reads the same.
	old := []byte(`{"traceparent":"00-01020300000000000000000000000000-0405000000000000-01","tracestate":"vendor=abc"}`)
	for _, m := range [][]byte{meta, old} {
		got := decodeTraceMeta(m)
		if got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsSampled() || got.TraceState().Get("vendor") != "abc" || !got.IsRemote() {
			t.Fatalf("decoded %s as %+v, want %+v", m, got, sc)
		}
	}
	for _, bad := range []string{"", "\x01", "\x01short", "{}", "null", `{"traceparent":"00-0-0-01"}`, `{"traceparent":"garbage"}`, `[1]`, `{"tag":"x"}`} {
		if decodeTraceMeta([]byte(bad)).IsValid() {
			t.Errorf("decodeTraceMeta(%s) is valid", bad)
		}
	}
	if encodeTraceMeta(trace.SpanContext{}) != nil {
		t.Error("an invalid span context is stored")
	}
}

// FuzzDecodeTraceMeta: whatever a Meta holds, decoding it does not panic,
// and what it decodes round-trips.
func FuzzDecodeTraceMeta(f *testing.F) {
	f.Add([]byte(`{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"a=b"}`))
	f.Add([]byte(`{"traceparent":"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`))
	f.Add([]byte(`{"traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, meta []byte) {
		sc := decodeTraceMeta(meta)
		if !sc.IsValid() {
			return
		}
		again := decodeTraceMeta(encodeTraceMeta(sc))
		if again.TraceID() != sc.TraceID() || again.SpanID() != sc.SpanID() || again.TraceFlags() != sc.TraceFlags() {
			t.Fatalf("%s decodes to %v, which round-trips to %v", meta, sc, again)
		}
	})
}

// FuzzParseKeyValues: the lists of OTEL_RESOURCE_ATTRIBUTES and
// OTEL_EXPORTER_OTLP_HEADERS never panic, and what parses has keys.
func FuzzParseKeyValues(f *testing.F) {
	for _, s := range []string{"a=b,c=d", "k=%20v", "=x", "a", "a=b=c", " , ", "k=%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kv, err := parseKeyValues(s)
		if err != nil {
			return
		}
		for _, p := range kv {
			if p[0] == "" || strings.TrimSpace(p[0]) != p[0] {
				t.Fatalf("%q: key %q", s, p[0])
			}
		}
	})
}

// TestAttemptIdentity: the attempt's span context is the same wherever it
// is computed, follows the event's sampling, and falls back to a trace
// named after the event when it has no stored context.
func TestAttemptIdentity(t *testing.T) {
	t.Parallel()
	tr := &Tracing{Sampler: sdktrace.ParentBased(sdktrace.AlwaysSample())}
	const event = "01a21f4d-fc58-7a16-94d8-32106577de72"
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{8}, TraceFlags: trace.FlagsSampled})
	meta := encodeTraceMeta(parent)
	p1, a1 := tr.AttemptIdentity(meta, event, event+".0.0", 3, "dst_x")
	_, a2 := tr.AttemptIdentity(meta, event, event+".0.0", 3, "dst_x")
	_, other := tr.AttemptIdentity(meta, event, event+".0.0", 4, "dst_x")
	if !a1.Equal(a2) || a1.SpanID() == other.SpanID() || p1.SpanID() != parent.SpanID() || a1.TraceID() != parent.TraceID() || !a1.IsSampled() {
		t.Errorf("%v, %v, %v (parent %v)", a1, a2, other, p1)
	}
	_, root := tr.AttemptIdentity(nil, event, event+".0.0", 1, "dst_x")
	if root.TraceID().String() != strings.ReplaceAll(event, "-", "") || !root.IsSampled() {
		t.Errorf("without stored context, trace %v, want the event's id", root.TraceID())
	}
	unsampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{8}})
	if _, a := tr.AttemptIdentity(encodeTraceMeta(unsampled), event, event+".0.0", 1, "dst_x"); a.IsSampled() {
		t.Error("an attempt of an unsampled event is sampled")
	}
}
