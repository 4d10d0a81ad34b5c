package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

// worker runs the calls leased to this process, one at a time, until Stop.
// One attempt reads top to bottom in this file: execute gives a resumed
// parent what its children returned and runs the function (run); the
// attempt ends in suspend, when the function gathered new children, or in
// finish, which classifies the outcome (outcome), records it (retryStore)
// and may resume the parent of a last child here. done then frees the
// worker's slot.
func (r *Runtime) worker() {
	defer r.workersWG.Done()
	for {
		select {
		case c := <-r.pool.work:
			if !r.stopping.Load() {
				r.execute(c)
			}
			r.done(c)
			// A slot is free: work that waits in the store may fit now.
			if r.backlog.Load() {
				r.wake()
			}
		case <-r.quit:
			return
		}
	}
}

// execute makes one attempt of a call leased to this process and records
// what came of it.
func (r *Runtime) execute(c *Call) {
	// Store writes that record an outcome outlive a shutdown deadline: a
	// result that was produced should not be thrown away.
	storeCtx := context.WithoutCancel(r.runCtx)
	cc := &callContext{rt: r, call: c}
	if c.Gathers > 0 {
		children, ok := r.results.childrenOf(c)
		switch {
		case ok:
			r.stats.resultsFromMemory.Add(1)
		case c.gathered != nil:
			children, c.gathered = c.gathered, nil
			r.stats.resultsFromStore.Add(1)
		default:
			r.stats.resultsFromStore.Add(1)
			var err error
			children, err = r.store.CallListChildren(storeCtx, c.ID)
			if err != nil {
				r.finish(storeCtx, c, nil, fmt.Errorf("%w: load results of gathered calls: %v", ErrTemporary, err), r.clock.Now())
				return
			}
		}
		cc.children = make([][]*Call, c.Gathers)
		for _, child := range children {
			if child.Gather < len(cc.children) {
				cc.children[child.Gather] = append(cc.children[child.Gather], child)
			}
		}
	}

	if c.Key != "" && r.keys.config(c.Key).Paused {
		// Leased before its key was paused: put it back untried, to run
		// when the key is resumed.
		r.snooze(storeCtx, c)
		return
	}
	fn := r.funcs[c.Function]
	ctx := context.WithValue(r.runCtx, ctxKey{}, cc)
	started := r.clock.Now()
	output, err := r.run(ctx, fn, c)
	r.ran(c)
	if r.runCtx.Err() != nil {
		// Cancelled by shutdown: Stop hands the call back untouched.
		return
	}
	if cc.suspend != nil {
		r.suspend(storeCtx, c, cc.suspend, started)
		return
	}
	if err == nil {
		err = cc.attachedError() // gathers attached after it first ran (attach.go)
	}
	r.finish(storeCtx, c, output, err, started)
}

// run calls the function, turning a panic into a permanent failure: a
// function that panics on its input would panic on every retry, and a panic
// must not take the process and every other call down with it.
func (r *Runtime) run(ctx context.Context, fn AnyFunction, c *Call) (output []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("durable function panicked", "function", c.Function, "call", c.ID,
				"panic", p, "stack", string(debug.Stack()))
			output, err = nil, fmt.Errorf("%w: panic: %v", ErrPermanent, p)
		}
	}()
	return fn.run(ctx, c.Input)
}

// suspend stores the caller's suspension with its children, leasing to this
// process as many children as it has free slots for.
func (r *Runtime) suspend(ctx context.Context, c *Call, s *suspension, started time.Time) {
	now := r.clock.Now()
	leased := r.leaseNew(s.children, now)
	r.markLocal(leased, c.Attempt)
	var ok bool
	err := r.retryStore(c, func() (err error) {
		ok, err = r.store.CallSuspend(ctx, &CallSuspendParams{
			ID:       c.ID,
			Attempt:  c.Attempt,
			Gather:   s.gather,
			Children: s.children,
			Now:      now,
		})
		return err
	})
	switch {
	case err != nil:
		r.unreserve(leased)
		r.log.Error("store suspended call; it runs again when its lease expires", "call", c.ID, "err", err)
	case !ok:
		r.unreserve(leased)
		r.log.Warn("call was taken over while it ran; dropping its suspension", "call", c.ID, "attempt", c.Attempt)
	default:
		r.report(&AttemptReport{Call: c, Started: started, Duration: now.Sub(started), Outcome: StateWaiting})
		parent := *c // as stored: waiting on this gather's children
		parent.State, parent.Gathers, parent.Waiting = StateWaiting, s.gather+1, len(s.children)
		parent.LeaseOwner, parent.LeaseExpires = "", time.Time{}
		r.results.expect(&parent, s.children)
		r.admit(leased)
		if len(leased) < len(s.children) {
			r.signalBacklog()
		}
	}
}

