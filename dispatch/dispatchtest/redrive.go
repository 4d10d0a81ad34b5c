package dispatchtest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseRedrive covers CallRedrive: failed calls run again with a fresh
// budget, and their parent waits for them again.
func exerciseRedrive(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("Redrive", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		// p gathered two children; one succeeded, one failed for good, so p failed.
		mustInsert(t, s, &dispatch.Call{ID: "p", Function: "parent", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0,
			State: dispatch.StateWaiting, Gathers: 1, Waiting: 2},
			&dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", RunAfter: T0, CreatedAt: T0},
			&dispatch.Call{ID: "p.0.1", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 1, RunAfter: T0, CreatedAt: T0},
			newCall("top", "f", `{}`, T0))
		for _, c := range mustClaim(t, s, "o", T0, 10) {
			state := dispatch.StateFailed
			if c.ID == "p.0.0" {
				state = dispatch.StateDone
			}
			mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID, State: state,
				Error: "gone", Status: dispatch.StatusPermanent})
		}
		pc := mustClaim(t, s, "o", T0, 10, "parent")[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "p", Attempt: pc.Attempt, State: dispatch.StateFailed, Error: "1 of 2 calls failed"})

		later := T0.Add(time.Hour)
		done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: []string{"p.0.1", "p.0.0", "top", "nope"}, Now: later})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"p.0.1", "top"}; !slices.Equal(done, want) {
			t.Fatalf("CallRedrive = %v, want %v (only failed calls)", done, want)
		}
		c := mustGet(t, s, "p.0.1")
		if c.State != dispatch.StatePending || c.Failures != 0 || !c.BudgetStart.Equal(later) || !c.RunAfter.Equal(later) {
			t.Fatalf("re-driven child %+v, want pending now with a fresh budget", c)
		}
		if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 1 {
			t.Fatalf("parent %+v, want waiting for the re-driven child", p)
		}
		child := mustClaim(t, s, "o", later, 10)
		if want := []string{"p.0.1", "top"}; !slices.Equal(sorted(ids(child)), want) {
			t.Fatalf("claimed %v after re-drive, want %v", ids(child), want)
		}
		for _, c := range child {
			if c.ID != "p.0.1" {
				continue
			}
			res := mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: "p", State: dispatch.StateDone})
			if !res.ParentResumed {
				t.Fatal("the re-driven child finished but its parent did not resume")
			}
		}
		// A call whose parent is running is left alone.
		p := mustClaim(t, s, "o", later, 10, "parent")[0]
		mustInsert(t, s, &dispatch.Call{ID: "p.1.0", Function: "f", Input: []byte(`{}`), ParentID: "p", Gather: 1,
			RunAfter: T0, CreatedAt: T0, State: dispatch.StateFailed})
		if done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: []string{"p.1.0"}, Now: later}); err != nil || len(done) != 0 {
			t.Fatalf("re-drive under a running parent (attempt %d) = %v, %v; want nothing", p.Attempt, done, err)
		}
	})

	// A failed parent re-driven together with its failed child, in either
	// order: the parent waits for the child instead of running again (and
	// failing at once) beside it.
	t.Run("ParentWithChild", func(t *testing.T) {
		t.Parallel()
		for _, asked := range [][]string{{"p", "p.0.0"}, {"p.0.0", "p"}} {
			s := open(t, t.Name()+strings.Join(asked, ""))
			mustInsert(t, s, &dispatch.Call{ID: "p", Function: "parent", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0,
				State: dispatch.StateWaiting, Gathers: 1, Waiting: 1},
				&dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", RunAfter: T0, CreatedAt: T0})
			c := mustClaim(t, s, "o", T0, 1)[0]
			mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: "p", State: dispatch.StateFailed,
				Error: "gone", Status: dispatch.StatusPermanent})
			pc := mustClaim(t, s, "o", T0, 1, "parent")[0]
			mustFinish(t, s, &dispatch.CallFinishParams{ID: "p", Attempt: pc.Attempt, State: dispatch.StateFailed, Error: "1 of 1 calls failed"})
			done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: asked, Now: T0.Add(time.Hour)})
			if err != nil || !slices.Equal(done, []string{"p.0.0"}) {
				t.Fatalf("CallRedrive(%v) = %v, %v; want [p.0.0]: the parent waits for it", asked, done, err)
			}
			if got := mustGet(t, s, "p"); got.State != dispatch.StateWaiting || got.Waiting != 1 {
				t.Fatalf("CallRedrive(%v): parent %+v, want waiting for its child", asked, got)
			}
			if got := mustGet(t, s, "p.0.0"); got.State != dispatch.StatePending {
				t.Fatalf("CallRedrive(%v): child %+v, want pending", asked, got)
			}
			s.Close()
		}
	})
}
