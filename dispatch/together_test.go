package dispatch_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/dispatchtest"
)

// manyCounting counts the finishes the runtime stores, and in how many
// store operations.
type manyCounting struct {
	dispatch.Store
	finishes, manyOps, manyFinishes atomic.Int32
}

func (s *manyCounting) CallFinish(ctx context.Context, p *dispatch.CallFinishParams) (*dispatch.CallFinishResult, error) {
	s.finishes.Add(1)
	return s.Store.CallFinish(ctx, p)
}

func (s *manyCounting) CallFinishMany(ctx context.Context, ps []*dispatch.CallFinishParams) ([]*dispatch.CallFinishResult, error) {
	s.manyOps.Add(1)
	s.manyFinishes.Add(int32(len(ps)))
	return s.Store.(dispatch.ManyFinisher).CallFinishMany(ctx, ps)
}

// The local calls of one parent that end together are stored in one
// operation, the parent finished inline with them; those that do not end
// together are stored one by one, and the parent still gets every outcome.
func TestRuntime_LocalCallsStoredTogether(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		hold     time.Duration // how long child 0 runs after the others
		together bool
	}{
		{"EndTogether", 0, true},
		{"OneLate", 200 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &manyCounting{Store: openSQLite(t)}
			var started sync.WaitGroup
			started.Add(5)
			release := make(chan struct{})
			child := dispatch.Func("child", func(ctx context.Context, n int) (int, error) {
				started.Done()
				<-release // all five run at once, then end at once
				if n == 0 {
					time.Sleep(tc.hold)
				}
				return n * 10, nil
			})
			parent := dispatch.Func("parent", func(ctx context.Context, n int) (int, error) {
				out, err := child.Gather(ctx, []int{0, 1, 2, 3, 4})
				sum := 0
				for _, o := range out {
					sum += o
				}
				return sum, err
			}).Eager().ResumeInline()
			rt := dispatchtest.StartRuntime(t, dispatch.Config{Store: s}, child, parent)
			id, err := parent.Dispatch(context.Background(), 0)
			if err != nil {
				t.Fatal(err)
			}
			started.Wait()
			close(release)
			c := dispatchtest.WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
			if string(c.Output) != "100" {
				t.Fatalf("parent %+v, want done with 100", c)
			}
			// The worker counts the inline run once the store answered,
			// which may be after WaitCall saw the parent done.
			st := rt.Stats()
			for deadline := time.Now().Add(5 * time.Second); st.ResumedInline == 0 && time.Now().Before(deadline); st = rt.Stats() {
				time.Sleep(time.Millisecond)
			}
			if st.Local != 5 || st.ResumedInline != 1 {
				t.Fatalf("Stats %+v: want 5 local calls and the parent resumed inline (finishes alone %d, together %d in %d operations)", st, s.finishes.Load(), s.manyFinishes.Load(), s.manyOps.Load())
			}
			single, ops, grouped := s.finishes.Load(), s.manyOps.Load(), s.manyFinishes.Load()
			if single+grouped != 5 {
				t.Fatalf("%d finishes alone and %d together, want 5 in all", single, grouped)
			}
			// All five in one operation, but for one a busy machine kept
			// from running within the wait.
			if tc.together && (ops < 1 || grouped < 4) {
				t.Errorf("5 local calls that ended together: %d alone, %d in %d operations; want them together", single, grouped, ops)
			}
			if !tc.together && single+ops < 2 {
				t.Errorf("a local call 200ms late was stored with its siblings (%d alone, %d operations)", single, ops)
			}
		})
	}
}

// keyedN is an input whose key is K.
type keyedN struct {
	K string `json:"k"`
	N int    `json:"n"`
}

func (k keyedN) DispatchKey() string { return k.K }

// Only a child that can run at once is a local call: one whose key is
// full, paused or out of its rate is stored as before, and so is a retry
// after a failed first attempt; every child still ends done.
func TestRuntime_LocalOnlyWhenRunnable(t *testing.T) {
	t.Parallel()
	var tries sync.Map
	child := dispatch.Func("child", func(ctx context.Context, in keyedN) (int, error) {
		if in.K == "flaky" {
			if _, again := tries.LoadOrStore(in.N, true); !again {
				return 0, dispatch.ErrTemporary // the first attempt fails
			}
		}
		return in.N, nil
	})
	parent := dispatch.Func("parent", func(ctx context.Context, n int) (int, error) {
		out, err := child.Gather(ctx, []keyedN{{"one", 1}, {"one", 2}, {"one", 3}, {"paused", 4}, {"free", 5}, {"flaky", 6}})
		sum := 0
		for _, o := range out {
			sum += o
		}
		return sum, err
	}).Eager()
	var paused atomic.Bool
	paused.Store(true)
	keys := func(key string) dispatch.KeyConfig {
		switch key {
		case "one":
			return dispatch.KeyConfig{MaxConcurrency: 1}
		case "paused":
			return dispatch.KeyConfig{Paused: paused.Load()}
		}
		return dispatch.KeyConfig{}
	}
	s := openSQLite(t)
	rt := dispatchtest.StartRuntime(t, dispatch.Config{Store: s, Keys: keys, RetryPolicy: &dispatch.Backoff{Initial: time.Millisecond,
		Max: time.Millisecond, MaxAttempts: 5}}, child, parent)
	id, err := parent.Dispatch(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	// "one" runs one at a time: 1 local, 2 stored; "paused" stored;
	// "free" and "flaky" local (flaky's retry is stored).
	if st := rt.Stats(); st.Local != 3 {
		t.Errorf("Stats.Local = %d, want 3 (one of key one, free, flaky)", st.Local)
	}
	time.Sleep(50 * time.Millisecond)
	if c := mustGetCall(t, s, id+".0.3"); c.State != dispatch.StatePending {
		t.Errorf("the child of the paused key is %v, want stored pending", c.State)
	}
	paused.Store(false)
	rt.KeysChanged()
	c := dispatchtest.WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
	if c.State != dispatch.StateDone || string(c.Output) != "21" {
		t.Fatalf("parent %+v, want done with 21", c)
	}
	if f := mustGetCall(t, s, id+".0.5"); f.Attempt != 2 || f.Failures != 1 {
		t.Errorf("the flaky child: attempt %d, failures %d; want its retry stored and run: 2, 1", f.Attempt, f.Failures)
	}
}

func mustGetCall(t *testing.T, s dispatch.Store, id string) *dispatch.Call {
	t.Helper()
	c, err := s.CallGet(context.Background(), id)
	if err != nil {
		t.Fatalf("CallGet(%s): %v", id, err)
	}
	return c
}
