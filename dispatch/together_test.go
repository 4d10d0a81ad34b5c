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
			st := rt.Stats()
			if st.Local != 5 || st.ResumedInline != 1 {
				t.Fatalf("Stats %+v: want 5 local calls and the parent resumed inline", st)
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
