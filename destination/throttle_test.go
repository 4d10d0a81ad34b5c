package destination_test

import (
	"encoding/json"
	"strings"
	"testing"

	"fanout/destination"
)

// TestThrottle_JSON reads rate_limit in both its shapes, writes back a
// plain number for a per-second throttle with the default burst (a store
// or client of before units reads it as it did), and refuses what it cannot
// read with a message that names the problem.
func TestThrottle_JSON(t *testing.T) {
	for _, tc := range []struct {
		in        string
		perSecond float64
		burst     int
		out       string
		err       string // substring of the refusal, from decoding or Validate
	}{
		{in: `2.5`, perSecond: 2.5, burst: 2, out: `2.5`},
		{in: `0.5`, perSecond: 0.5, burst: 1, out: `0.5`},
		{in: `{"rate":50}`, perSecond: 50, burst: 50, out: `50`},
		{in: `{"rate":50,"per":"second"}`, perSecond: 50, burst: 50, out: `50`},
		{in: `{"rate":100,"per":"minute","burst":10}`, perSecond: 100.0 / 60, burst: 10, out: `{"rate":100,"per":"minute","burst":10}`},
		{in: `{"rate":3600,"per":"hour"}`, perSecond: 1, burst: 1, out: `{"rate":3600,"per":"hour"}`},
		{in: `{"rate":20,"burst":5}`, perSecond: 20, burst: 5, out: `{"rate":20,"per":"second","burst":5}`},
		{in: `null`, out: ``},
		{in: `{"rate":1,"per":"day"}`, err: `rate_limit.per "day" must be "second", "minute" or "hour"`},
		{in: `{"rate":1,"burts":2}`, err: `unknown field "burts"`},
		{in: `{"rate":-1}`, err: "rate_limit.rate must be between 0"},
		{in: `-3`, err: "rate_limit.rate must be between 0"},
		{in: `{"rate":2e6,"per":"hour"}`, err: "rate_limit.rate must be between 0"},
		{in: `{"rate":1,"burst":-1}`, err: "rate_limit.burst must be between 0"},
		{in: `{"rate":1,"burst":2000000}`, err: "rate_limit.burst must be between 0"},
		{in: `{"per":"minute"}`, err: "rate_limit.rate is required"},
		{in: `{"rate":1e-9,"per":"hour"}`, err: "below one delivery a day"},
		{in: `"fast"`, err: "rate_limit must be a number"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			d := destination.Destination{URL: "https://example.com/h"}
			err := json.Unmarshal([]byte(`{"url":"https://example.com/h","rate_limit":`+tc.in+`}`), &d)
			if err == nil {
				err = d.Validate(nil)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := d.RateLimit.PerSecond(); got != tc.perSecond {
				t.Errorf("PerSecond = %g, want %g", got, tc.perSecond)
			}
			if tc.perSecond > 0 && d.RateLimit.BurstOrDefault() != tc.burst {
				t.Errorf("burst = %d, want %d", d.RateLimit.BurstOrDefault(), tc.burst)
			}
			b, _ := json.Marshal(&d)
			var m map[string]json.RawMessage
			_ = json.Unmarshal(b, &m)
			if got := string(m["rate_limit"]); got != tc.out {
				t.Errorf("written as %s, want %s", got, tc.out)
			}
		})
	}
}

// TestThrottle_OldDocument reads a destination stored before rate_limit had
// units (a plain number per second) as the throttle it was.
func TestThrottle_OldDocument(t *testing.T) {
	old := `{"id":"d1","url":"https://example.com/h","enabled":true,"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","max_concurrency":8,"rate_limit":10,"paused":false,"created_at":"2024-01-01T00:00:00Z","updated_at":"2024-01-01T00:00:00Z","version":3}`
	var d destination.Destination
	if err := json.Unmarshal([]byte(old), &d); err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(nil); err != nil {
		t.Fatal(err)
	}
	if d.RateLimit != (destination.Throttle{Rate: 10}) || d.RateLimit.PerSecond() != 10 || d.RateLimit.BurstOrDefault() != 10 {
		t.Fatalf("rate_limit read as %+v", d.RateLimit)
	}
	if s := d.RateLimit.String(); s != "10/second, burst 10" {
		t.Fatalf("String = %q", s)
	}
}
