package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseSuspend covers parents and children: CallSuspend, children whose
// outcomes resume their parent, CallListChildren, and a parent leased as it
// resumes.
func exerciseSuspend(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("SuspendAndResume", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("p", "parent", `{}`, T0))
		p := mustClaim(t, s, "o", T0, 1, "parent")[0]
		children := make([]*dispatch.Call, 3)
		for i := range children {
			children[i] = &dispatch.Call{ID: fmt.Sprintf("p.0.%d", i), Function: "f", Input: []byte(`{}`),
				ParentID: "p", Gather: 0, Index: i, RunAfter: T0, CreatedAt: T0}
		}
		ok, err := s.CallSuspend(ctx, &dispatch.CallSuspendParams{ID: "p", Attempt: p.Attempt + 1, Gather: 0, Children: children, Now: T0})
		if err != nil || ok {
			t.Fatalf("stale CallSuspend = %v, %v; want false, nil", ok, err)
		}
		if _, err := s.CallGet(ctx, "p.0.0"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatal("a stale suspension inserted children")
		}
		ok, err = s.CallSuspend(ctx, &dispatch.CallSuspendParams{ID: "p", Attempt: p.Attempt, Gather: 0, Children: children, Now: T0})
		if err != nil || !ok {
			t.Fatalf("CallSuspend = %v, %v; want true, nil", ok, err)
		}
		if got := mustGet(t, s, "p"); got.State != dispatch.StateWaiting || got.Gathers != 1 || got.Waiting != 3 {
			t.Fatalf("suspended parent %+v, want waiting on 3 children of 1 gather", got)
		}
		if got := mustClaim(t, s, "o", T0, 10, "parent"); len(got) != 0 {
			t.Fatal("a waiting parent was claimed")
		}
		claimed := mustClaim(t, s, "o", T0, 10)
		if want := []string{"p.0.0", "p.0.1", "p.0.2"}; !slices.Equal(sorted(ids(claimed)), want) {
			t.Fatalf("claimed children %v, want %v", ids(claimed), want)
		}
		outcomes := []struct {
			state   dispatch.State
			resumed bool
		}{{dispatch.StateDone, false}, {dispatch.StatePending, false}, {dispatch.StateFailed, false}}
		for i, o := range outcomes {
			res := mustFinish(t, s, &dispatch.CallFinishParams{ID: claimed[i].ID, Attempt: claimed[i].Attempt, ParentID: "p",
				State: o.state, Output: []byte(`1`), RunAfter: T0.Add(time.Second), Now: T0})
			if !res.Applied || res.ParentResumed != o.resumed {
				t.Fatalf("finish child %d = %+v, want applied, resumed=%v", i, res, o.resumed)
			}
		}
		if got := mustGet(t, s, "p"); got.State != dispatch.StateWaiting || got.Waiting != 1 {
			t.Fatalf("parent %+v, want waiting on the retried child", got)
		}
		retried := mustClaim(t, s, "o", T0.Add(time.Second), 10)
		if len(retried) != 1 {
			t.Fatalf("claimed %v, want the retried child", ids(retried))
		}
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: retried[0].ID, Attempt: retried[0].Attempt, ParentID: "p",
			State: dispatch.StateDone, Output: []byte(`2`), Now: T0.Add(2 * time.Second)})
		if !res.ParentResumed || res.Parent != nil {
			t.Fatalf("finish of the last child = %+v, want the parent resumed (pending, not leased)", res)
		}
		if got := mustGet(t, s, "p"); got.State != dispatch.StatePending || got.Waiting != 0 ||
			!got.RunAfter.Equal(T0.Add(2*time.Second)) {
			t.Fatalf("resumed parent %+v, want pending, runnable at once", got)
		}
		kids, err := s.CallListChildren(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"p.0.0", "p.0.1", "p.0.2"}; !slices.Equal(ids(kids), want) {
			t.Fatalf("children %v, want %v in order", ids(kids), want)
		}
		if kids[2].State != dispatch.StateFailed || string(kids[1].Output) != `2` {
			t.Fatalf("children %+v %+v: outcomes not kept", kids[1], kids[2])
		}
		again := mustClaim(t, s, "o", T0.Add(2*time.Second), 10, "parent")
		if len(again) != 1 || again[0].Gathers != 1 || again[0].Attempt != 2 {
			t.Fatalf("reclaimed parent %+v, want attempt 2 with 1 gather", again)
		}
	})

	t.Run("ResumeLeasesParent", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		suspended(t, s,
			&dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 0, RunAfter: T0, CreatedAt: T0,
				State: dispatch.StateRunning, Attempt: 1, LeaseOwner: "o", LeaseExpires: T0.Add(time.Minute)},
			&dispatch.Call{ID: "p.0.1", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 1, RunAfter: T0, CreatedAt: T0})
		if got := mustGet(t, s, "p.0.0"); got.State != dispatch.StateRunning || got.LeaseOwner != "o" || got.Attempt != 1 {
			t.Fatalf("child inserted leased: %+v, want running for o at attempt 1", got)
		}
		if got := mustClaim(t, s, "o2", T0, 10); !slices.Equal(ids(got), []string{"p.0.1"}) {
			t.Fatalf("claimed %v, want only the child that was not leased", ids(got))
		}
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.1", Attempt: 1, ParentID: "p", State: dispatch.StateFailed,
			Status: dispatch.StatusPermanent, Error: "no"})
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.0", Attempt: 1, ParentID: "p", State: dispatch.StateDone,
			Output: []byte(`"a"`), Now: T0.Add(time.Second), ResumeOwner: "o3", ResumeLeaseUntil: T0.Add(time.Hour)})
		if !res.ParentResumed || res.Parent == nil {
			t.Fatalf("finish of the last child = %+v, want the parent leased to o3", res)
		}
		got := res.Parent
		if got.ID != "p" || got.State != dispatch.StateRunning || got.Attempt != 2 || got.Gathers != 1 ||
			string(got.Input) != `{"in":1}` || got.Function != "parent" || !got.CreatedAt.Equal(T0) {
			t.Fatalf("resumed parent %+v, want p running at attempt 2 with its input and 1 gather", got)
		}
		if stored := mustGet(t, s, "p"); stored.State != dispatch.StateRunning || stored.LeaseOwner != "o3" ||
			!stored.LeaseExpires.Equal(T0.Add(time.Hour)) {
			t.Fatalf("stored parent %+v, want leased to o3", stored)
		}
		if got := mustClaim(t, s, "o4", T0.Add(time.Minute), 10, "parent"); len(got) != 0 {
			t.Fatal("a parent leased on resume was claimed again")
		}
		// A store may return the children with the parent: then as
		// CallListChildren lists them.
		if res.ParentChildren != nil {
			listed, err := s.CallListChildren(context.Background(), "p")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(res.ParentChildren, listed, sameOutcome) || len(listed) != 2 {
				t.Fatalf("children returned with the parent %v, want %v", outcomes(res.ParentChildren), outcomes(listed))
			}
		}
	})

	t.Run("FinishParent", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		p := suspended(t, s,
			&dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 0, RunAfter: T0, CreatedAt: T0},
			&dispatch.Call{ID: "p.0.1", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 1, RunAfter: T0, CreatedAt: T0})
		claimed := mustClaim(t, s, "o", T0, 10)
		if len(claimed) != 2 {
			t.Fatalf("claimed %v, want both children", ids(claimed))
		}
		// Not the last child: counted off, the parent's output dropped.
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.1", Attempt: 1, ParentID: "p", State: dispatch.StateDone,
			FinishParent: true, ParentOutput: []byte(`"early"`), ParentGathers: 1})
		if !res.Applied || res.ParentFinished || res.ParentResumed {
			t.Fatalf("finish of the first child = %+v, want applied, the parent still waiting", res)
		}
		if got := mustGet(t, s, "p"); got.State != dispatch.StateWaiting || got.Waiting != 1 || got.Output != nil {
			t.Fatalf("parent after the first child: %+v, want waiting for 1, no output", got)
		}
		res = mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.0", Attempt: 1, ParentID: "p", State: dispatch.StateDone,
			Output: []byte(`1`), Now: T0.Add(time.Second), FinishParent: true, ParentOutput: []byte(`{"out":2}`), ParentGathers: 1})
		if !res.Applied || !res.ParentFinished || res.ParentResumed || res.Parent != nil {
			t.Fatalf("finish of the last child = %+v, want the parent finished", res)
		}
		got := mustGet(t, s, "p")
		if got.State != dispatch.StateDone || string(got.Output) != `{"out":2}` || got.Attempt != p.Attempt+1 ||
			got.Waiting != 0 || got.LeaseOwner != "" || got.Status != dispatch.StatusOK || !got.UpdatedAt.Equal(T0.Add(time.Second)) {
			t.Fatalf("parent finished with its last child: %+v, want done with the output, attempt %d", got, p.Attempt+1)
		}
		if got := mustGet(t, s, "p.0.0"); got.State != dispatch.StateDone || string(got.Output) != `1` {
			t.Fatalf("last child %+v, want done with its output", got)
		}
		if got := mustClaim(t, s, "o", T0.Add(time.Minute), 10, "parent", "f"); len(got) != 0 {
			t.Fatalf("claimed %v after the parent finished, want nothing", ids(got))
		}
	})

	// A child attached to a waiting parent (CallAttach, by a replay in
	// another process, say) after the runtime ran the parent with its
	// other children's outcomes: the run missed a gather, so the last
	// child's finish drops it and makes the parent runnable, to run again
	// with all its children.
	t.Run("FinishParentAttachedSince", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		p := suspended(t, s, &dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", RunAfter: T0, CreatedAt: T0})
		first := mustClaim(t, s, "o", T0, 10, "f")
		res, err := s.CallAttach(ctx, &dispatch.CallAttachParams{Now: T0, Unless: dispatch.AttachAlways,
			Calls: []*dispatch.Call{{ParentID: "p", Function: "f", Key: "late", Input: []byte(`{}`)}}})
		if err != nil || len(res) != 1 || res[0].Outcome != dispatch.Attached {
			t.Fatalf("CallAttach = %v, %v", res, err)
		}
		late := mustClaimKey(t, s, "late", T0, 10)
		if len(first) != 1 || len(late) != 1 || late[0].ID != res[0].ID {
			t.Fatalf("claimed %v then %v, want the child then the attached one", ids(first), ids(late))
		}
		mustFinish(t, s, &dispatch.CallFinishParams{ID: late[0].ID, Attempt: 1, ParentID: "p", State: dispatch.StateDone, Now: T0})
		fin := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.0", Attempt: 1, ParentID: "p", State: dispatch.StateDone,
			Output: []byte(`1`), Now: T0.Add(time.Second), FinishParent: true, ParentOutput: []byte(`"one gather"`), ParentGathers: 1})
		if !fin.Applied || fin.ParentFinished || !fin.ParentResumed {
			t.Fatalf("finish of the last child = %+v, want the parent resumed, not finished", fin)
		}
		got := mustGet(t, s, "p")
		if got.State != dispatch.StatePending || got.Gathers != 2 || got.Output != nil || got.Attempt != p.Attempt {
			t.Fatalf("parent %+v, want pending with 2 gathers, no output, attempt %d", got, p.Attempt)
		}
		if again := mustClaim(t, s, "o", T0.Add(time.Second), 10, "parent"); len(again) != 1 || again[0].ID != "p" {
			t.Fatalf("claimed %v, want the parent, to run with both gathers", ids(again))
		}
	})

	t.Run("SuspendOnExistingChildren", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		child := &dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", RunAfter: T0, CreatedAt: T0}
		mustInsert(t, s, newCall("p", "parent", `{}`, T0), child)
		c := mustClaim(t, s, "o", T0, 1)[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: "p", State: dispatch.StateDone})
		p := mustClaim(t, s, "o", T0, 1, "parent")[0]
		ok, err := s.CallSuspend(ctx, &dispatch.CallSuspendParams{ID: "p", Attempt: p.Attempt, Gather: 0,
			Children: []*dispatch.Call{child}, Now: T0})
		if err != nil || !ok {
			t.Fatalf("CallSuspend = %v, %v", ok, err)
		}
		if got := mustGet(t, s, "p"); got.State != dispatch.StatePending {
			t.Fatalf("parent %+v, want pending: its only child was final already", got)
		}
		if got := mustGet(t, s, "p.0.0"); got.State != dispatch.StateDone {
			t.Fatalf("existing child %+v was overwritten", got)
		}
	})
}

