package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// requestStats counts the API's answers by route and status class, for
// /metrics.
type requestStats struct {
	patterns []string                    // the routes' patterns, then "other"
	answers  map[string]*[5]atomic.Int64 // by pattern, by status class 1xx-5xx
}

// track makes room for the answers of each route.
func (s *requestStats) track(rs []route) {
	s.answers = make(map[string]*[5]atomic.Int64, len(rs)+1)
	for _, rt := range rs {
		s.patterns = append(s.patterns, rt.pattern)
	}
	s.patterns = append(s.patterns, "other")
	for _, p := range s.patterns {
		s.answers[p] = new([5]atomic.Int64)
	}
}

// count counts next's answers under the pattern the mux matched, which it
// leaves in r.Pattern; a request no route took (404, 405, 401) is "other".
// The map is read-only once built: no lock on the request path.
func (s *requestStats) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		counts := s.answers[r.Pattern]
		if counts == nil {
			counts = s.answers["other"]
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		if c := status/100 - 1; c >= 0 && c < 5 {
			counts[c].Add(1)
		}
	})
}

// handleMetrics writes the runtime's counters and each destination's state in
// the Prometheus text format. They are read from memory, but for the
// backlog, which a backlogCache counts in the background.
func handleMetrics(svc *service, requests *requestStats) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		metric := func(name, kind, help string) {
			fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
		}
		metric("fanout_http_requests_total", "counter", "Answers of the API by route and status class (route \"other\": no route took the request).")
		for _, p := range requests.patterns {
			for c := range requests.answers[p] {
				// 1xx and 3xx only once they happened (a redirect
				// to a cleaned path): the API answers neither.
				if n := requests.answers[p][c].Load(); n > 0 || c == 1 || c >= 3 {
					fmt.Fprintf(&b, "fanout_http_requests_total{route=%q,code=\"%dxx\"} %d\n", p, c+1, n)
				}
			}
		}
		metric("fanout_events_accepted_total", "counter", "Events in 2xx answers of /v1/event and /v1/batch (a repeat that was dropped counts too).")
		fmt.Fprintf(&b, "fanout_events_accepted_total %d\n", svc.accepted.Load())
		st := svc.rt.Stats()
		metric("fanout_attempts_total", "counter", "Attempts of calls (fan-outs and deliveries) by outcome.")
		fmt.Fprintf(&b, "fanout_attempts_total{outcome=\"done\"} %d\n", st.Done)
		fmt.Fprintf(&b, "fanout_attempts_total{outcome=\"retried\"} %d\n", st.Retried)
		fmt.Fprintf(&b, "fanout_attempts_total{outcome=\"failed\"} %d\n", st.Failed)
		metric("fanout_claimed_total", "counter", "Calls claimed from the store's backlog.")
		fmt.Fprintf(&b, "fanout_claimed_total %d\n", st.Claimed)
		metric("fanout_leased_on_create_total", "counter", "Calls run without a claim: leased as they were stored.")
		fmt.Fprintf(&b, "fanout_leased_on_create_total %d\n", st.LeasedOnCreate)
		if ss, ok := svc.StoreStats(); ok {
			metric("fanout_store_commits_total", "counter", "Group commits of the store's writer.")
			fmt.Fprintf(&b, "fanout_store_commits_total %d\n", ss.Commits)
			metric("fanout_store_operations_total", "counter", "Operations those commits carried.")
			fmt.Fprintf(&b, "fanout_store_operations_total %d\n", ss.Ops)
			metric("fanout_store_connection_waits_total", "counter", "Callers that waited for a PostgreSQL connection (0 on SQLite).")
			fmt.Fprintf(&b, "fanout_store_connection_waits_total %d\n", ss.ConnWaits)
		}
		metric("fanout_results_from_memory_total", "counter", "Resumed events that found their deliveries' results in memory (the rest read the store).")
		fmt.Fprintf(&b, "fanout_results_from_memory_total %d\n", st.ResultsFromMemory)
		dests := svc.dests.List()
		now := time.Now()
		// The backlog comes from the store, shared by every replica, and is
		// read at most every backlogMaxAge, in the background: a scrape
		// never waits on a slow count, and many scrapes cost one count.
		pending, at, err := svc.backlog.get(now)
		metric("fanout_store_up", "gauge", "1 if the last count of the backlog could read the store, else 0.")
		if err != nil || at.IsZero() {
			b.WriteString("fanout_store_up 0\n")
		} else {
			b.WriteString("fanout_store_up 1\n")
		}
		if !at.IsZero() {
			metric("fanout_destination_backlog", "gauge", "Deliveries to a destination waiting in the store (new ones and retries waiting for their time), over all replicas, as of fanout_backlog_age_seconds ago.")
			for _, d := range dests {
				fmt.Fprintf(&b, "fanout_destination_backlog{destination=%q} %d\n", d.ID, pending[d.ID])
			}
			metric("fanout_backlog_age_seconds", "gauge", "How old fanout_destination_backlog is: it grows when the store cannot be read or the count is slow.")
			fmt.Fprintf(&b, "fanout_backlog_age_seconds %.3f\n", time.Since(at).Seconds())
		}
		metric("fanout_destination_in_flight", "gauge", "Deliveries in flight to a destination in this process.")
		for _, d := range dests {
			fmt.Fprintf(&b, "fanout_destination_in_flight{destination=%q} %d\n", d.ID, svc.rt.KeyStatus(d.ID).InFlight)
		}
		metric("fanout_destination_concurrency_limit", "gauge", "The adaptive limit of deliveries in flight to a destination.")
		for _, d := range dests {
			fmt.Fprintf(&b, "fanout_destination_concurrency_limit{destination=%q} %g\n", d.ID, svc.rt.KeyStatus(d.ID).Limit)
		}
		metric("fanout_destination_failures_in_a_row", "gauge", "Failed attempts in a row to a destination (the circuit breaker's count).")
		for _, d := range dests {
			fmt.Fprintf(&b, "fanout_destination_failures_in_a_row{destination=%q} %d\n", d.ID, svc.rt.KeyStatus(d.ID).Failures)
		}
		metric("fanout_destination_paused", "gauge", "1 if a destination's deliveries are held back (disabled, paused, or its breaker open).")
		for _, d := range dests {
			paused := 0
			if d.PausedAt(now) {
				paused = 1
			}
			fmt.Fprintf(&b, "fanout_destination_paused{destination=%q} %d\n", d.ID, paused)
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, b.String())
	})
}
