package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
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
	// second, Burst at once (default 1). With a store that keeps Buckets
	// the cap holds for every process on the store together, else for
	// each.
	Rate  float64
	Burst int
	// Paused keys start nothing: their calls wait in the store, without
	// spending their retry budget, until the key is resumed.
	Paused bool
	// RetryPolicy, when set, replaces the runtime's for the key's calls.
	RetryPolicy RetryPolicy
}

// KeyStatus is what the runtime knows of a key, for status pages and tests.
type KeyStatus struct {
	InFlight int
	Limit    float64
	Failures int
	// Throttled is when this process last found the key's rate exhausted
	// while its calls waited (zero if never). Only a rate kept in the
	// store's Buckets records it.
	Throttled time.Time
}

// initialLimit is where a key's adaptive limit starts: enough for a key
// whose calls are healthy to go fast at once, few enough that a key whose
// calls hang holds only that many workers while its first timeouts come in.
const initialLimit = 32

// keyLimiter keeps the per-key limits of one process: how many calls of each
// key it holds (leased, running, or promised a slot), the adaptive
// concurrency limit, the rate limiter and the circuit breaker.
//
// Lock order: keyLimiter.mu, then pool.mu, never the other way. reserve
// holds both, so that a key's room and the pool's free slots are decided in
// one step: taking one and then giving part of it back when the other falls
// short would, for a moment, show other reservations less room than there
// is, and they would hold back calls that fit. Callbacks (Config.Keys,
// OnKeyTrip) are called without the lock: they are the application's code.
type keyLimiter struct {
	config     func(key string) KeyConfig
	workers    int // no key's limit exceeds the pool
	tripAfter  int
	tripWindow time.Duration
	onTrip     func(key, reason string)
	log        *slog.Logger

	// With a store that has Buckets, a key's rate is the store's bucket:
	// its feeder (bucket.go) takes tokens from it, and the limiter spends
	// them. ctx ends the feeders, wg waits for them, onTokens wakes the
	// scheduler. Set by Start; a nil ctx runs no feeder.
	bucket   Buckets
	clock    clockwork.Clock
	ctx      context.Context
	wg       sync.WaitGroup
	onTokens func()

	mu   sync.Mutex
	keys map[string]*keyState
}

// keyState is what the limiter knows of a key. It lives under keyLimiter.mu.
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
	// tokens are those of the store's bucket this process holds for the
	// key (a shared rate); feed takes more; throttled is when the key last
	// ran out of them with calls waiting.
	tokens    int
	feed      *feeder
	throttled time.Time
	// blocked says the key has runnable calls in the store that its
	// concurrency limit held back: one of its calls returning wakes the
	// scheduler once a batch fits (see returned).
	blocked bool
}

// state returns the state of a key, new if need be. kl.mu is held.
func (kl *keyLimiter) state(key string) *keyState {
	ks := kl.keys[key]
	if ks == nil {
		ks = &keyState{limit: initialLimit, ssthresh: math.Inf(1)}
		kl.keys[key] = ks
	}
	return ks
}

