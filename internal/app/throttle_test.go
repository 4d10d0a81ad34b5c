package app

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRun_Throttle drives rate_limit through run(): both its shapes in and
// out, refusals that name the problem and store nothing, a throttled
// destination that receives no faster than its throttle while another gets
// its events at once, and the metrics and stats that show what waits.
func TestRun_Throttle(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)

	for _, tc := range []struct{ body, want string }{
		{`{"url":"http://127.0.0.1:9/a","rate_limit":{"rate":5,"per":"day"}}`, `rate_limit.per \"day\" must be \"second\", \"minute\" or \"hour\"`},
		{`{"url":"http://127.0.0.1:9/a","rate_limit":{"rate":5,"burts":2}}`, `unknown field \"burts\"`},
		{`{"url":"http://127.0.0.1:9/a","rate_limit":{"rate":-5}}`, `rate_limit.rate must be between 0`},
		{`{"url":"http://127.0.0.1:9/a","rate_limit":{"burst":3}}`, `rate_limit.rate is required`},
		{`{"url":"http://127.0.0.1:9/a","rate_limit":"fast"}`, `rate_limit must be a number`},
	} {
		code, b, _ := rawCall(t, "POST", base+"/v1/destinations", tc.body)
		if code != 400 || !strings.Contains(string(b), tc.want) {
			t.Errorf("POST %s: %d %s, want 400 saying %s", tc.body, code, b, tc.want)
		}
	}
	var list struct{ Destinations []json.RawMessage }
	if code := call(t, "GET", base+"/v1/destinations", nil, &list); code != 200 || len(list.Destinations) != 0 {
		t.Fatalf("after refusals: %d, %d destinations stored", code, len(list.Destinations))
	}

	// The old shape: a number per second, answered as a number.
	var old struct {
		ID        string          `json:"id"`
		RateLimit json.RawMessage `json:"rate_limit"`
	}
	if code := call(t, "POST", base+"/v1/destinations", `{"url":"http://127.0.0.1:9/old","rate_limit":2.5,"enabled":false}`, &old); code != 201 || string(old.RateLimit) != "2.5" {
		t.Fatalf("create with rate_limit 2.5: %d, answered %s", code, old.RateLimit)
	}

	// 5 a second, a burst of 2, beside a destination without a throttle.
	var mu sync.Mutex
	var arrivals []time.Time
	slow := newCountingServer(t, func() { mu.Lock(); arrivals = append(arrivals, time.Now()); mu.Unlock() })
	fast := newReceiver(t)
	var th struct {
		ID        string          `json:"id"`
		RateLimit json.RawMessage `json:"rate_limit"`
	}
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": slow.URL + "/slow", "filter": []string{"t.*"},
		"rate_limit": map[string]any{"rate": 300, "per": "minute", "burst": 2}}, &th); code != 201 ||
		string(th.RateLimit) != `{"rate":300,"per":"minute","burst":2}` {
		t.Fatalf("create the throttled destination: %d, rate_limit %s", code, th.RateLimit)
	}
	var other struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": fast.URL + "/fast", "filter": []string{"t.*"}}, &other); code != 201 {
		t.Fatalf("create the other destination: %d", code)
	}
	var got struct {
		RateLimit json.RawMessage `json:"rate_limit"`
	}
	if code := call(t, "GET", base+"/v1/destinations/"+th.ID, nil, &got); code != 200 || string(got.RateLimit) != `{"rate":300,"per":"minute","burst":2}` {
		t.Fatalf("GET the throttled destination: %d, rate_limit %s", code, got.RateLimit)
	}

	const n = 30
	events := make([]string, n)
	for i := range events {
		events[i] = fmt.Sprintf(`{"type":"t.x","n":%d}`, i)
	}
	begin := time.Now()
	if code, b := post(t, base+"/v1/batch", "["+strings.Join(events, ",")+"]"); code != 202 {
		t.Fatalf("POST /v1/batch: %d %s", code, b)
	}
	// The other destination is not held back by the throttled one.
	eventually(t, "the unthrottled destination to get all 30 events", 10*time.Second, func() bool { return len(fast.bodies()) == n })
	fastDone := time.Since(begin)

	// While events wait on the throttle, the metrics and the stats say so.
	eventually(t, "the metrics to show deliveries waiting on the throttle", 10*time.Second, func() bool {
		return metricValue(t, base, `fanout_destination_throttled{destination="`+th.ID+`"}`) > 0
	})
	if v := metricValue(t, base, `fanout_destination_throttle_rate{destination="`+th.ID+`"}`); v != 5 {
		t.Errorf("fanout_destination_throttle_rate = %g, want 5", v)
	}
	var stats struct {
		Destinations []struct {
			ID        string `json:"id"`
			Throttled int64  `json:"throttled"`
		} `json:"destinations"`
	}
	call(t, "GET", base+"/v1/stats", nil, &stats)
	for _, d := range stats.Destinations {
		if d.ID == other.ID && d.Throttled != 0 {
			t.Errorf("stats: the unthrottled destination has %d waiting on a throttle", d.Throttled)
		}
	}

	eventually(t, "the throttled destination to get all 30 events", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(arrivals) == n
	})
	mu.Lock()
	elapsed := arrivals[n-1].Sub(begin)
	mu.Unlock()
	// 2 at once, then 5 a second: the 30th no sooner than 28/5 s after
	// the first (a process holds at most a chunk, rate×100ms, ahead).
	if min := time.Duration(float64(n-2-1) / 5 * float64(time.Second)); elapsed < min {
		t.Fatalf("the throttled destination got %d events in %v, faster than 5/s with a burst of 2 (%v at least)", n, elapsed, min)
	}
	if fastDone > elapsed/2 {
		t.Errorf("the unthrottled destination took %v, the throttled one %v: it was held back", fastDone, elapsed)
	}
	eventually(t, "fanout_destination_throttled back to 0 with nothing left", 15*time.Second, func() bool {
		return metricValue(t, base, `fanout_destination_throttled{destination="`+th.ID+`"}`) == 0
	})
}

// newCountingServer answers 204 and calls arrived for each request.
func newCountingServer(t *testing.T, arrived func()) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		arrived()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.Close)
	return s
}

// metricValue reads one series of /metrics, -1 if it is absent.
func metricValue(t *testing.T, base, series string) float64 {
	t.Helper()
	code, b, _ := rawCall(t, "GET", base+"/metrics", nil)
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("%s: %v", series, err)
	}
	return v
}
