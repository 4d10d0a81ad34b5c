package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseRetention covers CallDeleteFinished: finished top-level calls go
// with their descendants and dedup keys, in bounded passes; unfinished calls
// stay.
func exerciseRetention(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("DeleteFinished", func(t *testing.T) {
		t.Parallel()
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

	// A call that is not finished stops the mark, not the walk: a pass that
	// finds nothing to delete among more than a page of calls behind it
	// (failed ones, kept by the done rule) ends.
	t.Run("BlockedBeforeAPageOfOthers", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		calls := []*dispatch.Call{newCall("blocker", "parent", `{}`, T0)}
		for i := range 1200 {
			c := newCall(fmt.Sprintf("failed-%04d", i), "parent", `{}`, T0)
			c.State, c.Error, c.Status = dispatch.StateFailed, "no", dispatch.StatusPermanent
			calls = append(calls, c)
		}
		done := newCall("done-after", "parent", `{}`, T0)
		done.State, done.Output = dispatch.StateDone, []byte(`{}`)
		mustInsert(t, s, append(calls, done)...)
		result := make(chan error, 1)
		go func() {
			n, err := s.CallDeleteFinished(ctx, &dispatch.CallDeleteFinishedParams{Before: T0.Add(time.Minute), Limit: 10})
			if err == nil && n != 1 {
				err = fmt.Errorf("deleted %d, want 1 (done-after)", n)
			}
			result <- err
		}()
		select {
		case err := <-result:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("CallDeleteFinished did not return within 20s: the walk is stuck behind a call that is not finished")
		}
		if _, err := s.CallGet(ctx, "blocker"); err != nil {
			t.Fatalf("the unfinished call went: %v", err)
		}
	})
}