// room returns how many more calls of the key may be leased now, given its
// config and its state (kl.mu is held): want at most, and, in a batch,
// nothing unless a quarter of its concurrency limit is free.
func (kl *keyLimiter) room(key string, cfg KeyConfig, ks *keyState, want int, batch bool, now time.Time) int {
	if cfg.Paused {
		return 0
	}
	limit := kl.workers
	if cfg.MaxConcurrency > 0 {
		ks.limit = min(ks.limit, float64(cfg.MaxConcurrency))
		limit = int(ks.limit)
	} else if key != "" {
		limit = int(min(ks.limit, float64(kl.workers)))
	}
	room := max(0, limit-ks.inflight)
	if batch && room < want && room < limit/4 {
		return 0 // see Runtime.reserveKeyBatch
	}
	if cfg.Rate > 0 && kl.bucket != nil {
		ks.limiter = nil
		room = min(room, ks.tokens)
	} else if cfg.Rate > 0 {
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

// reserve promises up to n slots to calls of key, within the key's limits
// and the free slots of p, and returns how many it could. When the key's
// rate held it back, wake says when to look again. With batch, it promises
// nothing unless a quarter of the key's limit is free.
func (kl *keyLimiter) reserve(key string, n int, batch bool, now time.Time, p *pool) (k int, wake time.Time) {
	cfg := kl.config(key)
	kl.mu.Lock()
	defer kl.mu.Unlock()
	ks := kl.state(key)
	k, free := p.take(min(n, kl.room(key, cfg, ks, n, batch, now)))
	if k > 0 && ks.limiter != nil {
		ks.limiter.AllowN(now, k)
	}
	if k < n && ks.limiter != nil && k < free {
		wake = now.Add(time.Duration(float64(time.Second) / ks.rate))
	}
	if cfg.Rate > 0 && kl.bucket != nil {
		if k < n && k == ks.tokens && k < free {
			// Short of tokens: the feeder takes more from the store
			// and wakes the scheduler; wake is in case it cannot.
			ks.throttled = now
			kl.kickFeeder(key, ks)
			wake = now.Add(max(time.Duration(float64(feedChunk(cfg))/cfg.Rate*float64(time.Second)), 10*time.Millisecond))
		}
		ks.tokens -= k
	}
	ks.inflight += k
	return k, wake
}

// release gives back n slots of a key, promised to calls that did not
// start (and the tokens they took, if its rate is the store's).
func (kl *keyLimiter) release(key string, n int) {
	kl.mu.Lock()
	ks := kl.state(key)
	ks.inflight -= n
	if ks.feed != nil {
		ks.tokens += n
	}
	kl.mu.Unlock()
}

// releaseEach gives back the slot of each call in its key (see release).
func (kl *keyLimiter) releaseEach(calls []*Call) {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	for _, c := range calls {
		ks := kl.state(c.Key)
		ks.inflight--
		if ks.feed != nil {
			ks.tokens++
		}
	}
}

// move moves a slot from one key to another.
func (kl *keyLimiter) move(from, to string) {
	kl.mu.Lock()
	kl.state(from).inflight--
	kl.state(to).inflight++
	kl.mu.Unlock()
}

// returned gives back the slot of a call whose function returned. It
// reports whether the key's held-back calls now fit in a batch, so that the
// scheduler should look for them.
func (kl *keyLimiter) returned(key string) (wake bool) {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	ks := kl.state(key)
	ks.inflight--
	if ks.blocked && ks.fits() {
		ks.blocked = false
		return true
	}
	return false
}

// markBlocked notes that a key's backlog waits for its calls to return. It
// reports false, marking nothing, if enough of them returned since it was
// held back: the backlog fits now.
func (kl *keyLimiter) markBlocked(key string) (blocked bool) {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	ks := kl.state(key)
	ks.blocked = !ks.fits()
	return ks.blocked
}

// fits reports whether a batch of the key's calls fits in its concurrency
// limit: a quarter of it is free.
func (ks *keyState) fits() bool {
	return int(ks.limit)-ks.inflight >= max(1, int(ks.limit)/4)
}

// observe adapts a key's limit and breaker to the outcome of one of its
// calls: a success widens the limit by one per full window, a retryable
// failure halves it (once per loss event) and counts towards the breaker.
func (kl *keyLimiter) observe(key string, status Status, now time.Time) {
	var trip string
	kl.mu.Lock()
	ks := kl.state(key)
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
			// new key starts: a key whose calls fail for a while (the
			// service they call is down) gets its throughput back in a
			// few round trips once they succeed again.
			ks.ssthresh = max(ks.limit, initialLimit)
			ks.lastCut = now
		}
		if ks.failures == 0 {
			ks.since = now
		}
		ks.failures++
		if kl.tripAfter > 0 && !ks.tripped && ks.failures >= kl.tripAfter && now.Sub(ks.since) >= kl.tripWindow {
			ks.tripped = true
			trip = fmt.Sprintf("%d attempts in a row failed over %v", ks.failures, now.Sub(ks.since).Round(time.Second))
		}
	}
	ks.limit = min(ks.limit, float64(kl.workers))
	kl.mu.Unlock()
	if trip != "" && kl.onTrip != nil && key != "" {
		kl.log.Warn("circuit breaker opened", "key", key, "reason", trip)
		kl.onTrip(key, trip)
	}
}

// status returns what the limiter knows of a key.
func (kl *keyLimiter) status(key string) KeyStatus {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	ks := kl.state(key)
	return KeyStatus{InFlight: ks.inflight, Limit: ks.limit, Failures: ks.failures, Throttled: ks.throttled}
}
