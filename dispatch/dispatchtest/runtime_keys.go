package dispatchtest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"fanout/dispatch"
)

// keyedItem is an input with a key.
type keyedItem struct {
	K    string `json:"k"`
	N    int    `json:"n"`
	Fail bool   `json:"fail,omitempty"`
}

func (k keyedItem) DispatchKey() string { return k.K }

// keyConfigs is a Config.Keys that tests change as they go.
type keyConfigs struct {
	mu   sync.Mutex
	keys map[string]dispatch.KeyConfig
}

func (k *keyConfigs) get(key string) dispatch.KeyConfig {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys[key]
}

func (k *keyConfigs) set(key string, c dispatch.KeyConfig) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil {
		k.keys = map[string]dispatch.KeyConfig{}
	}
	k.keys[key] = c
}

// exerciseRuntimeKeys runs keyed calls on the store: concurrency limits,
// paused keys, the circuit breaker, rates, and a key's own retry policy.
func exerciseRuntimeKeys(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("KeyConcurrency", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		var running, peak atomic.Int32
		release := make(chan struct{})
		fn := dispatch.Func("limited", func(ctx context.Context, in keyedItem) (int, error) {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			running.Add(-1)
			return in.N, nil
		})
		var keys keyConfigs
		keys.set("k", dispatch.KeyConfig{MaxConcurrency: 2})
		rt := StartRuntime(t, dispatch.Config{Store: s, Workers: 16, Keys: keys.get}, fn)
		var ids []string
		for i := range 8 {
			id, err := fn.Dispatch(ctx, keyedItem{K: "k", N: i})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		other, err := fn.Dispatch(ctx, keyedItem{K: "other", N: 99})
		if err != nil {
			t.Fatal(err)
		}
		// The other key is not held back by k's limit.
		deadline := time.Now().Add(waitTimeout)
		for running.Load() < 3 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if st := rt.KeyStatus("k"); st.InFlight != 2 {
			t.Fatalf("key k has %d calls in flight, want 2 (its limit)", st.InFlight)
		}
		close(release)
		for _, id := range append(ids, other) {
			WaitCall(t, s, id, dispatch.StateDone)
		}
		if p := peak.Load(); p != 3 {
			t.Fatalf("peak concurrency %d, want 3: 2 of key k and 1 of the other", p)
		}
	})

	t.Run("PausedKey", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		var runs atomic.Int32
		fn := dispatch.Func("pausable", func(ctx context.Context, in keyedItem) (int, error) {
			runs.Add(1)
			return in.N, nil
		})
		var keys keyConfigs
		keys.set("p", dispatch.KeyConfig{Paused: true})
		rt := StartRuntime(t, dispatch.Config{Store: s, Keys: keys.get}, fn)
		var ids []string
		for i := range 3 {
			id, err := fn.Dispatch(ctx, keyedItem{K: "p", N: i})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
			if c := mustGet(t, s, id); c.State != dispatch.StatePending {
				t.Fatalf("call of a paused key stored %v, want pending (not leased)", c.State)
			}
		}
		if n := runs.Load(); n != 0 {
			t.Fatalf("%d calls of a paused key ran", n)
		}
		keys.set("p", dispatch.KeyConfig{})
		rt.KeysChanged()
		for _, id := range ids {
			WaitCall(t, s, id, dispatch.StateDone)
		}
	})

	t.Run("BreakerTrips", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		fn := dispatch.Func("down", func(ctx context.Context, in keyedItem) (int, error) {
			return 0, &detailedError{code: 503}
		})
		trips := make(chan string, 4)
		policy := &dispatch.Backoff{Min: time.Millisecond, Initial: time.Millisecond, Max: time.Millisecond, MaxAttempts: 50}
		StartRuntime(t, dispatch.Config{Store: s, RetryPolicy: policy, BreakerFailures: 5,
			OnKeyTrip: func(key, reason string) { trips <- key + ": " + reason }}, fn)
		if _, err := fn.Dispatch(ctx, keyedItem{K: "dead"}); err != nil {
			t.Fatal(err)
		}
		got := receive(t, trips, "the breaker to trip")
		if !strings.HasPrefix(got, "dead: 5 attempts in a row failed") {
			t.Fatalf("OnKeyTrip got %q", got)
		}
	})

	t.Run("RateOnFakeClock", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		clock := clockwork.NewFakeClockAt(T0)
		started := make(chan int, 10)
		fn := dispatch.Func("paced", func(ctx context.Context, in keyedItem) (int, error) {
			started <- in.N
			return in.N, nil
		})
		var keys keyConfigs
		keys.set("r", dispatch.KeyConfig{Rate: 1, Burst: 1})
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, Keys: keys.get}, fn)
		for i := range 3 {
			if _, err := fn.Dispatch(ctx, keyedItem{K: "r", N: i}); err != nil {
				t.Fatal(err)
			}
		}
		receive(t, started, "the first call")
		select {
		case n := <-started:
			t.Fatalf("call %d started in the same second as the first, over a rate of 1/s", n)
		case <-time.After(50 * time.Millisecond):
		}
		for i := 1; i < 3; i++ {
			clock.Advance(time.Second)
			receive(t, started, fmt.Sprintf("call %d, a second later", i))
		}
	})

	t.Run("KeyRetryPolicy", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		fn := dispatch.Func("strict", func(ctx context.Context, in keyedItem) (int, error) {
			return 0, dispatch.ErrTimeout
		})
		var keys keyConfigs
		keys.set("strict", dispatch.KeyConfig{RetryPolicy: &dispatch.Backoff{MaxAttempts: 1}})
		StartRuntime(t, dispatch.Config{Store: s, Keys: keys.get}, fn)
		id, err := fn.Dispatch(ctx, keyedItem{K: "strict"})
		if err != nil {
			t.Fatal(err)
		}
		if c := WaitCall(t, s, id, dispatch.StateFailed, dispatch.StateDone); c.State != dispatch.StateFailed || c.Failures != 1 {
			t.Fatalf("call %+v, want failed after the key's single attempt", c)
		}
	})
}
