package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
)

func TestMetrics(t *testing.T) {
	t.Parallel()
	svc := newTestAPI(t)
	d := &destination.Destination{URL: "https://example.com", Enabled: true}
	if err := svc.svc.Dests.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	// Three deliveries waiting for the destination, one of them a retry
	// later on.
	var calls []*dispatch.Call
	for i, after := range []time.Duration{0, 0, time.Hour} {
		calls = append(calls, &dispatch.Call{ID: fmt.Sprintf("delivery-%d", i), Function: "publishEvent", Key: d.ID,
			Input: []byte(`{}`), RunAfter: time.Now().Add(after), CreatedAt: time.Now()})
	}
	if _, err := svc.store.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	// Answers by route and status class, and the events accepted.
	svc.do(t, "POST", "/v1/event", `{"a":1}`)
	svc.do(t, "POST", "/v1/event", `{"a":`)
	svc.do(t, "POST", "/v1/batch", `[{},{}]`)
	svc.do(t, "GET", "/v1/nowhere", "")
	w := svc.do(t, "GET", "/metrics", "")
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	for _, want := range []string{`fanout_attempts_total{outcome="done"} 0`, "fanout_store_commits_total",
		`fanout_destination_paused{destination="dst_`, "# TYPE fanout_destination_in_flight gauge",
		"fanout_store_up 1", fmt.Sprintf("fanout_destination_backlog{destination=%q} 3", d.ID),
		`fanout_http_requests_total{code="2xx",route="POST /v1/event"} 1`, `fanout_http_requests_total{code="4xx",route="POST /v1/event"} 1`,
		`fanout_http_requests_total{code="2xx",route="POST /v1/batch"} 1`, `fanout_http_requests_total{code="4xx",route="other"} 1`,
		`fanout_http_requests_total{code="5xx",route="GET /metrics"} 0`, "fanout_events_accepted_total 3",
		`fanout_ingest_duration_seconds_count{code="2xx",route="POST /v1/event"} 1`, "fanout_ingest_batch_events_count 1",
		"fanout_ingest_batch_events_sum 2", "fanout_store_commit_operations_count ", "fanout_store_commit_duration_seconds_bucket",
		"go_goroutines ", "process_resident_memory_bytes ", "fanout_build_info{version="} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, w.Body)
		}
	}
	// A store that cannot be read: the scrape still answers, with the last
	// count and its age, and says so. The next count is due at once.
	if err := svc.store.(*dispatchsqlite.Store).Close(); err != nil {
		t.Fatal(err)
	}
	svc.svc.Backlog.MaxAge = 0
	eventually(t, "fanout_store_up 0 after the store closed", 5*time.Second, func() bool {
		w = svc.do(t, "GET", "/metrics", "")
		return w.Code == 200 && strings.Contains(w.Body.String(), "fanout_store_up 0")
	})
	for _, want := range []string{fmt.Sprintf("fanout_destination_backlog{destination=%q} 3", d.ID), "fanout_backlog_age_seconds "} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("metrics on a closed store lack the last count %q:\n%s", want, w.Body)
		}
	}
}

// TestMetrics_Lint scrapes a running fanout that ingested and delivered,
// and lints what it serves with client_golang's promlint, and with
// Prometheus's own promtool when it is installed (Debian: prometheus). It
// also checks that a scraper that asks for protobuf gets native histograms.
func TestMetrics_Lint(t *testing.T) {
	t.Parallel()
	dest := newReceiver(t)
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--destination", dest.URL}, nil)
	code, body := post(t, base+"/v1/event", `{"type":"order.paid"}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST /v1/event: %d %s", code, body)
	}
	if code, body := post(t, base+"/v1/batch", `[{"a":1},{"a":2}]`); code != http.StatusAccepted {
		t.Fatalf("POST /v1/batch: %d %s", code, body)
	}
	var id struct{ ID string }
	_ = json.Unmarshal(body, &id)
	eventually(t, "the event delivered", 10*time.Second, func() bool { _, ok := dest.has(id.ID); return ok })

	var text []byte
	eventually(t, "the delivery measured", 10*time.Second, func() bool {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		text, _ = io.ReadAll(resp.Body)
		return strings.Contains(string(text), "fanout_delivery_latency_seconds_count{destination=")
	})
	for _, want := range []string{"fanout_delivery_first_attempt_delay_seconds_bucket{destination=",
		`fanout_delivery_attempt_duration_seconds_count{destination="`, `outcome="done"} `,
		`fanout_ingest_duration_seconds_bucket{code="2xx",route="POST /v1/batch",le="0.0001"}`,
		`fanout_ingest_duration_seconds_bucket{code="2xx",route="POST /v1/event",le="3600"}`,
		"fanout_store_commit_operations_bucket{le=", "fanout_store_commit_duration_seconds_count ", "fanout_ready 1",
		"go_gc_duration_seconds", "process_cpu_seconds_total", `fanout_operational_events_total{type="fanout.deliveries.failed"} 0`} {
		if !strings.Contains(string(text), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(string(text), `code="3xx"`) || strings.Contains(string(text), `code="1xx"`) {
		t.Errorf("metrics show status classes that never happened")
	}
	problems, err := promlint.New(bytes.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool is not installed (Debian: apt-get install prometheus): promlint only")
	}

	// A scraper that asks for protobuf gets the native histograms too.
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	native := map[string]bool{}
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			if err != io.EOF {
				t.Fatalf("decode the protobuf scrape: %v", err)
			}
			break
		}
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h != nil && h.Schema != nil && len(h.GetBucket()) > 0 {
				native[mf.GetName()] = true
			}
		}
	}
	for _, name := range []string{"fanout_delivery_latency_seconds", "fanout_ingest_duration_seconds",
		"fanout_delivery_attempt_duration_seconds", "fanout_store_commit_duration_seconds"} {
		if !native[name] {
			t.Errorf("%s is not a native histogram with classic buckets in the protobuf scrape (native: %v)", name, native)
		}
	}
}

// TestREADME_AlertRules checks the sample alert rules of README.md with
// promtool check rules, when promtool is installed.
func TestREADME_AlertRules(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian: apt-get install prometheus)")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```yaml\ngroups:\n")
	rules, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("README.md has no alert rules (a yaml block that starts with groups:)")
	}
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, []byte("groups:\n"+rules), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}
