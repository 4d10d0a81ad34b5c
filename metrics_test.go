package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
)

func TestMetrics(t *testing.T) {
	t.Parallel()
	svc := newTestAPI(t)
	d := &destination.Destination{URL: "https://example.com", Enabled: true}
	if err := svc.svc.dests.Create(context.Background(), d); err != nil {
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
		`fanout_http_requests_total{route="POST /v1/event",code="2xx"} 1`, `fanout_http_requests_total{route="POST /v1/event",code="4xx"} 1`,
		`fanout_http_requests_total{route="POST /v1/batch",code="2xx"} 1`, `fanout_http_requests_total{route="other",code="4xx"} 1`,
		`fanout_http_requests_total{route="GET /metrics",code="5xx"} 0`, "fanout_events_accepted_total 3"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, w.Body)
		}
	}
	// A store that cannot be read: the scrape still answers, with the last
	// count and its age, and says so. The next count is due at once.
	if err := svc.store.(*dispatchsqlite.Store).Close(); err != nil {
		t.Fatal(err)
	}
	svc.svc.backlog.maxAge = 0
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
