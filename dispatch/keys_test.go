package dispatch

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

func TestKeyLimiter_Observe(t *testing.T) {
	t.Parallel()
	var tripped []string
	r := &keyLimiter{workers: 256, keys: map[string]*keyState{}, tripAfter: 4, tripWindow: time.Minute,
		log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		onTrip: func(key, reason string) { tripped = append(tripped, key) }}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		status    Status
		at        time.Duration
		wantLimit float64
		wantTrips int
	}{
		{"TimeoutHalves", StatusTimeout, 0, initialLimit / 2, 0},
		{"SecondLossInSameEventIgnored", StatusThrottled, 10 * time.Millisecond, initialLimit / 2, 0},
		{"LaterLossHalvesAgain", StatusTemporary, 200 * time.Millisecond, initialLimit / 4, 0},
		{"PermanentChangesNothing", StatusPermanent, 300 * time.Millisecond, initialLimit / 4, 0},
		{"FourthFailureBeforeWindowDoesNotTrip", StatusTCP, 400 * time.Millisecond, initialLimit / 8, 0},
		{"FailureAfterWindowTrips", StatusTimeout, time.Minute + time.Second, initialLimit / 16, 1},
		{"NoSecondTrip", StatusTimeout, 2 * time.Minute, initialLimit / 32, 1},
		{"SuccessBelowThresholdGrowsByOne", StatusOK, 3 * time.Minute, initialLimit/32 + 1, 1},
	}
	for _, tc := range tests {
		r.observe("k", tc.status, t0.Add(tc.at))
		st := r.status("k")
		if st.Limit != tc.wantLimit || len(tripped) != tc.wantTrips {
			t.Fatalf("%s: limit %v trips %d, want %v and %d", tc.name, st.Limit, len(tripped), tc.wantLimit, tc.wantTrips)
		}
	}
	for range 100 {
		r.observe("k", StatusOK, t0.Add(time.Hour))
	}
	if st := r.status("k"); st.Limit <= initialLimit || st.Limit > initialLimit+3 {
		t.Fatalf("after 100 successes the limit is %v, want a little over %d (slow start to the threshold, then one per window)", st.Limit, initialLimit)
	}
	// A new key doubles per window until its first loss.
	for range 300 {
		r.observe("fresh", StatusOK, t0)
	}
	if st := r.status("fresh"); st.Limit != 256 {
		t.Fatalf("a new key's limit after 300 successes is %v, want 256 (one per success from 32, capped at Workers)", st.Limit)
	}
	for i := range 100 {
		r.observe("k", StatusTimeout, t0.Add(2*time.Hour+time.Duration(i)*time.Second))
	}
	if st := r.status("k"); st.Limit != 1 {
		t.Fatalf("limit after 100 losses is %v, want 1", st.Limit)
	}
}
