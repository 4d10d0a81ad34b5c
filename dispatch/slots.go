package dispatch

import (
	"fmt"
	"math"
	"time"

	"golang.org/x/time/rate"
)

// KeyConfig configures the calls of one key (see Call.Key).
type KeyConfig struct {
	// MaxConcurrency caps how many calls of the key run at once in this
	// process. Within it the runtime adapts the limit to how the key's
	// calls fare: it starts at 32 and doubles per window of successes
	// until the first loss (a timeout, throttling or other retryable
	// failure), which halves it; then it grows by one per window, or again
	// by doubling up to where it was cut (slow start, additive increase,
	// multiplicative decrease, as TCP does and as Dispatch's scheduler
	// did). 0 means no cap but Workers.
	MaxConcurrency int
	// Rate, when positive, caps how many calls of the key start per
	// second, Burst at once (default 1).
	Rate  float64
	Burst int
	// Paused keys start nothing: their calls wait in the store, without
	// spending their retry budget, until the key is resumed.
	Paused bool
	// RetryPolicy, when set, replaces the runtime's for the key's calls.
	RetryPolicy RetryPolicy
}

// initialLimit is where a key's adaptive limit starts: enough for a healthy
// destination to be fast at once, few enough that a hanging one holds only
// that many workers while its first timeouts come in.
const initialLimit = 32

// keyState is what the runtime knows of a key. It lives under Runtime.mu.
type keyState struct {
	inflight int     // calls of the key leased to this process (queued, running) or promised
	limit    float64 // the adaptive concurrency limit
	ssthresh float64 // below it the limit grows by one per success (slow start)
	// lastCut is when the limit was last halved: one loss event halves it
	// once, not once per call that was in flight when it happened.
	lastCut  time.Time
	failures int       // retryable failures in a row
	since    time.Time // when this run of failures started
	tripped  bool      // the breaker opened; OnKeyTrip was told
	limiter  *rate.Limiter
	rate     float64
	burst    int
	// blocked says the key has runnable calls in the store that its
	// concurrency limit held back: one of its calls returning wakes the
	// scheduler once a batch fits (see ran).
	blocked bool
}

func (r *Runtime) keyState(key string) *keyState {
	ks := r.keys[key]
	if ks == nil {
		ks = &keyState{limit: initialLimit, ssthresh: math.Inf(1)}
		r.keys[key] = ks
	}
	return ks
}

// keyRoom returns how many more calls of the key may be leased now, given
// its config and its state (under r.mu): want at most, and, in a batch,
// nothing unless a quarter of its concurrency limit is free.
func (r *Runtime) keyRoom(key string, cfg KeyConfig, ks *keyState, want int, batch bool, now time.Time) int {
	if cfg.Paused {
		return 0
	}
	limit := r.workers
	if cfg.MaxConcurrency > 0 {
		ks.limit = min(ks.limit, float64(cfg.MaxConcurrency))
		limit = int(ks.limit)
	} else if key != "" {
		limit = int(min(ks.limit, float64(r.workers)))
	}
	room := max(0, limit-ks.inflight)
	if batch && room < want && room < limit/4 {
		return 0 // see reserveKeyBatch
	}
	if cfg.Rate > 0 {
		burst := max(cfg.Burst, 1)
		if ks.limiter == nil || ks.rate != cfg.Rate || ks.burst != burst {
			ks.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), burst)
			ks.limiter.SetLimitAt(now, rate.Limit(cfg.Rate))
			ks.rate, ks.burst = cfg.Rate, burst
		}
		room = min(room, int(math.Floor(ks.limiter.TokensAt(now))))
	} else {
		ks.limiter = nil
	}
	return room
}

// reserveKey promises up to n slots to calls of key, within the workers and
// the key's limits, and returns how many it could. When the key's rate held
// it back, wake says when to look again.
func (r *Runtime) reserveKey(key string, n int, now time.Time) (k int, wake time.Time) {
	return r.reserveKeyBatch(key, n, false, now)
}

// reserveKeyBatch is reserveKey, but when batch is set it promises nothing
// unless a quarter of the key's limit is free: a claim is a write, and
// claiming one call each time one of a busy key's calls finishes would cost
// a transaction per call.
func (r *Runtime) reserveKeyBatch(key string, n int, batch bool, now time.Time) (k int, wake time.Time) {
	if n <= 0 || !r.running() {
		return 0, time.Time{}
	}
	cfg := r.keyConfig(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	ks := r.keyState(key)
	free := r.workers - len(r.inflight) - r.reserved
	k = max(0, min(n, free, r.keyRoom(key, cfg, ks, n, batch, now)))
	if k > 0 && ks.limiter != nil {
		ks.limiter.AllowN(now, k)
	}
	if k < n && ks.limiter != nil && k < free {
		wake = now.Add(time.Duration(float64(time.Second) / ks.rate))
	}
	r.reserved += k
	ks.inflight += k
	return k, wake
}

// unreserve gives back the slots promised to calls that will not run here.
func (r *Runtime) unreserve(calls []*Call) {
	if len(calls) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range calls {
		r.reserved--
		r.keyState(c.Key).inflight--
	}
}

// unreserveKey gives back n slots promised to a key.
func (r *Runtime) unreserveKey(key string, n int) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reserved -= n
	r.keyState(key).inflight -= n
}