// suspended stores a parent p (function "parent", input {"in":1}), runs
// it, and suspends it on kids at T0; it returns p as claimed.
func suspended(t *testing.T, s dispatch.Store, kids ...*dispatch.Call) *dispatch.Call {
	t.Helper()
	mustInsert(t, s, newCall("p", "parent", `{"in":1}`, T0))
	p := mustClaim(t, s, "o", T0, 1, "parent")[0]
	if ok, err := s.CallSuspend(context.Background(), &dispatch.CallSuspendParams{ID: "p", Attempt: p.Attempt, Children: kids, Now: T0}); err != nil || !ok {
		t.Fatalf("CallSuspend = %v, %v", ok, err)
	}
	return p
}

// sameOutcome compares what Gather reads of two children.
func sameOutcome(a, b *dispatch.Call) bool {
	return a.ID == b.ID && a.ParentID == b.ParentID && a.Gather == b.Gather && a.Index == b.Index &&
		a.State == b.State && a.Status == b.Status && a.Error == b.Error && string(a.Output) == string(b.Output)
}

func outcomes(calls []*dispatch.Call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, fmt.Sprintf("%s %d.%d %v %v %q %s", c.ID, c.Gather, c.Index, c.State, c.Status, c.Error, c.Output))
	}
	return out
}
