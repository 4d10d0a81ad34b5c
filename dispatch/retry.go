package dispatch

import (
	"math"
	"math/rand/v2"
	"time"
)

// RetryPolicy decides when a call that failed with a retryable status runs
// again, and when it has had enough. It is injected so that tests control time
// and jitter, and so that a caller can give one function another schedule.
type RetryPolicy interface {
	// NextRetry returns when to run the call again after its failures-th
	// failed attempt (1 for the first failure). since is when the call's
	// retry budget started (its dispatch, or its last re-drive), now is the
	// current time, and hint is a delay the failure asked for (a
	// Retry-After), zero when it asked for none. ok is false when the
	// retry budget is spent: the call then ends as failed.
	NextRetry(failures int, since, now time.Time, hint time.Duration) (at time.Time, ok bool)
}

// Backoff is exponential backoff with full jitter and a budget: attempt n
// waits a uniformly random time in [0, min(Max, Initial*2^(n-1))), plus Min.
// Full jitter spreads the retries of many calls that failed together (on a
// service that came back up) instead of sending them in waves.
//
// The budget is spent when MaxAttempts failures have happened (0: no limit)
// or when the next attempt would start later than MaxAge after the call was
// dispatched (0: no limit). One of the two should be set.
type Backoff struct {
	// Min is added to every delay, so that no retry is immediate.
	Min time.Duration
	// Initial is the upper bound of the first delay's jitter.
	Initial time.Duration
	// Max caps the time between two attempts.
	Max time.Duration
	// MaxAttempts bounds the number of failed attempts; 0 is unlimited.
	MaxAttempts int
	// MaxAge bounds how long after dispatch a call may still be retried;
	// 0 is unlimited.
	MaxAge time.Duration
	// MaxRetryAfter bounds how far a Retry-After hint may push the next
	// attempt, so that a failure cannot park a call for a year.
	// Hints beyond it are cut to it; 0 means Max.
	MaxRetryAfter time.Duration
	// RandFunc returns a float in [0, 1); nil means math/rand/v2.
	RandFunc func() float64
}

// DefaultBackoff is the runtime's default retry policy: retries start within
// a second, back off to at most an hour apart, and stop three days after the
// call was dispatched.
func DefaultBackoff() *Backoff {
	return &Backoff{
		Min:     100 * time.Millisecond,
		Initial: time.Second,
		Max:     time.Hour,
		MaxAge:  72 * time.Hour,
	}
}

// Bounded reports whether the budget ends: by attempts or by age. An
// unbounded policy retries a call that keeps failing for ever.
func (b *Backoff) Bounded() bool { return b.MaxAge > 0 || b.MaxAttempts > 0 }

// NextRetry implements RetryPolicy.
func (b *Backoff) NextRetry(failures int, since, now time.Time, hint time.Duration) (time.Time, bool) {
	if b.MaxAttempts > 0 && failures >= b.MaxAttempts {
		return time.Time{}, false
	}
	delay := b.Delay(failures)
	if hint > 0 {
		limit := b.MaxRetryAfter
		if limit <= 0 {
			limit = b.Max
		}
		delay = max(b.Min, min(hint, limit))
	}
	at := now.Add(delay)
	if b.MaxAge > 0 && at.Sub(since) > b.MaxAge {
		return time.Time{}, false
	}
	return at, true
}

// Delay returns the jittered delay before the attempt that follows the
// failures-th failure, without the budget.
func (b *Backoff) Delay(failures int) time.Duration {
	ceiling := float64(b.Initial) * math.Pow(2, float64(max(failures-1, 0)))
	if b.Max > 0 && ceiling > float64(b.Max) {
		ceiling = float64(b.Max)
	}
	r := rand.Float64
	if b.RandFunc != nil {
		r = b.RandFunc
	}
	return b.Min + time.Duration(r()*ceiling)
}
