package replicatest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"fanout/internal/otlptest"
	"fanout/internal/pgtest"
	"fanout/internal/proctest"
)

// readyz returns the status of GET /readyz and its reason.
func readyz(t testing.TB, base string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	var v struct {
		Reason string `json:"reason"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v.Reason
}

// TestReadiness_DatabaseOutage: a replica that lost its database is not
// ready (a load balancer takes it out of rotation) but alive (a supervisor
// leaves it be: restarting it would not bring the database back), and is
// ready again by itself once the database is back.
func TestReadiness_DatabaseOutage(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{pgtest.Refuse, pgtest.Blackhole} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			proxy := pgtest.StartProxy(t, pgtest.NewURL(t))
			r := startReplica(t, "replica", fanoutArgs(t, proxy.URL, nil, "--ingest-timeout", "3s"))
			if code, reason := readyz(t, r.URL); code != http.StatusOK {
				t.Fatalf("/readyz %d (%s) with the database up", code, reason)
			}
			proxy.Set(mode)
			deadline := time.Now().Add(20 * time.Second)
			for {
				code, reason := readyz(t, r.URL)
				if code == http.StatusServiceUnavailable && strings.Contains(reason, "store") {
					t.Logf("not ready: %s", reason)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("/readyz still %d (%s) 20s into the outage", code, reason)
				}
				time.Sleep(100 * time.Millisecond)
			}
			resp, err := http.Get(r.URL + "/healthz")
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz during the outage: %v %v", resp, err)
			}
			resp.Body.Close()
			proxy.Set(pgtest.Forward)
			deadline = time.Now().Add(30 * time.Second)
			for {
				code, reason := readyz(t, r.URL)
				if code == http.StatusOK {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("/readyz still %d (%s) 30s after the database came back", code, reason)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// TestTracing_AcrossReplicas: an event ingested by one replica, whose
// delivery that replica's attempts could not make, is delivered by another
// replica after the first stopped: the attempt there is a child of the
// event's ingest span, made by the first, in the trace the client started.
func TestTracing_AcrossReplicas(t *testing.T) {
	t.Parallel()
	collector := otlptest.Start(t)
	var mu sync.Mutex
	failing := true
	var parents []string
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		defer mu.Unlock()
		parents = append(parents, r.Header.Get("traceparent"))
		if failing {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(dest.Close)
	db := pgtest.NewURL(t)
	start := func(name string) *replica {
		cmd := exec.Command(fanoutBin, fanoutArgs(t, db, []string{dest.URL}, "--retry-initial", "100ms", "--retry-max", "300ms")...)
		cmd.Env = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL, "OTEL_BSP_SCHEDULE_DELAY=20"}
		r := &replica{Proc: proctest.Start(t, name, cmd)}
		r.WaitListening(t, 30*time.Second)
		return r
	}
	a := start("replica-a")
	const clientTrace = "6bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest("POST", a.URL+"/v1/event", strings.NewReader(`{"type":"x"}`))
	req.Header.Set("traceparent", "00-"+clientTrace+"-20f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST to replica a: %v %v", resp, err)
	}
	resp.Body.Close()
	attempts := func(outcome string) []otlptest.Span {
		var out []otlptest.Span
		for _, s := range collector.Trace(clientTrace) {
			if s.Kind == tracepb.Span_SPAN_KIND_CONSUMER && (outcome == "" || s.Attributes["fanout.delivery.outcome"] == outcome) {
				out = append(out, s)
			}
		}
		return out
	}
	for deadline := time.Now().Add(20 * time.Second); len(attempts("retried")) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no failed attempt exported by replica a")
		}
	}
	a.stop(t) // hands its calls back; its spans are flushed
	b := start("replica-b")
	mu.Lock()
	failing = false
	mu.Unlock()
	for deadline := time.Now().Add(30 * time.Second); len(attempts("done")) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("replica b did not deliver (or export its attempt) within 30s")
		}
	}
	b.stop(t)

	var create otlptest.Span // a single event's creation context: its ingest span
	for _, s := range collector.Trace(clientTrace) {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			create = s
		}
	}
	done := attempts("done")[0]
	if create.SpanID == "" || done.ParentSpanID != create.SpanID {
		t.Fatalf("the delivering attempt is under %q, want the ingest span %q", done.ParentSpanID, create.SpanID)
	}
	if done.Resource["service.instance.id"] == create.Resource["service.instance.id"] {
		t.Fatalf("the event was ingested and delivered by the same process (%s)", done.Resource["service.instance.id"])
	}
	for _, at := range attempts("") {
		if at.ParentSpanID != create.SpanID {
			t.Errorf("attempt %s under %q, want %q", at.Attributes["fanout.delivery.attempt"], at.ParentSpanID, create.SpanID)
		}
	}
}