// admit turns reservations into calls in flight and hands them to workers.
// Once stopping, it only gives the slots back: the calls stay leased to this
// process in the store, and Stop releases them.
func (r *Runtime) admit(calls []*Call) {
	if len(calls) == 0 {
		return
	}
	now := r.clock.Now()
	r.mu.Lock()
	stopping := r.stopping.Load()
	for _, c := range calls {
		r.reserved--
		if stopping {
			r.keyState(c.Key).inflight--
			continue
		}
		r.inflight[c.ID] = &inflight{key: c.Key, claimedAt: now}
	}
	r.mu.Unlock()
	if stopping {
		return
	}
	for _, c := range calls {
		r.work <- c // never blocks: the channel holds as many calls as there are slots
	}
}

// admitResumed admits a parent leased on resume, whose slot was promised
// to key "" before its key was known.
func (r *Runtime) admitResumed(parent *Call) {
	if parent.Key != "" {
		r.mu.Lock()
		r.keyState("").inflight--
		r.keyState(parent.Key).inflight++
		r.mu.Unlock()
	}
	r.admit([]*Call{parent})
}

// ran gives back a call's place in its key's limit once its function has
// returned: the limit is of calls running against the key (requests a
// destination is answering), and recording the outcome is no longer that.
// The worker's slot is given back by done.
func (r *Runtime) ran(c *Call) {
	wake := false
	r.mu.Lock()
	if f, ok := r.inflight[c.ID]; ok && !f.ran {
		f.ran = true
		ks := r.keyState(f.key)
		ks.inflight--
		if ks.blocked && int(ks.limit)-ks.inflight >= max(1, int(ks.limit)/4) {
			ks.blocked, wake = false, true
		}
	}
	r.mu.Unlock()
	if wake {
		r.signalBacklog()
	}
}

// markBlocked notes that a key's backlog waits for its calls to return,
// unless enough of them returned since it was held back.
func (r *Runtime) markBlocked(key string) {
	r.mu.Lock()
	ks := r.keyState(key)
	fits := int(ks.limit)-ks.inflight >= max(1, int(ks.limit)/4)
	ks.blocked = !fits
	r.mu.Unlock()
	if fits {
		r.signalBacklog()
	}
}

// done ends a call's time in flight.
func (r *Runtime) done(c *Call) {
	r.mu.Lock()
	if f, ok := r.inflight[c.ID]; ok {
		delete(r.inflight, c.ID)
		if !f.ran {
			r.keyState(f.key).inflight--
		}
	}
	r.mu.Unlock()
}

// leaseNew leases to this process those of the new calls it has room for,
// by setting their state before they are stored, and returns them.
func (r *Runtime) leaseNew(calls []*Call, now time.Time) []*Call {
	if len(calls) == 0 || !r.running() {
		return nil
	}
	var leased []*Call
	for _, c := range calls {
		if k, _ := r.reserveKey(c.Key, 1, now); k == 0 {
			continue
		}
		c.State = StateRunning
		c.Attempt = 1
		c.LeaseOwner = r.owner
		c.LeaseExpires = now.Add(r.leaseDuration)
		leased = append(leased, c)
	}
	r.stats.leasedOnCreate.Add(int64(len(leased)))
	return leased
}

// free returns how many calls this process may still take on.
func (r *Runtime) free() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers - len(r.inflight) - r.reserved
}

// idle returns how many workers have no call, ignoring slots promised to
// calls being stored or claimed: a hint of spare capacity, where free is an
// exact count.
func (r *Runtime) idle() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers - len(r.inflight)
}

// observe adapts a key's limit and breaker to the outcome of one of its
// calls: a success widens the limit by one per full window, a retryable
// failure halves it (once per loss event) and counts towards the breaker.
func (r *Runtime) observe(key string, status Status, now time.Time) {
	var trip string
	r.mu.Lock()
	ks := r.keyState(key)
	switch {
	case status == StatusOK:
		// Below the slow-start threshold (none until the first loss),
		// grow by one per success: the limit doubles per window, as TCP's
		// slow start. Above it, by one per window of successes.
		if ks.limit < ks.ssthresh {
			ks.limit++
		} else {
			ks.limit += 1 / ks.limit
		}
		ks.failures, ks.tripped = 0, false
	case status.Retryable():
		if now.Sub(ks.lastCut) >= 100*time.Millisecond {
			ks.limit = max(1, ks.limit/2)
			// Slow start again up to here, and at least to where a
			// new key starts: a destination back from an outage gets
			// its throughput back in a few round trips.
			ks.ssthresh = max(ks.limit, initialLimit)
			ks.lastCut = now
		}
		if ks.failures == 0 {
			ks.since = now
		}
		ks.failures++
		if r.tripAfter > 0 && !ks.tripped && ks.failures >= r.tripAfter && now.Sub(ks.since) >= r.tripWindow {
			ks.tripped = true
			trip = fmt.Sprintf("%d attempts in a row failed over %v", ks.failures, now.Sub(ks.since).Round(time.Second))
		}
	}
	ks.limit = min(ks.limit, float64(r.workers))
	r.mu.Unlock()
	if trip != "" && r.onTrip != nil && key != "" {
		r.log.Warn("circuit breaker opened", "key", key, "reason", trip)
		r.onTrip(key, trip)
	}
}

// KeyStatus is what the runtime knows of a key, for status pages and tests.
type KeyStatus struct {
	InFlight int
	Limit    float64
	Failures int
}

// KeyStatus returns the state of a key in this process.
func (r *Runtime) KeyStatus(key string) KeyStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	ks := r.keyState(key)
	return KeyStatus{InFlight: ks.inflight, Limit: ks.limit, Failures: ks.failures}
}
