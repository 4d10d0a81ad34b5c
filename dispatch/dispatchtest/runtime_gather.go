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

	"fanout/dispatch"
)

// exerciseRuntimeGather runs parents and children on the store: Gather with
// mixed outcomes, parents that run again without duplicating a child, a
// restart in the middle of a Gather, and a re-driven child.
func exerciseRuntimeGather(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("MetaTravelsToChildren", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		seen := make(chan string, 4)
		child := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			info, _ := dispatch.CallFromContext(ctx)
			seen <- "child " + string(info.Meta)
			return in.N, nil
		})
		parent := dispatch.Func("parent", func(ctx context.Context, in item) (any, error) {
			info, _ := dispatch.CallFromContext(ctx)
			seen <- "parent " + string(info.Meta)
			_, err := child.Gather(ctx, []item{{N: 1}})
			return nil, err
		})
		rt := StartRuntime(t, dispatch.Config{Store: s}, child, parent)
		call, err := parent.BuildCall(item{})
		if err != nil {
			t.Fatal(err)
		}
		call.Meta, call.Tag = []byte("trace-1"), "kind"
		b := rt.Batch()
		b.Add(call)
		ids, err := b.Dispatch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c := WaitCall(t, s, ids[0], dispatch.StateDone); c.Tag != "kind" || string(c.Meta) != "trace-1" {
			t.Fatalf("stored parent: tag %q meta %q", c.Tag, c.Meta)
		}
		for range 3 { // the parent twice (before and after its Gather), the child once
			if got := receive(t, seen, "a run"); !strings.HasSuffix(got, " trace-1") {
				t.Fatalf("%s ran with meta %q, want its parent's trace-1", got, got)
			}
		}
	})

	t.Run("GatherMixedOutcomes", func(t *testing.T) {
		t.Parallel()
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
		t.Parallel()
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
		t.Parallel()
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

	t.Run("RedriveGather", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		var broken atomic.Bool
		broken.Store(true)
		child := dispatch.Func("child", func(ctx context.Context, in keyedItem) (int, error) {
			if in.Fail && broken.Load() {
				return 0, errors.New("refused")
			}
			return in.N, nil
		})
		parent := dispatch.Func("parent", func(ctx context.Context, in keyedItem) (int, error) {
			out, err := child.Gather(ctx, []keyedItem{{K: "a", N: 1}, {K: "b", N: 2, Fail: true}})
			if err != nil {
				return 0, err
			}
			return out[0] + out[1], nil
		})
		rt := StartRuntime(t, dispatch.Config{Store: s}, child, parent)
		id, err := parent.Dispatch(ctx, keyedItem{})
		if err != nil {
			t.Fatal(err)
		}
		if p := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed); p.State != dispatch.StateFailed {
			t.Fatalf("parent %+v, want failed", p)
		}
		broken.Store(false)
		done, err := rt.Redrive(ctx, []string{id + ".0.1", id + ".0.0"})
		if err != nil || len(done) != 1 || done[0] != id+".0.1" {
			t.Fatalf("Redrive = %v, %v; want only the failed child", done, err)
		}
		if p := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed); p.State != dispatch.StateDone || string(p.Output) != "3" {
			t.Fatalf("parent after re-drive %+v, want done with 3", p)
		}
	})
}
