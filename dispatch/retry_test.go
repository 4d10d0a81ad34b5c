package dispatch

import (
	"testing"
	"time"
)

func TestBackoff_NextRetry(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	half := func() float64 { return 0.5 }
	tests := []struct {
		name     string
		b        Backoff
		failures int
		now      time.Time
		hint     time.Duration
		want     time.Duration // after now; -1 means no retry
	}{
		{"First", Backoff{Initial: time.Second, Max: time.Hour, MaxAge: time.Hour, RandFunc: half}, 1, created, 0, 500 * time.Millisecond},
		{"Doubles", Backoff{Initial: time.Second, Max: time.Hour, MaxAge: time.Hour, RandFunc: half}, 4, created, 0, 4 * time.Second},
		{"Capped", Backoff{Initial: time.Second, Max: 10 * time.Second, MaxAge: time.Hour, RandFunc: half}, 30, created, 0, 5 * time.Second},
		{"MinAdded", Backoff{Min: time.Second, Initial: time.Second, Max: time.Hour, MaxAge: time.Hour, RandFunc: func() float64 { return 0 }}, 1, created, 0, time.Second},
		{"AttemptsSpent", Backoff{Initial: time.Second, MaxAttempts: 3, RandFunc: half}, 3, created, 0, -1},
		{"AttemptsLeft", Backoff{Initial: time.Second, MaxAttempts: 3, RandFunc: half}, 2, created, 0, time.Second},
		{"AgeSpent", Backoff{Initial: time.Minute, MaxAge: time.Hour, RandFunc: half}, 1, created.Add(time.Hour - 10*time.Second), 0, -1},
		{"HintHonoured", Backoff{Initial: time.Second, Max: time.Hour, MaxAge: 24 * time.Hour, RandFunc: half}, 1, created, 90 * time.Second, 90 * time.Second},
		{"HintBounded", Backoff{Initial: time.Second, Max: time.Hour, MaxRetryAfter: 10 * time.Minute, MaxAge: 24 * time.Hour, RandFunc: half}, 1, created, 5 * time.Hour, 10 * time.Minute},
		// MaxRetryAfter 0 means Max: fanout's own policy (main.go) sets no
		// MaxRetryAfter, so this is what caps a destination's Retry-After at
		// --retry-max in production.
		{"HintBoundedByMaxWhenNoMaxRetryAfter", Backoff{Min: 100 * time.Millisecond, Initial: 20 * time.Millisecond, Max: time.Second, MaxAge: 72 * time.Hour, RandFunc: half}, 1, created, time.Hour, time.Second},
		{"HintUnderMaxWhenNoMaxRetryAfter", Backoff{Min: 100 * time.Millisecond, Initial: 20 * time.Millisecond, Max: time.Minute, MaxAge: 72 * time.Hour, RandFunc: half}, 1, created, 30 * time.Second, 30 * time.Second},
		{"HintBoundedByMaxWhenMaxRetryAfterNegative", Backoff{Initial: time.Second, Max: 10 * time.Second, MaxRetryAfter: -time.Second, MaxAge: time.Hour, RandFunc: half}, 1, created, time.Hour, 10 * time.Second},
		{"HintAtLeastMin", Backoff{Min: time.Second, Initial: time.Second, Max: time.Hour, MaxAge: time.Hour, RandFunc: half}, 1, created, time.Millisecond, time.Second},
		{"HintPastAge", Backoff{Initial: time.Second, Max: time.Hour, MaxAge: time.Hour, RandFunc: half}, 1, created.Add(30 * time.Minute), 2 * time.Hour, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at, ok := tc.b.NextRetry(tc.failures, created, tc.now, tc.hint)
			if tc.want < 0 {
				if ok {
					t.Fatalf("NextRetry = %v, want the budget spent", at)
				}
				return
			}
			if !ok || at.Sub(tc.now) != tc.want {
				t.Fatalf("NextRetry = now+%v (ok=%v), want now+%v", at.Sub(tc.now), ok, tc.want)
			}
		})
	}
}

func TestBackoff_FullJitter(t *testing.T) {
	b := DefaultBackoff()
	for failures := 1; failures < 40; failures++ {
		for range 20 {
			d := b.Delay(failures)
			ceiling := b.Max
			if failures < 30 {
				ceiling = min(b.Initial<<(failures-1), b.Max)
			}
			if d < b.Min || d > b.Min+ceiling {
				t.Fatalf("Delay(%d)=%v, outside [%v, %v]", failures, d, b.Min, b.Min+ceiling)
			}
		}
	}
}
