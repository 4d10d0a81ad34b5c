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

func exerciseRuntime(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("DispatchRuns", func(t *testing.T) {
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

	t.Run("RetryOnFakeClock", func(t *testing.T) {
		s := open(t, t.Name())
		clock := clockwork.NewFakeClockAt(T0)
		policy := &dispatch.Backoff{Initial: time.Minute, Max: time.Hour, MaxAttempts: 5, RandFunc: func() float64 { return 0.5 }}
		runs := make(chan int, 10)
		var n atomic.Int32
		flaky := dispatch.Func("flaky", func(ctx context.Context, in item) (string, error) {
			k := int(n.Add(1))
			runs <- k
			if k < 3 {
				return "", fmt.Errorf("%w: upstream busy (run %d)", dispatch.ErrTemporary, k)
			}
			return "ok", nil
		})
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, RetryPolicy: policy}, flaky)
		id, err := flaky.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		// Delays: jitter 0.5 of 1m, then 0.5 of 2m.
		wantAt := []time.Time{T0.Add(30 * time.Second), T0.Add(30*time.Second + time.Minute)}
		for i, at := range wantAt {
			receive(t, runs, fmt.Sprintf("run %d", i+1))
			c := WaitCall(t, s, id, dispatch.StatePending)
			for c.Failures != i+1 {
				c = WaitCall(t, s, id, dispatch.StatePending)
			}
			if !c.RunAfter.Equal(at) || !strings.Contains(c.Error, "upstream busy") || c.Status != dispatch.StatusTemporary {
				t.Fatalf("after failure %d: %+v, want pending until %v with the error", i+1, c, at)
			}
			clock.Advance(at.Sub(clock.Now()) - time.Second)
			select {
			case k := <-runs:
				t.Fatalf("run %d happened a second before its retry time", k)
			default:
			}
			clock.Advance(time.Second)
		}
		receive(t, runs, "run 3")
		c := WaitCall(t, s, id, dispatch.StateDone)
		if c.Attempt != 3 || c.Failures != 2 || string(c.Output) != `"ok"` {
			t.Fatalf("call %+v, want done on attempt 3 after 2 failures", c)
		}
	})

	t.Run("RetryAfterHint", func(t *testing.T) {
		s := open(t, t.Name())
		clock := clockwork.NewFakeClockAt(T0)
		throttled := dispatch.Func("throttled", func(ctx context.Context, in item) (any, error) {
			return nil, dispatch.RetryAfter(fmt.Errorf("%w: 429", dispatch.ErrThrottled), 5*time.Minute)
		})
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, RetryPolicy: dispatch.DefaultBackoff()}, throttled)
		id, err := throttled.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		c := WaitCall(t, s, id, dispatch.StatePending, dispatch.StateFailed)
		for c.Failures == 0 {
			c = WaitCall(t, s, id, dispatch.StatePending, dispatch.StateFailed)
		}
		if c.State != dispatch.StatePending || !c.RunAfter.Equal(T0.Add(5*time.Minute)) || c.Status != dispatch.StatusThrottled {
			t.Fatalf("call %+v, want a throttled retry at T0+5m as asked", c)
		}
	})

	t.Run("BudgetSpentAndPermanentErrors", func(t *testing.T) {
		s := open(t, t.Name())
		policy := &dispatch.Backoff{Min: time.Millisecond, Initial: time.Millisecond, MaxAttempts: 3}
		always := dispatch.Func("always", func(ctx context.Context, in item) (any, error) {
			return nil, dispatch.ErrTimeout
		})
		final := dispatch.Func("final", func(ctx context.Context, in item) (any, error) {
			return nil, errors.New("bad request")
		})
		panics := dispatch.Func("panics", func(ctx context.Context, in item) (any, error) {
			panic("boom")
		})
		StartRuntime(t, dispatch.Config{Store: s, RetryPolicy: policy}, always, final, panics)
		cases := []struct {
			fn interface {
				Dispatch(context.Context, item) (string, error)
			}
			failures  int
			errSubstr string
		}{
			{always, 3, "gave up after 3 attempts"},
			{final, 1, "bad request"},
			{panics, 1, "panic: boom"},
		}
		for _, tc := range cases {
			id, err := tc.fn.Dispatch(ctx, item{})
			if err != nil {
				t.Fatal(err)
			}
			c := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
			if c.State != dispatch.StateFailed || c.Failures != tc.failures || !strings.Contains(c.Error, tc.errSubstr) {
				t.Fatalf("call %+v, want failed after %d attempts with %q", c, tc.failures, tc.errSubstr)
			}
		}
	})

	t.Run("GatherMixedOutcomes", func(t *testing.T) {
		s := open(t, t.Name())
		child := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			if in.Fail {
				return 0, fmt.Errorf("item %d refused", in.N)
			}
			return in.N * 10, nil
		})
		type seen struct {
			out []int
			err error
		}
		results := make(chan seen, 4)
		parent := dispatch.Func("parent", func(ctx context.Context, in item) (any, error) {
			items := make([]item, 5)
			for i := range items {
				items[i] = item{N: i, Fail: i == 1 || i == 3}
			}
			out, err := child.Gather(ctx, items)
			if out != nil {
				results <- seen{out, err}
			}
			return nil, err
		})
		StartRuntime(t, dispatch.Config{Store: s}, child, parent)
		id, err := parent.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		p := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
		got := receive(t, results, "the parent's gather results")
		var ge *dispatch.GatherError
		if !errors.As(got.err, &ge) || len(ge.Failed) != 2 || ge.Failed[0].Index != 1 || ge.Failed[1].Index != 3 ||
			!strings.Contains(ge.Failed[0].Message, "item 1 refused") {
			t.Fatalf("Gather error = %v, want a GatherError for items 1 and 3", got.err)
		}
		if want := []int{0, 0, 20, 0, 40}; fmt.Sprint(got.out) != fmt.Sprint(want) {
			t.Fatalf("Gather outputs = %v, want %v", got.out, want)
		}
		if p.State != dispatch.StateFailed || !strings.Contains(p.Error, "2 of 5 calls failed") || p.Failures != 1 {
			t.Fatalf("parent %+v, want failed once, permanently, naming 2 of 5", p)
		}
		kids, err := s.CallListChildren(ctx, id)
		if err != nil || len(kids) != 5 {
			t.Fatalf("children: %d, %v", len(kids), err)
		}
		for i, k := range kids {
			want := dispatch.StateDone
			if i == 1 || i == 3 {
				want = dispatch.StateFailed
			}
			if k.State != want || k.Attempt != 1 {
				t.Fatalf("child %d %+v, want %v after one attempt (permanent errors are not retried)", i, k, want)
			}
		}
	})

	t.Run("ParentRunsAgainWithoutDuplicates", func(t *testing.T) {
		s := open(t, t.Name())
		var childRuns sync.Map
		child := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			info, _ := dispatch.CallFromContext(ctx)
			n, _ := childRuns.LoadOrStore(info.ID, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			return in.N + 1, nil
		})
		var parentRuns atomic.Int32
		sums := make(chan int, 1)
		parent := dispatch.Func("parent", func(ctx context.Context, in item) (int, error) {
			parentRuns.Add(1)
			first, err := child.Gather(ctx, []item{{N: 1}, {N: 2}, {N: 3}})
			if err != nil {
				return 0, err
			}
			second, err := child.Await(ctx, item{N: first[0] + first[1] + first[2]})
			if err != nil {
				return 0, err
			}
			sums <- second
			return second, nil
		})
		StartRuntime(t, dispatch.Config{Store: s}, child, parent)
		id, err := parent.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		p := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
		if got := receive(t, sums, "the parent's result"); got != 10 || string(p.Output) != "10" {
			t.Fatalf("parent result %d (%s), want 10", got, p.Output)
		}
		if got := parentRuns.Load(); got != 3 {
			t.Fatalf("parent ran %d times, want 3 (start, after gather, after await)", got)
		}
		kids, err := s.CallListChildren(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{id + ".0.0", id + ".0.1", id + ".0.2", id + ".1.0"}; fmt.Sprint(ids(kids)) != fmt.Sprint(want) {
			t.Fatalf("children %v, want %v", ids(kids), want)
		}
		childRuns.Range(func(k, v any) bool {
			if n := v.(*atomic.Int32).Load(); n != 1 {
				t.Errorf("child %v ran %d times, want once", k, n)
			}
			return true
		})
	})

	t.Run("RestartInsideGather", func(t *testing.T) {
		key := t.Name()
		s := open(t, key)
		started := make(chan string, 10)
		blocked := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			info, _ := dispatch.CallFromContext(ctx)
			started <- info.ID
			<-ctx.Done() // until shutdown cancels it
			return 0, ctx.Err()
		})
		parentFn := func(child *dispatch.Function[item, int]) *dispatch.Function[item, int] {
			return dispatch.Func("parent", func(ctx context.Context, in item) (int, error) {
				out, err := child.Gather(ctx, []item{{N: 1}, {N: 2}, {N: 3}})
				if err != nil {
					return 0, err
				}
				return out[0] + out[1] + out[2], nil
			})
		}
		parent := parentFn(blocked)
		rt, err := dispatch.New(&dispatch.Config{Store: s, Workers: 8,
			Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))}, blocked, parent)
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Start(ctx); err != nil {
			t.Fatal(err)
		}
		id, err := parent.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			receive(t, started, fmt.Sprintf("child %d to start", i))
		}
		stopCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		if err := rt.Stop(stopCtx); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = open(t, key)
		if p := mustGet(t, s, id); p.State != dispatch.StateWaiting {
			t.Fatalf("parent after restart %+v, want waiting", p)
		}
		var runs atomic.Int32
		working := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			runs.Add(1)
			return in.N, nil
		})
		StartRuntime(t, dispatch.Config{Store: s}, working, parentFn(working))
		p := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
		if p.State != dispatch.StateDone || string(p.Output) != "6" {
			t.Fatalf("parent %+v, want done with 6", p)
		}
		if got := runs.Load(); got != 3 {
			t.Fatalf("children ran %d times after restart, want 3", got)
		}
		kids, err := s.CallListChildren(ctx, id)
		if err != nil || len(kids) != 3 {
			t.Fatalf("children after restart: %d, %v; want 3", len(kids), err)
		}
	})

	t.Run("EagerFirstAttempt", func(t *testing.T) {
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

	t.Run("ConcurrentDispatch", func(t *testing.T) {
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

	t.Run("MisuseIsAnError", func(t *testing.T) {
		loose := dispatch.Func("loose", func(ctx context.Context, in item) (int, error) { return 0, nil })
		if _, err := loose.Dispatch(ctx, item{}); !errors.Is(err, dispatch.ErrNotRegistered) {
			t.Fatalf("Dispatch of an unregistered function: err=%v, want ErrNotRegistered", err)
		}
		if _, err := loose.Gather(ctx, []item{{}}); !errors.Is(err, dispatch.ErrNotInCall) {
			t.Fatalf("Gather outside a call: err=%v, want ErrNotInCall", err)
		}
	})
}
