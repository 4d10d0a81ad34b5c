package dispatchtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"fanout/dispatch"
)

// exerciseBuckets checks dispatch.Buckets, for a store that has it: a bucket
// starts full, refills at its rate up to its burst, keeps fractions, never
// goes back in time, hands out each token once to concurrent takers, and
// survives a reopen. Then two runtimes on one store share a key's rate.
func exerciseBuckets(t *testing.T, open OpenFunc) {
	ctx := context.Background()
	buckets := func(t *testing.T, key string) dispatch.Buckets {
		b, ok := open(t, key).(dispatch.Buckets)
		if !ok {
			t.Skip("the store keeps no buckets: each process keeps its rates in memory")
		}
		return b
	}
	take := func(t *testing.T, b dispatch.Buckets, key string, want int, rate float64, burst int, at time.Duration) int {
		t.Helper()
		n, err := b.BucketTake(ctx, &dispatch.BucketTakeParams{Key: key, Want: want, Rate: rate, Burst: burst, Now: T0.Add(at)})
		if err != nil {
			t.Fatalf("BucketTake: %v", err)
		}
		return n
	}

	t.Run("Refill", func(t *testing.T) {
		t.Parallel()
		b := buckets(t, t.Name())
		for i, step := range []struct {
			key   string
			want  int
			rate  float64
			burst int
			at    time.Duration
			got   int
		}{
			{"k", 3, 10, 5, 0, 3},                                      // a new bucket starts full
			{"k", 5, 10, 5, 0, 2},                                      // the rest of the burst
			{"k", 1, 10, 5, 0, 0},                                      // empty
			{"k", 5, 10, 5, 250 * time.Millisecond, 2},                 // 2.5 accrued: 2 whole
			{"k", 5, 10, 5, 300 * time.Millisecond, 1},                 // the half kept, and half a token more
			{"k", 9, 10, 5, time.Hour, 5},                              // at most the burst
			{"k", 9, 10, 5, 2 * time.Hour, 5},                          // each time
			{"k", 9, 10, 2, 3 * time.Hour, 2},                          // a lower burst holds at once
			{"other", 9, 10, 4, 3 * time.Hour, 4},                      // buckets are per key
			{"k", 1, 10, 2, 3 * time.Hour, 0},                          // and apart
			{"k", 9, 1000, 50, 3*time.Hour - time.Second, 0},           // a clock behind adds nothing
			{"k", 20, 1000, 50, 3*time.Hour + 10*time.Millisecond, 10}, // and did not move the bucket's time back
		} {
			if got := take(t, b, step.key, step.want, step.rate, step.burst, step.at); got != step.got {
				t.Fatalf("step %d: took %d of %d (rate %g, burst %d, at %v), want %d", i, got, step.want, step.rate, step.burst, step.at, step.got)
			}
		}
	})

	t.Run("Fractions", func(t *testing.T) {
		t.Parallel()
		b := buckets(t, t.Name())
		take(t, b, "slow", 1, 0.5, 1, 0) // 1 a 2 seconds; now empty
		total := 0
		for s := 1; s <= 10; s++ {
			total += take(t, b, "slow", 1, 0.5, 1, time.Duration(s)*time.Second)
		}
		if total != 5 {
			t.Fatalf("took %d in 10s at 0.5/s, want 5", total)
		}
	})

	t.Run("ConcurrentTakers", func(t *testing.T) {
		t.Parallel()
		b := buckets(t, t.Name())
		var taken atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 20 {
					taken.Add(int64(take(t, b, "shared", 1, 0.001, 50, 0)))
				}
			})
		}
		wg.Wait()
		if n := taken.Load(); n != 50 {
			t.Fatalf("8 takers took %d tokens of a full bucket of 50, want exactly 50", n)
		}
	})

	t.Run("Reopen", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		b, ok := s.(dispatch.Buckets)
		if !ok {
			t.Skip("the store keeps no buckets")
		}
		if got := take(t, b, "hourly", 10, 10.0/3600, 10, 0); got != 10 {
			t.Fatalf("took %d of a new bucket of 10", got)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		b = open(t, t.Name()).(dispatch.Buckets)
		if got := take(t, b, "hourly", 10, 10.0/3600, 10, time.Minute); got != 0 {
			t.Fatalf("after a reopen a minute later, took %d tokens of an hourly 10: a restart handed out a fresh burst", got)
		}
	})

	t.Run("PerMinuteOnFakeClock", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		if _, ok := s.(dispatch.Buckets); !ok {
			t.Skip("the store keeps no buckets")
		}
		clock := clockwork.NewFakeClockAt(T0)
		started := make(chan int, 10)
		fn := dispatch.Func("minutely", func(ctx context.Context, in keyedItem) (int, error) {
			started <- in.N
			return in.N, nil
		})
		var keys keyConfigs
		keys.set("m", dispatch.KeyConfig{Rate: 2.0 / 60, Burst: 3}) // 2 a minute, 3 at once
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, Keys: keys.get}, fn)
		for i := range 6 {
			if _, err := fn.Dispatch(ctx, keyedItem{K: "m", N: i}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 {
			receive(t, started, fmt.Sprintf("call %d of the burst", i))
		}
		// Then one every 30 seconds: step the clock a second at a time
		// until the next starts; call i may not start before (i-2)×30s.
		// (The runtime may lag the fake clock, so a start is only bounded
		// from below, and loosely from above.)
		for i := 3; i < 6; i++ {
			for {
				select {
				case <-started:
				case <-time.After(10 * time.Millisecond):
					if clock.Since(T0) > time.Duration(i-2)*30*time.Second+20*time.Second {
						t.Fatalf("call %d did not start by %v at 2/minute", i, clock.Since(T0))
					}
					clock.Advance(time.Second)
					continue
				}
				break
			}
			if at := clock.Since(T0); at < time.Duration(i-2)*30*time.Second {
				t.Fatalf("call %d started %v after the first, at 2/minute with a burst of 3 (want %v at the earliest)", i, at, time.Duration(i-2)*30*time.Second)
			}
		}
	})

	t.Run("SharedByRuntimes", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		if _, ok := s.(dispatch.Buckets); !ok {
			t.Skip("the store keeps no buckets")
		}
		var started atomic.Int64
		run := func(ctx context.Context, in keyedItem) (int, error) {
			started.Add(1)
			return in.N, nil
		}
		fn := dispatch.Func("throttled", run)
		var keys keyConfigs
		const rate, burst = 20.0, 2
		keys.set("t", dispatch.KeyConfig{Rate: rate, Burst: burst})
		rt := StartRuntime(t, dispatch.Config{Store: s, Keys: keys.get, Owner: "a", PollInterval: 50 * time.Millisecond}, fn)
		StartRuntime(t, dispatch.Config{Store: s, Keys: keys.get, Owner: "b", PollInterval: 50 * time.Millisecond},
			dispatch.Func("throttled", run))
		begin := time.Now()
		for i := range 200 {
			if _, err := fn.Dispatch(ctx, keyedItem{K: "t", N: i}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second)
		n, elapsed := started.Load(), time.Since(begin).Seconds()
		// The bucket hands out burst + rate × elapsed; each runtime may
		// spend a chunk (rate × 100ms) it took before begin.
		upper := burst + rate*(elapsed+0.1) + 2*2
		if float64(n) > upper || float64(n) < rate*elapsed/2 {
			t.Fatalf("two runtimes started %d calls of a key limited to %g/s in %.2fs, want between %.0f and %.0f",
				n, rate, elapsed, rate*elapsed/2, upper)
		}
		if ks := rt.KeyStatus("t"); ks.Throttled.IsZero() {
			t.Errorf("KeyStatus %+v: the key was held back by its rate, but Throttled is zero", ks)
		}
	})
}
