package dispatch

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Batch returns an empty batch of calls to dispatch together.
func (r *Runtime) Batch() *Batch { return &Batch{rt: r} }

// Batch is a set of calls dispatched atomically: all are stored, or none.
type Batch struct {
	rt    *Runtime
	calls []*Call
}

// Add appends calls built with Function.BuildCall.
func (b *Batch) Add(calls ...*Call) { b.calls = append(b.calls, calls...) }

// Dispatch stores every call of the batch in one transaction and returns
// their ids, in the order they were added, once they are durable.
func (b *Batch) Dispatch(ctx context.Context) ([]string, error) {
	return b.rt.dispatch(ctx, b.calls)
}

// dispatch stores new top-level calls in one transaction and returns their
// ids (for a duplicate, the id of the call it repeats). The calls this
// process has slots for are stored leased to it and handed to its workers
// once the commit returns: work created here costs no claim and no wait.
func (r *Runtime) dispatch(ctx context.Context, calls []*Call) ([]string, error) {
	if r.state.Load() == stateStopped {
		return nil, ErrStopped
	}
	if len(calls) == 0 {
		return []string{}, nil
	}
	now := r.clock.Now()
	rows := make([]*Call, len(calls))
	for i, c := range calls {
		if _, ok := r.funcs[c.Function]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrNotRegistered, c.Function)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("dispatch: new call id: %w", err)
		}
		rows[i] = &Call{ID: id.String(), Function: c.Function, Key: c.Key, OrderKey: c.OrderKey, Input: c.Input, DedupKey: c.DedupKey,
			Tag: c.Tag, Meta: c.Meta, RunAfter: now, CreatedAt: now}
	}
	// Run the first attempt of eager calls now, every one of them: a
	// handleEvent's first attempt is its fan-out plan, which the answer
	// promises is on disk (and a re-run after a crash must not route an
	// accepted event to a destination created since). Then lease to this
	// process what is runnable now; what does not fit (the rest of a
	// burst) is stored pending, to be claimed as workers free up.
	runnable, children := rows, []*Call(nil)
	var reports []*AttemptReport
	var due time.Time
	if r.running() {
		runnable = runnable[:0:0]
		for _, c := range rows {
			if !r.funcs[c.Function].isEager() || c.OrderKey != "" { // an ordered call waits for its turn
				runnable = append(runnable, c)
				continue
			}
			kids, rep := r.runEager(ctx, c, now)
			reports = append(reports, rep)
			children = append(children, kids...)
			runnable = append(runnable, kids...)
			if c.State == StatePending && (due.IsZero() || c.RunAfter.Before(due)) {
				due = c.RunAfter
			}
		}
	}
	leased := r.leaseNew(runnable, now)
	r.markLocal(leased, 1) // an eager parent is at its first attempt
	all := append(rows, children...)
	stored, err := r.store.CallInsertMany(ctx, &CallInsertParams{Calls: all, DedupSince: now.Add(-r.dedupWindow)})
	if err != nil {
		r.unreserve(leased)
		return nil, fmt.Errorf("dispatch: store calls: %w", err)
	}
	ids := stored[:len(rows)]
	// A duplicate and its children were not stored: do not run them.
	var skipped map[string]bool
	for i, c := range all {
		if stored[i] != c.ID {
			if skipped == nil {
				skipped = make(map[string]bool)
			}
			skipped[c.ID] = true
		}
	}
	if skipped != nil {
		kept := leased[:0]
		var dropped []*Call
		for _, c := range leased {
			if skipped[c.ID] {
				dropped = append(dropped, c)
			} else {
				kept = append(kept, c)
			}
		}
		r.unreserve(dropped)
		leased = kept
	}
	if len(children) > 0 {
		byParent := make(map[string][]*Call)
		for _, c := range children {
			byParent[c.ParentID] = append(byParent[c.ParentID], c)
		}
		for _, parent := range rows {
			if kids := byParent[parent.ID]; kids != nil && !skipped[parent.ID] {
				r.results.expect(parent, kids)
			}
		}
	}
	for _, rep := range reports {
		if !skipped[rep.Call.ID] {
			r.report(rep)
		}
	}
	r.admit(leased)
	if len(leased) < len(runnable)-len(skipped) {
		r.signalBacklog()
	}
	if !due.IsZero() {
		r.noteDue(due)
	}
	return ids, nil
}

// runEager makes the first attempt of a new call and records its outcome in
// the call, before it is stored. It returns the children of a suspension,
// and the report of the attempt, for OnAttempt once the call is stored.
func (r *Runtime) runEager(ctx context.Context, c *Call, now time.Time) ([]*Call, *AttemptReport) {
	r.stats.eager.Add(1)
	c.Attempt = 1
	cc := &callContext{rt: r, call: c}
	started := r.clock.Now()
	output, err := r.run(context.WithValue(ctx, ctxKey{}, cc), r.funcs[c.Function], c)
	if s := cc.suspend; s != nil {
		c.State, c.Gathers, c.Waiting = StateWaiting, s.gather+1, len(s.children)
		return s.children, &AttemptReport{Call: c, Started: started, Duration: r.clock.Now().Sub(started),
			Outcome: StateWaiting, Eager: true}
	}
	p := r.outcome(ctx, c, output, err, started, now)
	c.State, c.Output, c.Error, c.Status = p.State, p.Output, p.Error, p.Status
	if p.State != StateDone && !p.Snooze {
		c.Failures = 1
	}
	if p.State == StatePending {
		c.RunAfter = p.RunAfter
	}
	rep := newReport(c, started, r.clock.Now(), p, err)
	rep.Eager = true
	return nil, rep
}

// leaseNew leases to this process those of the new calls it has room for,
// by setting their state before they are stored, and returns them.
func (r *Runtime) leaseNew(calls []*Call, now time.Time) []*Call {
	if len(calls) == 0 || !r.running() {
		return nil
	}
	var leased []*Call
	for _, c := range calls {
		if c.OrderKey != "" {
			continue // the store decides whether it is its sequence's head
		}
		if k, _ := r.reserveKey(c.Key, 1, now); k == 0 {
			continue
		}
		c.State = StateRunning
		c.Attempt = 1
		c.LeaseOwner = r.owner
		c.LeaseExpires = now.Add(r.leaseDuration)
		leased = append(leased, c)
	}
	r.stats.leasedOnCreate.Add(int64(len(leased)))
	return leased
}

// markLocal makes local calls (Call.Local) of the children among calls
// leased to this process as they are stored, whose parent is at
// parentAttempt: they run here at once, and are written only once they
// ended. Only such a child is local: one that must wait (no free slot, its
// key's limit, rate or breaker) is stored as before, and so is any retry.
func (r *Runtime) markLocal(leased []*Call, parentAttempt int) {
	if !r.local {
		return
	}
	n := 0
	for _, c := range leased {
		if c.ParentID != "" {
			c.Local, c.parentAttempt = true, parentAttempt
			n++
		}
	}
	r.stats.local.Add(int64(n))
}
