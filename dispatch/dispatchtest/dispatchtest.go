// Package dispatchtest is the conformance suite of dispatch.Store: every
// store runs it from its own tests, so that the runtime can rely on the same
// contract whichever database is underneath.
//
// Exercise covers the store contract operation by operation, then runs the
// runtime itself on the store: retries on a fake clock, Gather with mixed
// outcomes, parents that run again, a restart in the middle of a Gather, and
// concurrent dispatches.
package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// OpenFunc opens the store identified by key. Opening the same key again
// after Close must see the same calls; a new key must be empty. It must also
// close the store in t.Cleanup (Close must tolerate being called twice): the
// runtime tests stop their runtime in a cleanup that has to run first.
type OpenFunc func(t testing.TB, key string) dispatch.Store

// T0 is the time the suite's calls are created at: whole milliseconds, since
// a store may keep time at microsecond precision.
var T0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Exercise runs the conformance suite against the store open returns.
func Exercise(t *testing.T, open OpenFunc) {
	t.Run("Store", func(t *testing.T) { exerciseStore(t, open) })
	t.Run("StoreKeys", func(t *testing.T) { exerciseStoreKeys(t, open) })
	t.Run("Runtime", func(t *testing.T) { exerciseRuntime(t, open) })
	t.Run("RuntimeKeys", func(t *testing.T) { exerciseRuntimeKeys(t, open) })
}

func newCall(id, fn string, input string, runAfter time.Time) *dispatch.Call {
	return &dispatch.Call{ID: id, Function: fn, Input: []byte(input), RunAfter: runAfter, CreatedAt: T0}
}

func mustInsert(t testing.TB, s dispatch.Store, calls ...*dispatch.Call) {
	t.Helper()
	if _, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatalf("CallInsertMany: %v", err)
	}
}

func mustGet(t testing.TB, s dispatch.Store, id string) *dispatch.Call {
	t.Helper()
	c, err := s.CallGet(context.Background(), id)
	if err != nil {
		t.Fatalf("CallGet(%s): %v", id, err)
	}
	return c
}

func mustClaim(t testing.TB, s dispatch.Store, owner string, now time.Time, limit int, fns ...string) []*dispatch.Call {
	t.Helper()
	if len(fns) == 0 {
		fns = []string{"f"}
	}
	calls, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{
		Owner: owner, Functions: fns, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute),
	})
	if err != nil {
		t.Fatalf("CallClaim: %v", err)
	}
	return calls
}

func mustFinish(t testing.TB, s dispatch.Store, p *dispatch.CallFinishParams) *dispatch.CallFinishResult {
	t.Helper()
	if p.Now.IsZero() {
		p.Now = T0
	}
	res, err := s.CallFinish(context.Background(), p)
	if err != nil {
		t.Fatalf("CallFinish(%s): %v", p.ID, err)
	}
	return res
}

func ids(calls []*dispatch.Call) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.ID
	}
	return out
}

