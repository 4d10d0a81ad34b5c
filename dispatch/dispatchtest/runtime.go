package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"fanout/dispatch"
)

// waitTimeout bounds every wait of the suite: a runtime that loses work
// fails the test instead of hanging it.
const waitTimeout = 20 * time.Second

// StartRuntime starts a runtime on s for a test and stops it at cleanup.
func StartRuntime(t testing.TB, cfg dispatch.Config, fns ...dispatch.AnyFunction) *dispatch.Runtime {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16
	}
	rt, err := dispatch.New(&cfg, fns...)
	if err != nil {
		t.Fatalf("dispatch.New: %v", err)
	}
	if err := rt.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rt.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return rt
}

// WaitCall waits until the call is in one of the states and returns it.
func WaitCall(t testing.TB, s dispatch.Store, id string, states ...dispatch.State) *dispatch.Call {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := s.CallGet(context.Background(), id)
		if err != nil && !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("CallGet(%s): %v", id, err)
		}
		if c != nil {
			for _, st := range states {
				if c.State == st {
					return c
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("call %s is %+v after %v, want state %v", id, c, waitTimeout, states)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func receive[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

type item struct {
	N    int  `json:"n"`
	Fail bool `json:"fail,omitempty"`
}

// exerciseRuntime runs the runtime on the store: dispatch, eager first
// attempts, batches, concurrent dispatches, dedup keys, and misuse.
func exerciseRuntime(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("DispatchRuns", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		double := dispatch.Func("double", func(ctx context.Context, in item) (int, error) {
			info, ok := dispatch.CallFromContext(ctx)
			if !ok || info.ID == "" || info.Attempt != 1 {
				return 0, fmt.Errorf("CallFromContext = %+v, %v", info, ok)
			}
			return in.N * 2, nil
		})
		StartRuntime(t, dispatch.Config{Store: s}, double)
		id, err := double.Dispatch(ctx, item{N: 21})
		if err != nil {
			t.Fatal(err)
		}
		c := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
		if c.State != dispatch.StateDone || string(c.Output) != "42" {
			t.Fatalf("call %+v, want done with output 42", c)
		}
	})

	t.Run("EagerFirstAttempt", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		release := make(chan struct{})
		child := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			<-release
			return in.N, nil
		})
		var runs atomic.Int32
		parent := dispatch.Func("parent", func(ctx context.Context, in item) (int, error) {
			runs.Add(1)
			switch in.N {
			case 0: // no children: done on the spot
				return 7, nil
			case 1:
				return 0, fmt.Errorf("%w: not yet", dispatch.ErrTemporary)
			case 2:
				return 0, errors.New("never")
			}
			out, err := child.Gather(ctx, []item{{N: 1}, {N: 2}})
			if err != nil {
				return 0, err
			}
			return out[0] + out[1], nil
		}).Eager()
		clock := clockwork.NewFakeClockAt(T0)
		policy := &dispatch.Backoff{Initial: time.Minute, MaxAttempts: 3, RandFunc: func() float64 { return 0.5 }}
		rt := StartRuntime(t, dispatch.Config{Store: s, Clock: clock, RetryPolicy: policy}, child, parent)
		ids := make([]string, 4)
		for n := range ids {
			id, err := parent.Dispatch(ctx, item{N: n})
			if err != nil {
				t.Fatal(err)
			}
			ids[n] = id
		}
		if got := runs.Load(); got != 4 {
			t.Fatalf("the eager function ran %d times during Dispatch, want 4", got)
		}
		// Stored with the outcome of the first attempt, without waiting for a worker.
		if c := mustGet(t, s, ids[0]); c.State != dispatch.StateDone || string(c.Output) != "7" || c.Attempt != 1 {
			t.Fatalf("call without children %+v, want stored done with 7", c)
		}
		if c := mustGet(t, s, ids[1]); c.State != dispatch.StatePending || c.Failures != 1 ||
			!c.RunAfter.Equal(T0.Add(30*time.Second)) || !strings.Contains(c.Error, "not yet") {
			t.Fatalf("temporary failure %+v, want stored pending for a retry at T0+30s", c)
		}
		if c := mustGet(t, s, ids[2]); c.State != dispatch.StateFailed || c.Error != "never" {
			t.Fatalf("permanent failure %+v, want stored failed", c)
		}
		p := mustGet(t, s, ids[3])
		if p.State != dispatch.StateWaiting || p.Gathers != 1 || p.Waiting != 2 {
			t.Fatalf("gathering call %+v, want stored waiting on 2 children", p)
		}
		kids, err := s.CallListChildren(ctx, ids[3])
		if err != nil || len(kids) != 2 {
			t.Fatalf("children stored with the call: %d, %v", len(kids), err)
		}
		close(release)
		if c := WaitCall(t, s, ids[3], dispatch.StateDone, dispatch.StateFailed); c.State != dispatch.StateDone || string(c.Output) != "3" {
			t.Fatalf("parent %+v, want done with 3", c)
		}
		if st := rt.Stats(); st.Eager != 4 {
			t.Fatalf("Stats().Eager = %d, want 4", st.Eager)
		}
	})

	t.Run("OnAttempt", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		reports := make(chan dispatch.AttemptReport, 16)
		var failedOnce atomic.Bool
		child := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			if in.N == 2 && failedOnce.CompareAndSwap(false, true) {
				return 0, fmt.Errorf("%w: once", dispatch.ErrTemporary)
			}
			return in.N, nil
		})
		parent := dispatch.Func("parent", func(ctx context.Context, in item) (int, error) {
			out, err := child.Gather(ctx, []item{{N: 1}, {N: 2}})
			if err != nil {
				return 0, err
			}
			return out[0] + out[1], nil
		}).Eager()
		policy := &dispatch.Backoff{Initial: time.Millisecond, MaxAttempts: 3}
		StartRuntime(t, dispatch.Config{Store: s, RetryPolicy: policy,
			OnAttempt: func(a dispatch.AttemptReport) { reports <- a }}, child, parent)
		id, err := parent.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		WaitCall(t, s, id, dispatch.StateDone)
		type seen struct {
			call    string
			outcome dispatch.State
			eager   bool
		}
		var got []seen
		for range 5 { // the parent twice, child 0 once, child 1 twice
			a := receive(t, reports, "an attempt report")
			if a.Duration < 0 || a.Started.IsZero() || (a.Outcome == dispatch.StatePending) != (a.Err != nil) {
				t.Fatalf("report %+v", a)
			}
			got = append(got, seen{a.Call.ID, a.Outcome, a.Eager})
		}
		want := map[seen]int{
			{id, dispatch.StateWaiting, true}: 1, {id, dispatch.StateDone, false}: 1,
			{id + ".0.0", dispatch.StateDone, false}:    1,
			{id + ".0.1", dispatch.StatePending, false}: 1, {id + ".0.1", dispatch.StateDone, false}: 1,
		}
		for _, g := range got {
			want[g]--
		}
		for w, n := range want {
			if n != 0 {
				t.Fatalf("reports %+v: %+v seen %d times too few", got, w, n)
			}
		}
	})

	t.Run("ConcurrentDispatch", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		const goroutines, each = 50, 20
		var ran atomic.Int32
		all := make(chan struct{})
		count := dispatch.Func("count", func(ctx context.Context, in item) (any, error) {
			if ran.Add(1) == goroutines*each {
				close(all)
			}
			return nil, nil
		})
		rt := StartRuntime(t, dispatch.Config{Store: s, Workers: 32}, count)
		var mu sync.Mutex
		seen := make(map[string]bool)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					var id string
					var err error
					if i%2 == 0 {
						id, err = count.Dispatch(ctx, item{N: g*each + i})
					} else {
						b := rt.Batch()
						c, _ := count.BuildCall(item{N: g*each + i})
						b.Add(c)
						var got []string
						got, err = b.Dispatch(ctx)
						if err == nil {
							id = got[0]
						}
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if seen[id] {
						t.Errorf("id %s returned twice", id)
					}
					seen[id] = true
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		receive(t, all, "every dispatched call to run")
		if len(seen) != goroutines*each {
			t.Fatalf("%d distinct ids, want %d", len(seen), goroutines*each)
		}
	})

	t.Run("BatchIsOrdered", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		echo := dispatch.Func("echo", func(ctx context.Context, in item) (int, error) { return in.N, nil })
		rt := StartRuntime(t, dispatch.Config{Store: s}, echo)
		b := rt.Batch()
		for i := range 100 {
			c, err := echo.BuildCall(item{N: i})
			if err != nil {
				t.Fatal(err)
			}
			b.Add(c)
		}
		got, err := b.Dispatch(ctx)
		if err != nil || len(got) != 100 {
			t.Fatalf("Batch.Dispatch = %d ids, %v", len(got), err)
		}
		for i, id := range got {
			c := WaitCall(t, s, id, dispatch.StateDone)
			if string(c.Output) != fmt.Sprint(i) {
				t.Fatalf("call %d output %s: ids are not in the order of the batch", i, c.Output)
			}
			if i > 0 && !(got[i-1] < id) {
				t.Fatalf("ids %s, %s are not time-ordered", got[i-1], id)
			}
		}
	})

	t.Run("DedupKey", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		var runs atomic.Int32
		fn := dispatch.Func("once", func(ctx context.Context, in keyedItem) (int, error) {
			runs.Add(1)
			return in.N, nil
		})
		rt := StartRuntime(t, dispatch.Config{Store: s}, fn)
		dispatchKey := func(key string) string {
			t.Helper()
			c, err := fn.BuildCall(keyedItem{N: 1})
			if err != nil {
				t.Fatal(err)
			}
			c.DedupKey = key
			b := rt.Batch()
			b.Add(c)
			ids, err := b.Dispatch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return ids[0]
		}
		first := dispatchKey("order-17")
		WaitCall(t, s, first, dispatch.StateDone)
		if again := dispatchKey("order-17"); again != first {
			t.Fatalf("a repeat returned %s, want the original %s", again, first)
		}
		if other := dispatchKey("order-18"); other == first {
			t.Fatal("another key returned the same id")
		}
		if n := runs.Load(); n > 2 {
			t.Fatalf("function ran %d times for 2 distinct keys", n)
		}
	})

	t.Run("MisuseIsAnError", func(t *testing.T) {
		t.Parallel()
		loose := dispatch.Func("loose", func(ctx context.Context, in item) (int, error) { return 0, nil })
		if _, err := loose.Dispatch(ctx, item{}); !errors.Is(err, dispatch.ErrNotRegistered) {
			t.Fatalf("Dispatch of an unregistered function: err=%v, want ErrNotRegistered", err)
		}
		if _, err := loose.Gather(ctx, []item{{}}); !errors.Is(err, dispatch.ErrNotInCall) {
			t.Fatalf("Gather outside a call: err=%v, want ErrNotInCall", err)
		}
	})
}