// retryStore runs op, which records what a call did, until it succeeds or
// half the call's lease has passed. A store that fails for a moment (a
// database that restarts, a disk that fills and is freed) then costs a
// short wait, not a call run twice after its lease expires. An op that
// failed after all may have been applied (the answer was lost): running it
// again is then refused as a stale attempt, which is harmless.
func (r *Runtime) retryStore(c *Call, op func() error) error {
	deadline := time.Now().Add(r.leaseDuration / 2)
	wait := 50 * time.Millisecond
	for logged := false; ; {
		err := op()
		if err == nil || errors.Is(err, ErrStopped) || time.Now().Add(wait).After(deadline) {
			return err
		}
		if !logged {
			r.log.Warn("store failed to record a call's outcome; retrying", "call", c.ID, "err", err)
			logged = true
		}
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
}

// setLocal makes the finish of a local call store it (Call.Local).
func (r *Runtime) setLocal(p *CallFinishParams, c *Call) {
	if c.Local {
		p.Local, p.ParentAttempt = c, c.parentAttempt
	}
}

// retryStoreResult stores a finish with retryStore.
func (r *Runtime) retryStoreResult(ctx context.Context, c *Call, p *CallFinishParams) (res *CallFinishResult, err error) {
	err = r.retryStore(c, func() (err error) {
		res, err = r.store.CallFinish(ctx, p)
		return err
	})
	return res, err
}

// snooze puts a call back in the store untried, runnable at once: its key
// was paused after it was leased, and claims skip paused keys.
func (r *Runtime) snooze(ctx context.Context, c *Call) {
	now := r.clock.Now()
	p := &CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID,
		State: StatePending, Snooze: true, RunAfter: now, Now: now, OrderKey: c.OrderKey}
	r.setLocal(p, c)
	_, err := r.retryStoreResult(ctx, c, p)
	if err != nil {
		r.log.Error("put back a call of a paused key; it runs again when its lease expires", "call", c.ID, "err", err)
	}
}

// finish records the outcome of an attempt: done, failed, or retried later.
// When it was the last child its parent waited for, the parent is leased to
// this process in the same transaction, if a slot is free, and run at once.
func (r *Runtime) finish(ctx context.Context, c *Call, output []byte, err error, started time.Time) {
	now := r.clock.Now()
	p := r.outcome(ctx, c, output, err, started, now)
	if c.Key != "" && !p.Snooze {
		r.keys.observe(c.Key, p.Status, now)
	}
	recordResult := c.ParentID != "" && p.State.Final()
	var outcome *Call
	var inline *inlineRun
	if recordResult {
		outcome = &Call{ID: c.ID, ParentID: c.ParentID, Function: c.Function, Key: c.Key, Gather: c.Gather,
			Index: c.Index, State: p.State, Output: p.Output, Error: p.Error, Status: p.Status}
		if parent, children := r.results.finishing(c.ParentID, outcome); parent != nil {
			// The last child: the parent may run here and now, and be
			// stored done with this outcome (Function.ResumeInline).
			if inline = r.runInline(parent, children); inline != nil {
				p.FinishParent, p.ParentOutput, p.ParentGathers = true, inline.params.Output, parent.Gathers
			}
		}
	}
	// The parent a last child resumes is leased here if there is room.
	// Its key is not known until the store returns it: its slot is
	// reserved against key "" and moved to its key when it is admitted
	// (admitResumed).
	resume := 0
	if recordResult && inline == nil {
		if resume, _ = r.reserveKey("", 1, now); resume == 1 {
			p.ResumeOwner = r.owner
			p.ResumeLeaseUntil = now.Add(r.leaseDuration)
		}
	}
	var res *CallFinishResult
	var serr error
	if c.Local && recordResult {
		res, serr = r.finishTogether(ctx, c, p)
	} else {
		res, serr = r.retryStoreResult(ctx, c, p)
	}
	if recordResult {
		r.results.finished(c.ParentID, outcome, serr == nil && res.Applied)
	}
	switch {
	case serr != nil:
		r.unreserveKey("", resume)
		r.log.Error("store call outcome; the call runs again when its lease expires", "call", c.ID, "err", serr)
		return
	case !res.Applied:
		r.unreserveKey("", resume)
		r.log.Warn("call was taken over while it ran; dropping its outcome", "call", c.ID, "attempt", c.Attempt)
		return
	}
	r.report(newReport(c, started, now, p, err))
	if p.State.Final() && c.Gathers > 0 {
		r.results.forget(c.ID)
	}
	if res.ParentFinished && inline != nil {
		r.stats.resumedInline.Add(1)
		r.stats.finished.Add(1)
		r.report(newReport(inline.call, inline.started, inline.ended, inline.params, nil))
		r.results.forget(c.ParentID)
	}
	if res.Parent != nil {
		res.Parent.gathered = res.ParentChildren
		r.admitResumed(res.Parent)
	} else {
		r.unreserveKey("", resume)
		if res.ParentResumed {
			r.signalBacklog()
		}
	}
	if p.State == StatePending {
		r.noteDue(p.RunAfter)
	}
	if c.OrderKey != "" && p.State.Final() {
		r.signalBacklog() // the next of its sequence is runnable now
	}
}