func exerciseStore(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("InsertAndGet", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		input := "{ \"a\" : [1, 2.50, \"<&>\"] }\n"
		mustInsert(t, s, newCall("c1", "f", input, T0), newCall("c2", "g", `{}`, T0.Add(time.Second)))
		c := mustGet(t, s, "c1")
		if got, want := string(c.Input), input; got != want {
			t.Fatalf("Input=%q, want %q (bytes must be kept exactly)", got, want)
		}
		if c.State != dispatch.StatePending || c.Attempt != 0 || c.Failures != 0 || c.Function != "f" {
			t.Fatalf("got %+v, want a pending call of f with no attempts", c)
		}
		if !c.RunAfter.Equal(T0) || !c.CreatedAt.Equal(T0) {
			t.Fatalf("RunAfter=%v CreatedAt=%v, want %v", c.RunAfter, c.CreatedAt, T0)
		}
		if _, err := s.CallGet(ctx, "nope"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("CallGet(unknown) err=%v, want ErrNotFound", err)
		}
	})

	t.Run("InsertIsAtomic", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("dup", "f", `{}`, T0))
		batch := []*dispatch.Call{newCall("a", "f", `{}`, T0), newCall("dup", "f", `{}`, T0), newCall("b", "f", `{}`, T0)}
		if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: batch}); err == nil {
			t.Fatal("CallInsertMany with an existing id: err=nil, want an error")
		}
		for _, id := range []string{"a", "b"} {
			if _, err := s.CallGet(ctx, id); !errors.Is(err, dispatch.ErrNotFound) {
				t.Fatalf("CallGet(%s) err=%v: part of a failed batch was stored", id, err)
			}
		}
		// The store still works after a failed batch.
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
	})

	t.Run("InsertLargeBatch", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		var batch []*dispatch.Call
		for i := range 1000 {
			batch = append(batch, newCall(fmt.Sprintf("c%04d", i), "f", fmt.Sprintf(`{"i":%d}`, i), T0))
		}
		mustInsert(t, s, batch...)
		claimed := mustClaim(t, s, "o", T0, 2000)
		if got, want := len(claimed), 1000; got != want {
			t.Fatalf("claimed %d, want %d", got, want)
		}
	})

	t.Run("Claim", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s,
			newCall("late", "f", `{}`, T0.Add(time.Hour)),
			newCall("second", "f", `{}`, T0.Add(time.Second)),
			newCall("first", "f", `{}`, T0),
			newCall("other", "g", `{}`, T0),
			newCall("third", "f", `{}`, T0.Add(2*time.Second)),
		)
		now := T0.Add(5 * time.Second)
		got := mustClaim(t, s, "o1", now, 2)
		if want := []string{"first", "second"}; !slices.Equal(ids(got), want) {
			t.Fatalf("claimed %v, want %v (oldest first, limited)", ids(got), want)
		}
		for _, c := range got {
			if c.State != dispatch.StateRunning || c.Attempt != 1 || c.LeaseOwner != "o1" || string(c.Input) != "{}" {
				t.Fatalf("claimed call %+v, want running, attempt 1, owner o1, with its input", c)
			}
		}
		got = mustClaim(t, s, "o2", now, 10)
		if want := []string{"third"}; !slices.Equal(ids(got), want) {
			t.Fatalf("second claim got %v, want %v (running, future and other functions skipped)", ids(got), want)
		}
		got = mustClaim(t, s, "o2", now, 10, "f", "g")
		if want := []string{"other"}; !slices.Equal(ids(got), want) {
			t.Fatalf("claim of f and g got %v, want %v", ids(got), want)
		}
		if c := mustGet(t, s, "first"); c.State != dispatch.StateRunning || c.LeaseOwner != "o1" ||
			!c.LeaseExpires.Equal(now.Add(time.Minute)) {
			t.Fatalf("stored claimed call %+v, want running with o1's lease", c)
		}
	})

	t.Run("FinishDoneAndFence", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		stale := mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt + 1, State: dispatch.StateDone})
		if stale.Applied {
			t.Fatal("finish with a wrong attempt applied, want it fenced off")
		}
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StateDone,
			Output: []byte(`{"ok":true}`), Status: dispatch.StatusOK, Now: T0.Add(time.Second)})
		if !res.Applied || res.ParentResumed {
			t.Fatalf("finish = %+v, want applied, no parent", res)
		}
		got := mustGet(t, s, "c")
		if got.State != dispatch.StateDone || string(got.Output) != `{"ok":true}` || got.LeaseOwner != "" ||
			!got.UpdatedAt.Equal(T0.Add(time.Second)) {
			t.Fatalf("finished call %+v, want done with output, no lease", got)
		}
		again := mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StateFailed})
		if again.Applied {
			t.Fatal("second finish of a done call applied")
		}
	})

	t.Run("FinishRetryAndFail", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		retryAt := T0.Add(time.Minute)
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StatePending,
			RunAfter: retryAt, Error: "503 from upstream", Status: dispatch.StatusTemporary})
		got := mustGet(t, s, "c")
		if got.State != dispatch.StatePending || got.Failures != 1 || !got.RunAfter.Equal(retryAt) ||
			got.Error != "503 from upstream" || got.Status != dispatch.StatusTemporary {
			t.Fatalf("retried call %+v, want pending at %v with 1 failure and the error", got, retryAt)
		}
		if early := mustClaim(t, s, "o", retryAt.Add(-time.Millisecond), 1); len(early) != 0 {
			t.Fatalf("claimed %v before its retry time", ids(early))
		}
		c = mustClaim(t, s, "o", retryAt, 1)[0]
		if c.Attempt != 2 || c.Failures != 1 {
			t.Fatalf("reclaimed attempt=%d failures=%d, want 2 and 1", c.Attempt, c.Failures)
		}
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StateFailed,
			Error: "410 gone", Status: dispatch.StatusPermanent})
		got = mustGet(t, s, "c")
		if got.State != dispatch.StateFailed || got.Failures != 2 || got.Error != "410 gone" {
			t.Fatalf("failed call %+v, want failed with 2 failures", got)
		}
	})

	t.Run("Leases", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("a", "f", `{}`, T0), newCall("b", "f", `{}`, T0), newCall("c", "f", `{}`, T0))
		claimed := mustClaim(t, s, "o1", T0, 2) // a, b leased until T0+1m
		mustClaim(t, s, "o2", T0, 1)            // c
		if err := s.CallLeaseRenew(ctx, &dispatch.CallLeaseRenewParams{Owner: "o1", IDs: []string{"a"},
			LeaseUntil: T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		// Renewing a lease held by someone else changes nothing.
		if err := s.CallLeaseRenew(ctx, &dispatch.CallLeaseRenewParams{Owner: "o1", IDs: []string{"c"},
			LeaseUntil: T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: T0.Add(2 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("released %d expired leases, want 2 (b and c; a was renewed)", n)
		}
		again := mustClaim(t, s, "o3", T0.Add(2*time.Minute), 10)
		if want := []string{"b", "c"}; !slices.Equal(sorted(ids(again)), want) {
			t.Fatalf("reclaimed %v, want %v", ids(again), want)
		}
		var b *dispatch.Call
		for _, c := range claimed {
			if c.ID == "b" {
				b = c
			}
		}
		if res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "b", Attempt: b.Attempt, State: dispatch.StateDone}); res.Applied {
			t.Fatal("the first owner finished a call that was taken over")
		}
		n, err = s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Owner: "o3"})
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("released %d calls of o3, want 2", n)
		}
		if c := mustGet(t, s, "a"); c.State != dispatch.StateRunning || c.LeaseOwner != "o1" {
			t.Fatalf("call a %+v, want still running for o1", c)
		}
	})

	t.Run("SuspendAndResume", func(t *testing.T) {
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
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("p", "parent", `{"in":1}`, T0))
		p := mustClaim(t, s, "o", T0, 1, "parent")[0]
		kids := []*dispatch.Call{
			{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 0, RunAfter: T0, CreatedAt: T0,
				State: dispatch.StateRunning, Attempt: 1, LeaseOwner: "o", LeaseExpires: T0.Add(time.Minute)},
			{ID: "p.0.1", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 1, RunAfter: T0, CreatedAt: T0},
		}
		if ok, err := s.CallSuspend(ctx, &dispatch.CallSuspendParams{ID: "p", Attempt: p.Attempt, Children: kids, Now: T0}); err != nil || !ok {
			t.Fatal(ok, err)
		}
		if got := mustGet(t, s, "p.0.0"); got.State != dispatch.StateRunning || got.LeaseOwner != "o" || got.Attempt != 1 {
			t.Fatalf("child inserted leased: %+v, want running for o at attempt 1", got)
		}
		if got := mustClaim(t, s, "o2", T0, 10); !slices.Equal(ids(got), []string{"p.0.1"}) {
			t.Fatalf("claimed %v, want only the child that was not leased", ids(got))
		}
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.1", Attempt: 1, ParentID: "p", State: dispatch.StateDone})
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.0", Attempt: 1, ParentID: "p", State: dispatch.StateDone,
			Now: T0.Add(time.Second), ResumeOwner: "o3", ResumeLeaseUntil: T0.Add(time.Hour)})
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
	})

	t.Run("InsertLeased", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		c := newCall("c", "f", `{}`, T0)
		c.State, c.Attempt, c.LeaseOwner, c.LeaseExpires = dispatch.StateRunning, 1, "o", T0.Add(time.Minute)
		mustInsert(t, s, c)
		if got := mustClaim(t, s, "o2", T0, 10); len(got) != 0 {
			t.Fatal("a call inserted leased was claimed")
		}
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: T0.Add(2 * time.Minute)}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v; want the expired lease released", n, err)
		}
		got := mustClaim(t, s, "o2", T0.Add(2*time.Minute), 10)
		if len(got) != 1 || got[0].Attempt != 2 {
			t.Fatalf("reclaimed %+v, want attempt 2", got)
		}
	})

	t.Run("SuspendOnExistingChildren", func(t *testing.T) {
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

	t.Run("DeleteFinished", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		// tree stores a top-level call with one child, both finished.
		tree := func(id string, created time.Time, state dispatch.State) {
			t.Helper()
			mustInsert(t, s, &dispatch.Call{ID: id, Function: "parent", Input: []byte(`{}`), RunAfter: created, CreatedAt: created,
				State: dispatch.StateWaiting, Gathers: 1, Waiting: 1},
				&dispatch.Call{ID: id + ".0.0", Function: "f", Input: []byte(`{}`), ParentID: id, RunAfter: created, CreatedAt: created})
			c := mustClaim(t, s, "o", created, 1)[0]
			mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: id, State: dispatch.StateDone,
				ResumeOwner: "o", ResumeLeaseUntil: created.Add(time.Hour)})
			mustFinish(t, s, &dispatch.CallFinishParams{ID: id, Attempt: 1, State: state, Now: created})
		}
		tree("old", T0, dispatch.StateDone)
		tree("oldfail", T0, dispatch.StateFailed)
		mustInsert(t, s, newCall("unfinished", "parent", `{}`, T0))
		tree("old2", T0.Add(time.Second), dispatch.StateDone)
		for i := range 5 {
			tree(fmt.Sprintf("batch%d", i), T0.Add(2*time.Second), dispatch.StateDone)
		}
		// A dedup key goes with its call.
		if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{{ID: "dk", Function: "parent",
			Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0.Add(2 * time.Second), State: dispatch.StateDone, DedupKey: "key-of-dk"}}}); err != nil {
			t.Fatal(err)
		}
		tree("new", T0.Add(time.Hour), dispatch.StateDone)
		cutoff := T0.Add(time.Minute)

		pass := func(before time.Time, failed bool, limit, want int) {
			t.Helper()
			n, err := s.CallDeleteFinished(ctx, &dispatch.CallDeleteFinishedParams{Before: before, Failed: failed, Limit: limit})
			if err != nil || n != want {
				t.Fatalf("CallDeleteFinished(before %v, failed %v, limit %d) = %d, %v; want %d", before, failed, limit, n, err, want)
			}
		}
		pass(cutoff, false, 2, 2)  // old, old2: the limit bounds a pass
		pass(cutoff, false, 10, 6) // the batches and dk
		if got, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{{ID: "dk2", Function: "parent",
			Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0, State: dispatch.StateDone, DedupKey: "key-of-dk"}}}); err != nil || got[0] != "dk2" {
			t.Fatalf("the dedup key of a deleted call still names it: %v, %v", got, err)
		}
		present := map[string]bool{"old": false, "old.0.0": false, "old2": false, "batch4.0.0": false, "oldfail": true,
			"oldfail.0.0": true, "unfinished": true, "new": true, "new.0.0": true}
		for id, want := range present {
			_, err := s.CallGet(ctx, id)
			if got := err == nil; got != want {
				t.Fatalf("after retention, %s present=%v, want %v (err %v)", id, got, want, err)
			}
		}
		pass(cutoff, true, 10, 1)
		if _, err := s.CallGet(ctx, "oldfail.0.0"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatal("children of a deleted failed call remain")
		}
		pass(cutoff, false, 10, 0)
		// The unfinished call goes once it is done.
		c := mustClaim(t, s, "o", T0, 1, "parent")[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: dispatch.StateDone})
		pass(cutoff, false, 10, 1)
		pass(T0.Add(2*time.Hour), false, 10, 2) // new, dk2
		// After the table emptied, rowids start again: new calls still go.
		tree("again", T0, dispatch.StateDone)
		pass(cutoff, false, 10, 1)
	})

	t.Run("CallCounts", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("a", "f", `{}`, T0), newCall("b", "f", `{}`, T0), newCall("c", "g", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: dispatch.StateDone})
		got, err := s.CallCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []dispatch.CallCount{{Function: "f", State: dispatch.StatePending, N: 1},
			{Function: "f", State: dispatch.StateDone, N: 1}, {Function: "g", State: dispatch.StatePending, N: 1}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("CallCounts = %v, want %v", got, want)
		}
	})

	t.Run("CallBacklog", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		if got, err := s.CallBacklog(ctx); err != nil || len(got) != 0 {
			t.Fatalf("CallBacklog of an empty store = %v, %v", got, err)
		}
		other := keyed("g1", "a", T0) // another function, the same key
		other.Function = "g"
		mustInsert(t, s,
			keyed("a1", "a", T0), keyed("a2", "a", T0.Add(time.Hour)), // a retry waiting counts
			keyed("b1", "b", T0), keyed("b2", "b", T0),
			keyed("c1", "c", T0), other)
		if running := mustClaimKey(t, s, "b", T0, 1); len(running) != 1 { // running: not a backlog
			t.Fatalf("claimed %d calls of b, want 1", len(running))
		}
		done := mustClaimKey(t, s, "c", T0, 1)
		if len(done) != 1 {
			t.Fatalf("claimed %d calls of c, want 1", len(done))
		}
		c := done[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: dispatch.StateDone})
		got, err := s.CallBacklog(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := []dispatch.KeyCount{{Key: "a", N: 3}, {Key: "b", N: 1}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("CallBacklog = %v, want %v", got, want)
		}
	})

	t.Run("Reopen", func(t *testing.T) {
		key := t.Name()
		s := open(t, key)
		mustInsert(t, s, newCall("kept", "f", `{"x":1}`, T0))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, key)
		defer s.Close()
		if c := mustGet(t, s, "kept"); string(c.Input) != `{"x":1}` {
			t.Fatalf("after reopen got %+v", c)
		}
	})

	t.Run("ConcurrentInserts", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20 {
					c := newCall(fmt.Sprintf("g%02d-%02d", g, i), "f", `{}`, T0)
					if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{c}}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if got := len(mustClaim(t, s, "o", T0, 5000)); got != 64*20 {
			t.Fatalf("stored %d calls, want %d", got, 64*20)
		}
	})

	t.Run("ClosedStoreFails", func(t *testing.T) {
		s := open(t, t.Name())
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall("x", "f", `{}`, T0)}}); err == nil {
			t.Fatal("insert into a closed store succeeded")
		}
	})
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
