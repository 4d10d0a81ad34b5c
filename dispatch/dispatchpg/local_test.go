package dispatchpg_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/internal/pgtest"
)

// A local call's finish races the release of its parent's expired lease
// by another replica (another Store on the same database), which drops the
// plan and stores the children that have no row yet. Each child must end
// exactly one way: finished by its owner (the finish applied, its row
// done), or stored pending by the drop (the finish fenced); never lost,
// never both; and the parent must wait for exactly its children not final,
// with no plan or lease left.
func TestLocal_FinishRacesPlanDrop(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	owner := openURL(t, u, dispatchpg.Config{})
	other := openURL(t, u, dispatchpg.Config{})
	conn := connect(t, u)
	ctx := context.Background()
	lease := T0.Add(time.Minute)
	const rounds, kids = 200, 4
	var applied, fenced, dropped int
	for round := range rounds {
		pid := fmt.Sprintf("p%03d", round)
		p := &dispatch.Call{ID: pid, Function: "parent", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0,
			State: dispatch.StateWaiting, Attempt: 1, Gathers: 1, Waiting: kids}
		calls := []*dispatch.Call{p}
		for i := range kids {
			calls = append(calls, &dispatch.Call{ID: fmt.Sprintf("%s.0.%d", pid, i), Function: "f", Input: []byte(`{}`),
				ParentID: pid, Index: i, RunAfter: T0, CreatedAt: T0, State: dispatch.StateRunning, Attempt: 1,
				LeaseOwner: "o", LeaseExpires: lease, Local: true})
		}
		insert(t, owner, calls...)

		results := make([]*dispatch.CallFinishResult, kids)
		errs := make([]error, kids+1)
		var released int
		start := make(chan struct{})
		var wg sync.WaitGroup
		jitter := func() {
			if d := rand.IntN(1500); d > 300 {
				time.Sleep(time.Duration(d) * time.Microsecond)
			}
		}
		for i, c := range calls[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				jitter()
				results[i], errs[i] = owner.CallFinish(ctx, &dispatch.CallFinishParams{ID: c.ID, Attempt: 1, ParentID: pid,
					Local: c, ParentAttempt: 1, State: dispatch.StateDone, Output: []byte(`"ok"`), Now: T0})
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			jitter()
			released, errs[kids] = other.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: lease.Add(time.Minute)})
		}()
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: operation %d: %v", round, i, err)
			}
		}
		// The drop may have skipped the parent while a finish held it
		// (SKIP LOCKED); but by now every finish is done, so the plan was
		// completed by the last one, or dropped: none is left.
		var plan bool
		if err := conn.QueryRow(ctx, `SELECT plan IS NOT NULL FROM calls WHERE id = $1`, pid).Scan(&plan); err != nil {
			t.Fatal(err)
		}
		if plan {
			t.Fatalf("round %d: the parent still holds its plan after every finish and a release", round)
		}
		if n, err := other.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: lease.Add(time.Minute)}); err != nil || n != 0 {
			t.Fatalf("round %d: a release after the race = %d, %v; want 0", round, n, err)
		}
		notFinal, stored := 0, 0
		for i, c := range calls[1:] {
			row, err := owner.CallGet(ctx, c.ID)
			if err != nil {
				t.Fatalf("round %d: child %s: %v (lost)", round, c.ID, err)
			}
			switch {
			case results[i].Applied && row.State != dispatch.StateDone:
				t.Fatalf("round %d: child %s finished by its owner, but stored %v: the drop overwrote it", round, c.ID, row.State)
			case !results[i].Applied && (row.State != dispatch.StatePending || row.Attempt != 0):
				t.Fatalf("round %d: child %s fenced, but stored %v at attempt %d, want pending, never tried", round, c.ID,
					row.State, row.Attempt)
			case results[i].Applied:
				applied++
			default:
				fenced++
				notFinal++
				stored++
			}
		}
		if released != stored {
			t.Fatalf("round %d: the release said %d calls, it stored %d", round, released, stored)
		}
		if stored > 0 {
			dropped++
		}
		parent, err := owner.CallGet(ctx, pid)
		if err != nil {
			t.Fatal(err)
		}
		wantState := dispatch.StateWaiting
		if notFinal == 0 {
			wantState = dispatch.StatePending // resumed by the last finish
		}
		if parent.Waiting != notFinal || parent.State != wantState || parent.LeaseOwner != "" {
			t.Fatalf("round %d: parent %s %v waiting %d, lease %q; want %v waiting %d (its children not final), unleased",
				round, pid, parent.State, parent.Waiting, parent.LeaseOwner, wantState, notFinal)
		}
	}
	t.Logf("%d rounds: %d local finishes applied, %d fenced; the drop won in %d rounds", rounds, applied, fenced, dropped)
	if applied == 0 || fenced == 0 {
		t.Fatalf("applied %d, fenced %d: the race never went both ways, the test tests nothing", applied, fenced)
	}
}