// outcome classifies the result of an attempt: done, failed, or a retry
// scheduled by the retry policy (the key's, if it has its own). A failure is
// recorded as an attempt.
func (r *Runtime) outcome(ctx context.Context, c *Call, output []byte, err error, started, now time.Time) *CallFinishParams {
	p := &CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID, Now: now, OrderKey: c.OrderKey}
	r.setLocal(p, c)
	if err == nil {
		p.State, p.Output, p.Status = StateDone, output, StatusOK
		r.stats.finished.Add(1)
		return p
	}
	var sz *snoozeError
	if errors.As(err, &sz) {
		p.State, p.Snooze, p.RunAfter = StatePending, true, now.Add(sz.after)
		r.stats.retried.Add(1)
		return p
	}
	p.Status = ErrorStatus(err)
	p.Error = err.Error()
	p.State = StateFailed
	p.Record = &Attempt{CallID: c.ID, Attempt: c.Attempt, Started: started, Duration: now.Sub(started),
		Status: p.Status, Error: p.Error, Detail: errorDetail(err)}
	if p.Status.Retryable() {
		policy := r.policy
		if c.Key != "" {
			if kp := r.keys.config(c.Key).RetryPolicy; kp != nil {
				policy = kp
			}
		}
		since := c.BudgetStart
		if since.IsZero() {
			since = c.CreatedAt
		}
		hint, _ := retryAfterHint(err)
		if at, ok := policy.NextRetry(c.Failures+1, since, now, hint); ok {
			p.State = StatePending
			p.RunAfter = at
		} else {
			p.Error = fmt.Sprintf("gave up after %d attempts: %s", c.Failures+1, p.Error)
		}
	}
	level := slog.LevelDebug
	if p.State == StateFailed {
		level = slog.LevelWarn
		r.stats.failed.Add(1)
	} else {
		r.stats.retried.Add(1)
	}
	r.log.Log(ctx, level, "call attempt failed", "function", c.Function, "call", c.ID,
		"attempt", c.Attempt, "status", p.Status, "err", err, "retry", p.State == StatePending)
	return p
}

// inlineRun is a run of a parent made by the worker of its last child (see
// Function.ResumeInline): the parent as it ran, and its outcome.
type inlineRun struct {
	call           *Call
	params         *CallFinishParams
	started, ended time.Time
}

// runInline runs a parent whose children all finished here (their
// outcomes, children) as its resumption would, if its function allows it,
// and returns the run if it ended done; nil otherwise (the parent then
// resumes as usual).
func (r *Runtime) runInline(parent *Call, children []*Call) *inlineRun {
	fn := r.funcs[parent.Function]
	if fn == nil || !fn.isResumeInline() || parent.ParentID != "" || parent.Gathers == 0 || !r.running() {
		return nil
	}
	c := *parent
	c.State, c.Attempt, c.Waiting = StateRunning, parent.Attempt+1, 0
	cc := &callContext{rt: r, call: &c, children: make([][]*Call, c.Gathers)}
	for _, child := range children {
		if child.Gather < len(cc.children) {
			cc.children[child.Gather] = append(cc.children[child.Gather], child)
		}
	}
	started := r.clock.Now()
	output, err := r.run(context.WithValue(r.runCtx, ctxKey{}, cc), fn, &c)
	if err != nil || cc.suspend != nil {
		return nil
	}
	ended := r.clock.Now()
	return &inlineRun{call: &c, started: started, ended: ended,
		params: &CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: StateDone, Output: output, Status: StatusOK, Now: ended}}
}
