package dispatch

import (
	"context"
	"math"
	"time"
)

// Buckets is an optional capability of a Store, which the runtime finds by
// type assertion: token buckets kept in the store, shared by every process
// that uses it, so that a key's Rate holds for all of them together rather
// than for each. Without it, each process keeps a key's rate in memory.
type Buckets interface {
	// BucketTake takes up to Want tokens from the bucket of Key and
	// returns how many it took (0 to Want). The bucket holds at most
	// Burst tokens; it gains Rate tokens per second from its last take to
	// Now (the taker's clock; the bucket's time never goes back, so a
	// process whose clock runs ahead adds its lead once, not at every
	// take). A bucket that does not exist yet starts full. Takes are
	// atomic: no token is taken twice, whatever the number of processes.
	BucketTake(ctx context.Context, p *BucketTakeParams) (int, error)
}

// BucketTakeParams are the arguments of Buckets.BucketTake.
type BucketTakeParams struct {
	Key   string
	Want  int
	Rate  float64 // tokens per second, > 0
	Burst int     // at least 1
	Now   time.Time
}

// feedAhead is how much of a key's rate a process takes from the shared
// bucket at a time: a chunk. It bounds what the fleet can overshoot by
// (each process may hold one chunk it has not spent yet, and spend it
// later than the bucket handed it out) and what a process that dies loses
// (the chunk it held: lost, never handed out again); smaller chunks cost
// more writes to the store.
const feedAhead = 100 * time.Millisecond

// feederIdle is how long a key's feeder waits for the key to run short
// again before it ends; the next shortage starts another.
const feederIdle = time.Minute

// feedChunk is how many tokens of a key a process takes at a time: the rate
// over feedAhead, at least one, at most the burst.
func feedChunk(cfg KeyConfig) int {
	return max(1, min(int(math.Ceil(cfg.Rate*feedAhead.Seconds())), max(cfg.Burst, 1)))
}

// feeder takes the tokens of one throttled key from the store's bucket for
// this process, outside the limiter's lock: the limiter spends them
// (keyState.tokens) and kicks the feeder when they ran out while the key
// had calls waiting. The feeder then takes up to a chunk ahead of need,
// tells the scheduler (onTokens), and if the bucket had fewer, waits for
// them to accrue and takes again, until this process holds a chunk.
type feeder struct {
	kick chan struct{} // capacity 1: a kick while it takes is not lost
}

// kickFeeder starts the key's feeder if it has none and tells it that the
// key ran out of tokens. kl.mu is held.
func (kl *keyLimiter) kickFeeder(key string, ks *keyState) {
	if ks.feed == nil {
		if kl.ctx == nil || kl.ctx.Err() != nil {
			return
		}
		ks.feed = &feeder{kick: make(chan struct{}, 1)}
		kl.wg.Add(1)
		go kl.runFeeder(key, ks.feed)
	}
	select {
	case ks.feed.kick <- struct{}{}:
	default:
	}
}

// runFeeder is the goroutine of a key's feeder: it ends with the runtime,
// or once the key did not run short for feederIdle.
func (kl *keyLimiter) runFeeder(key string, f *feeder) {
	defer kl.wg.Done()
	failing := false
	for {
		idle := kl.clock.NewTimer(feederIdle)
		select {
		case <-kl.ctx.Done():
			idle.Stop()
			return
		case <-idle.Chan():
			kl.mu.Lock()
			ks := kl.keys[key]
			if len(f.kick) == 0 {
				if ks != nil && ks.feed == f {
					ks.feed = nil
				}
				kl.mu.Unlock()
				return
			}
			kl.mu.Unlock()
			continue
		case <-f.kick:
			idle.Stop()
		}
		for kl.ctx.Err() == nil {
			cfg := kl.config(key)
			if cfg.Rate <= 0 || cfg.Paused {
				break
			}
			burst := max(cfg.Burst, 1)
			chunk := feedChunk(cfg)
			kl.mu.Lock()
			want := chunk - kl.state(key).tokens
			kl.mu.Unlock()
			if want <= 0 {
				break
			}
			now := kl.clock.Now()
			got, err := kl.bucket.BucketTake(kl.ctx, &BucketTakeParams{Key: key, Want: want, Rate: cfg.Rate, Burst: burst, Now: now})
			wait := time.Duration(float64(want-got) / cfg.Rate * float64(time.Second))
			if err != nil {
				if kl.ctx.Err() != nil {
					return
				}
				if !failing {
					kl.log.Error("take tokens of a throttled key from the store; retrying every second", "key", key, "err", err)
				}
				failing, got, wait = true, 0, time.Second
			} else {
				failing = false
			}
			if got > 0 {
				kl.mu.Lock()
				kl.state(key).tokens += got
				kl.mu.Unlock()
				kl.onTokens()
			}
			if got >= want {
				break
			}
			// The bucket had fewer: wait until the rest has accrued (at
			// most a second, so that a changed rate or another process's
			// unused share is seen soon), then take again.
			d := now.Add(min(max(wait, 5*time.Millisecond), time.Second)).Sub(kl.clock.Now())
			if d <= 0 {
				continue
			}
			t := kl.clock.NewTimer(d)
			select {
			case <-kl.ctx.Done():
				t.Stop()
				return
			case <-t.Chan():
			}
		}
	}
}
