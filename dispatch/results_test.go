package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/dispatch/dispatchtest"
)

// openSQLite opens a store in a temporary directory, closed when t ends.
func openSQLite(t *testing.T) *dispatchsqlite.Store {
	t.Helper()
	sq, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sq.Close() })
	return sq
}

// countingStore counts the reads of children.
type countingStore struct {
	dispatch.Store
	reads atomic.Int32
}

func (s *countingStore) CallListChildren(ctx context.Context, parentID string) ([]*dispatch.Call, error) {
	s.reads.Add(1)
	return s.Store.CallListChildren(ctx, parentID)
}

// A parent whose children all ran in this process gets their results from
// memory; the store is read only when they did not (see RestartInsideGather
// in dispatchtest for that path).
func TestRuntime_GatherResultsFromMemory(t *testing.T) {
	t.Parallel()
	sq := openSQLite(t)
	s := &countingStore{Store: sq}
	for _, eager := range []bool{false, true} {
		t.Run(map[bool]string{false: "Plain", true: "Eager"}[eager], func(t *testing.T) { // each its own runtime
			gatherFromMemory(t, s, eager)
		})
	}
}

func gatherFromMemory(t *testing.T, s *countingStore, eager bool) {
	{
		child := dispatch.Func("child", func(ctx context.Context, n int) (int, error) { return n * 2, nil })
		parent := dispatch.Func("parent", func(ctx context.Context, n int) (int, error) {
			out, err := child.Gather(ctx, []int{1, 2, 3})
			if err != nil {
				return 0, err
			}
			more, err := child.Await(ctx, out[2])
			return out[0] + out[1] + more, err
		})
		if eager {
			parent.Eager()
		}
		rt := dispatchtest.StartRuntime(t, dispatch.Config{Store: s}, child, parent)
		id, err := parent.Dispatch(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		c := dispatchtest.WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
		if string(c.Output) != "18" {
			t.Fatalf("eager=%v: parent %+v, want done with 2+4+12", eager, c)
		}
		if n := s.reads.Load(); n != 0 {
			t.Fatalf("eager=%v: the parent read its children %d times from the store, want 0", eager, n)
		}
		if st := rt.Stats(); st.ResultsFromMemory != 2 || st.ResultsFromStore != 0 {
			t.Fatalf("eager=%v: Stats %+v, want 2 resumptions from memory", eager, st)
		}
	}
}

// flakyFinishStore fails the first finishes, as a database that restarts.
type flakyFinishStore struct {
	dispatch.Store
	failures atomic.Int32
}

func (s *flakyFinishStore) CallFinish(ctx context.Context, p *dispatch.CallFinishParams) (*dispatch.CallFinishResult, error) {
	if s.failures.Add(-1) >= 0 {
		return nil, errors.New("connection refused")
	}
	return s.Store.CallFinish(ctx, p)
}

// An outcome the store fails to take for a moment is stored once it does,
// without the call running again.
func TestRuntime_FinishRetriedOnStoreErrors(t *testing.T) {
	t.Parallel()
	sq := openSQLite(t)
	s := &flakyFinishStore{Store: sq}
	s.failures.Store(3)
	var runs atomic.Int32
	fn := dispatch.Func("once", func(ctx context.Context, n int) (int, error) {
		runs.Add(1)
		return n, nil
	})
	dispatchtest.StartRuntime(t, dispatch.Config{Store: s}, fn)
	id, err := fn.Dispatch(context.Background(), 7)
	if err != nil {
		t.Fatal(err)
	}
	c := dispatchtest.WaitCall(t, sq, id, dispatch.StateDone)
	if runs.Load() != 1 || c.Attempt != 1 || string(c.Output) != "7" {
		t.Fatalf("call %+v after %d runs, want done on its first and only run", c, runs.Load())
	}
}

// A ResumeInline parent whose children all ran here is run by its last
// child's worker and stored done with it: the store is never asked to
// resume it, and its children read its input from memory.
func TestRuntime_ResumeInline(t *testing.T) {
	t.Parallel()
	sq := openSQLite(t)
	s := &countingStore{Store: sq}
	child := dispatch.Func("child", func(ctx context.Context, n int) (int, error) {
		in, err := dispatch.ParentInput(ctx)
		if err != nil || string(in) != "10" {
			return 0, fmt.Errorf("ParentInput = %q, %v; want the parent's input", in, err)
		}
		if n == 3 {
			// The last child finishes once its siblings are stored, so
			// that its own outcome is the last the parent waits for.
			info, _ := dispatch.CallFromContext(ctx)
			for _, sib := range []string{info.ParentID + ".0.0", info.ParentID + ".0.1"} {
				dispatchtest.WaitCall(t, sq, sib, dispatch.StateDone)
			}
		}
		return n * 2, nil
	})
	var runs atomic.Int32
	parent := dispatch.Func("parent", func(ctx context.Context, n int) (int, error) {
		runs.Add(1)
		out, err := child.Gather(ctx, []int{1, 2, 3})
		if err != nil {
			return 0, err
		}
		return n + out[0] + out[1] + out[2], nil
	}).Eager().ResumeInline()
	rt := dispatchtest.StartRuntime(t, dispatch.Config{Store: s}, child, parent)
	id, err := parent.Dispatch(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	c := dispatchtest.WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
	if string(c.Output) != "22" || c.Attempt != 2 || c.State != dispatch.StateDone {
		t.Fatalf("parent %+v, want done at attempt 2 with 10+2+4+6", c)
	}
	// The worker counts the inline resumption once the store has it done:
	// the parent can be seen done before that. Stop waits for the worker.
	if err := rt.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := rt.Stats()
	if st.ResumedInline != 1 || st.ResultsFromMemory != 0 || st.ResultsFromStore != 0 || st.ParentInputReads != 0 || s.reads.Load() != 0 {
		t.Fatalf("Stats %+v (children read %d times), want one inline resumption, nothing read", st, s.reads.Load())
	}
	if runs.Load() != 2 {
		t.Fatalf("the parent ran %d times, want 2 (first, then inline)", runs.Load())
	}
}
