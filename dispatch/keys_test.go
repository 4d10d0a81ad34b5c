package dispatch

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

func TestKeyLimiter_Observe(t *testing.T) {
	t.Parallel()
	var tripped []string
	kl := &keyLimiter{workers: 256, keys: map[string]*keyState{}, tripAfter: 4, tripWindow: time.Minute,
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
		kl.observe("k", tc.status, t0.Add(tc.at))
		st := kl.status("k")
		if st.Limit != tc.wantLimit || len(tripped) != tc.wantTrips {
			t.Fatalf("%s: limit %v trips %d, want %v and %d", tc.name, st.Limit, len(tripped), tc.wantLimit, tc.wantTrips)
		}
	}
	for range 100 {
		kl.observe("k", StatusOK, t0.Add(time.Hour))
	}
	if st := kl.status("k"); st.Limit <= initialLimit || st.Limit > initialLimit+3 {
		t.Fatalf("after 100 successes the limit is %v, want a little over %d (slow start to the threshold, then one per window)", st.Limit, initialLimit)
	}
	// A new key doubles per window until its first loss.
	for range 300 {
		kl.observe("fresh", StatusOK, t0)
	}
	if st := kl.status("fresh"); st.Limit != 256 {
		t.Fatalf("a new key's limit after 300 successes is %v, want 256 (one per success from 32, capped at Workers)", st.Limit)
	}
	for i := range 100 {
		kl.observe("k", StatusTimeout, t0.Add(2*time.Hour+time.Duration(i)*time.Second))
	}
	if st := kl.status("k"); st.Limit != 1 {
		t.Fatalf("limit after 100 losses is %v, want 1", st.Limit)
	}
}

func TestKeyLimiter_Reserve(t *testing.T) {
	t.Parallel()
	configs := map[string]KeyConfig{
		"capped": {MaxConcurrency: 2},
		"wide":   {MaxConcurrency: 8},
		"paced":  {Rate: 1},
		"paused": {Paused: true},
	}
	kl := &keyLimiter{config: func(key string) KeyConfig { return configs[key] }, workers: 16, keys: map[string]*keyState{}}
	p := newPool(16)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		key      string
		n        int
		batch    bool
		want     int
		wantWake bool
	}{
		{"CappedByItsLimit", "capped", 3, false, 2, false},
		{"PausedGetsNothing", "paused", 1, false, 0, false},
		{"PacedByItsRate", "paced", 3, false, 1, true},
		{"WideAlmostFull", "wide", 7, false, 7, false},
		{"BatchWaitsForAQuarterOfTheLimit", "wide", 4, true, 0, false},
		{"OneAtATimeStillFits", "wide", 4, false, 1, false},
		{"RestOfThePool", "", 10, false, 5, false},
		{"PoolFull", "other", 1, false, 0, false},
	}
	for _, tc := range tests {
		got, wake := kl.reserve(tc.key, tc.n, tc.batch, now, p)
		if got != tc.want || !wake.IsZero() != tc.wantWake {
			t.Fatalf("%s: reserve(%q, %d) = %d, wake %v; want %d, wake %v", tc.name, tc.key, tc.n, got, wake, tc.want, tc.wantWake)
		}
	}
	if free := p.free(); free != 0 {
		t.Fatalf("pool has %d free slots, want 0", free)
	}
	if st := kl.status("wide"); st.InFlight != 8 {
		t.Fatalf("key wide has %d in flight, want 8", st.InFlight)
	}
}

// Reservations from many goroutines never promise more slots than the pool
// has, nor more calls of a key than its limit, and give everything back.
func TestKeyLimiter_ReserveConcurrent(t *testing.T) {
	t.Parallel()
	const workers, perKey, keys = 16, 3, 8 // the keys' limits add up to more than the pool
	kl := &keyLimiter{config: func(string) KeyConfig { return KeyConfig{MaxConcurrency: perKey} }, workers: workers,
		keys: map[string]*keyState{}}
	p := newPool(workers)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for g := range 4 * keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprint(g % keys)
			for range 500 {
				k, _ := kl.reserve(key, 2, false, now, p)
				if free := p.free(); free < 0 {
					t.Errorf("pool has %d free slots", free)
				}
				if st := kl.status(key); st.InFlight > perKey {
					t.Errorf("key %s has %d in flight, over its limit of %d", key, st.InFlight, perKey)
				}
				p.giveBack(k)
				kl.release(key, k)
			}
		}()
	}
	wg.Wait()
	if free := p.free(); free != workers {
		t.Fatalf("pool has %d free slots after every reservation was given back, want %d", free, workers)
	}
	for i := range keys {
		if st := kl.status(fmt.Sprint(i)); st.InFlight != 0 {
			t.Fatalf("key %d has %d in flight after every reservation was given back", i, st.InFlight)
		}
	}
}
