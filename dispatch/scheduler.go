package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

// signalBacklog says that the store holds runnable calls that nobody leased.
func (r *Runtime) signalBacklog() {
	r.backlog.Store(true)
	r.wake()
}

// wake tells the scheduler to look again.
func (r *Runtime) wake() {
	select {
	case r.wakeCh <- struct{}{}:
	default:
	}
}

// noteDue remembers a retry time so that the scheduler wakes for it.
func (r *Runtime) noteDue(at time.Time) {
	n := at.UnixNano()
	for {
		cur := r.due.Load()
		if cur != 0 && cur <= n {
			return
		}
		if r.due.CompareAndSwap(cur, n) {
			r.wake()
			return
		}
	}
}

// schedule claims runnable calls from the store when it may hold some (the
// backlog flag: work stored pending, a retry that came due, a poll, a
// notification from another process) and workers are free. It claims key by
// key, each within its limits, starting from a different key each round so
// that no key's backlog starves another's. It claims in batches, at least an
// eighth of the workers at a time, because a claim is a write: claiming one
// call per free worker would cost a transaction each.
func (r *Runtime) schedule(ctx context.Context) {
	defer r.loops.Done()
	threshold := max(1, min(r.claimBatch, r.workers/8))
	var notify <-chan struct{}
	if n, ok := r.store.(Notifier); ok {
		notify = n.Notify()
	}
	failing := false
	var retryAt time.Time // after a failed claim, the next try waits for it
	for {
		now := r.clock.Now()
		if due := r.due.Load(); due != 0 && due <= now.UnixNano() {
			r.due.CompareAndSwap(due, 0)
			r.backlog.Store(true)
		}
		if r.backlog.Load() && !now.Before(retryAt) {
			if free := r.free(); free >= threshold || free == r.workers {
				r.backlog.Store(false)
				more, err := r.claimRound(ctx, now)
				switch {
				case err != nil:
					r.backlog.Store(true)
					if ctx.Err() != nil {
						return
					}
					if !failing {
						r.log.Error("claim calls; retrying every poll interval", "err", err)
					}
					failing = true
					retryAt = now.Add(r.pollInterval)
				default:
					if failing {
						r.log.Info("claiming calls again")
					}
					failing = false
					if more && ctx.Err() == nil {
						r.backlog.Store(true) // there may be more
						continue
					}
				}
			}
		}

		wait := r.pollInterval
		if due := r.due.Load(); due != 0 {
			wait = min(wait, max(0, time.Duration(due-r.clock.Now().UnixNano())))
		}
		timer := r.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.wakeCh:
		case <-notify:
			r.backlog.Store(true)
		case <-timer.Chan():
			r.backlog.Store(true) // poll: other processes, expired leases
		}
		timer.Stop()
	}
}

// claimRound claims what it can of every key with runnable calls. It reports
// whether some key filled all the room it was given, so that there may be
// more to claim at once.
func (r *Runtime) claimRound(ctx context.Context, now time.Time) (more bool, err error) {
	keys, err := r.store.CallKeys(ctx, now)
	if err != nil || len(keys) == 0 {
		return false, err
	}
	r.mu.Lock()
	r.keyTurn++
	turn := r.keyTurn
	r.mu.Unlock()
	for i := range keys {
		key := keys[(turn+i)%len(keys)]
		limit, wake := r.reserveKeyBatch(key, min(r.free(), r.claimBatch), true, now)
		if !wake.IsZero() {
			r.noteDue(wake) // held back by its rate: look again when a token is due
		}
		if limit == 0 {
			if wake.IsZero() && !r.keyConfig(key).Paused {
				// Held back by its concurrency limit: the key's own
				// calls wake the scheduler when enough of them have
				// returned (see ran). Calls of other keys finishing
				// meanwhile would only find it held back again.
				r.markBlocked(key)
			}
			continue
		}
		calls, err := r.store.CallClaim(ctx, &CallClaimParams{
			Key:        key,
			Owner:      r.owner,
			Functions:  r.names,
			Limit:      limit,
			Now:        now,
			LeaseUntil: now.Add(r.leaseDuration),
		})
		if err != nil {
			r.unreserveKey(key, limit)
			return false, err
		}
		r.stats.claims.Add(1)
		r.stats.claimed.Add(int64(len(calls)))
		r.unreserveKey(key, limit-len(calls))
		r.admit(calls)
		more = more || len(calls) == limit
		if r.free() <= 0 {
			return true, nil
		}
	}
	return more, nil
}

func (r *Runtime) worker() {
	defer r.workersWG.Done()
	for {
		select {
		case c := <-r.work:
			if !r.stopping.Load() {
				r.execute(c)
			}
			r.done(c)
			if r.backlog.Load() {
				r.wake()
			}
		case <-r.quit:
			return
		}
	}
}

// callContext is what a running call knows about itself; Gather reads and
// writes it through the context.
type callContext struct {
	rt       *Runtime
	call     *Call
	children [][]*Call // recorded children by gather
	next     int       // ordinal of the next Gather
	suspend  *suspension
}

type suspension struct {
	gather   int
	children []*Call
}

type ctxKey struct{}

func callFrom(ctx context.Context) *callContext {
	cc, _ := ctx.Value(ctxKey{}).(*callContext)
	return cc
}

// errSuspended is what Gather returns when the caller must stop and wait.
var errSuspended = errors.New("dispatch: call suspended until its gathered calls are final; return this error")

// CallInfo describes the call a durable function is running as.
type CallInfo struct {
	ID       string
	ParentID string
	// Attempt counts the runs of this call, 1 for the first.
	Attempt int
	// Failures counts the earlier attempts that failed and were retried.
	Failures  int
	CreatedAt time.Time
}

// CallFromContext returns the call a durable function runs as.
func CallFromContext(ctx context.Context) (CallInfo, bool) {
	cc := callFrom(ctx)
	if cc == nil {
		return CallInfo{}, false
	}
	c := cc.call
	return CallInfo{ID: c.ID, ParentID: c.ParentID, Attempt: c.Attempt, Failures: c.Failures, CreatedAt: c.CreatedAt}, true
}

func (r *Runtime) execute(c *Call) {
	// Store writes that record an outcome outlive a shutdown deadline: a
	// result that was produced should not be thrown away.
	storeCtx := context.WithoutCancel(r.runCtx)
	cc := &callContext{rt: r, call: c}
	if c.Gathers > 0 {
		children, ok := r.results.children(c.ID)
		if ok {
			r.stats.resultsFromMemory.Add(1)
		} else {
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

	if c.Key != "" && r.keyConfig(c.Key).Paused {
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
		r.suspend(storeCtx, c, cc.suspend)
		return
	}
	r.finish(storeCtx, c, output, err, started)
}

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
func (r *Runtime) suspend(ctx context.Context, c *Call, s *suspension) {
	now := r.clock.Now()
	leased := r.leaseNew(s.children, now)
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
		r.results.expect(c.ID, s.children)
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

// snooze puts a call back in the store untried, runnable at once: its key
// was paused after it was leased, and claims skip paused keys.
func (r *Runtime) snooze(ctx context.Context, c *Call) {
	now := r.clock.Now()
	_, err := r.store.CallFinish(ctx, &CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID,
		State: StatePending, Snooze: true, RunAfter: now, Now: now})
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
		r.observe(c.Key, p.Status, now)
	}
	// The parent a last child resumes is leased here if there is room.
	// Its key is not known yet: parents are top-level calls of fanout
	// (key ""), and a keyed parent simply counts against "" meanwhile.
	resume := 0
	if c.ParentID != "" && p.State.Final() {
		if resume, _ = r.reserveKey("", 1, now); resume == 1 {
			p.ResumeOwner = r.owner
			p.ResumeLeaseUntil = now.Add(r.leaseDuration)
		}
	}
	recordResult := c.ParentID != "" && p.State.Final()
	if recordResult {
		r.results.finishing(c.ParentID)
	}
	var res *CallFinishResult
	serr := r.retryStore(c, func() (err error) {
		res, err = r.store.CallFinish(ctx, p)
		return err
	})
	if recordResult {
		var outcome *Call
		if serr == nil && res.Applied {
			outcome = &Call{ID: c.ID, ParentID: c.ParentID, Function: c.Function, Key: c.Key, Gather: c.Gather,
				Index: c.Index, State: p.State, Output: p.Output, Error: p.Error, Status: p.Status}
		}
		r.results.finished(c.ParentID, outcome)
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
	if p.State.Final() && c.Gathers > 0 {
		r.results.forget(c.ID)
	}
	if res.Parent != nil {
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
}

// outcome classifies the result of an attempt: done, failed, or a retry
// scheduled by the retry policy (the key's, if it has its own). A failure is
// recorded as an attempt.
func (r *Runtime) outcome(ctx context.Context, c *Call, output []byte, err error, started, now time.Time) *CallFinishParams {
	p := &CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID, Now: now}
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
			if kp := r.keyConfig(c.Key).RetryPolicy; kp != nil {
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

// maintain renews the leases of long-running calls, returns expired leases to
// the store (the calls of a crashed process), and applies retention.
func (r *Runtime) maintain(ctx context.Context) {
	defer r.loops.Done()
	every := max(r.leaseDuration/3, 10*time.Millisecond)
	ticker := r.clock.NewTicker(every)
	defer ticker.Stop()
	var lastRetention time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.Chan():
		}
		now := r.clock.Now()
		r.renewLeases(ctx, now, every)
		n, err := r.store.CallLeaseRelease(ctx, &CallLeaseReleaseParams{Now: now})
		if err != nil && ctx.Err() == nil {
			r.log.Error("release expired leases", "err", err)
		}
		if n > 0 {
			r.log.Warn("calls whose lease expired run again", "calls", n)
			r.signalBacklog()
		}
		if now.Sub(lastRetention) >= time.Minute {
			lastRetention = now
			r.applyRetention(ctx, now)
		}
	}
}

func (r *Runtime) renewLeases(ctx context.Context, now time.Time, age time.Duration) {
	var ids []string
	r.mu.Lock()
	for id, f := range r.inflight {
		if now.Sub(f.claimedAt) >= age {
			ids = append(ids, id)
		}
	}
	r.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	err := r.store.CallLeaseRenew(ctx, &CallLeaseRenewParams{Owner: r.owner, IDs: ids, LeaseUntil: now.Add(r.leaseDuration)})
	if err != nil && ctx.Err() == nil {
		r.log.Error("renew leases", "calls", len(ids), "err", err)
		return
	}
	r.mu.Lock()
	for _, id := range ids {
		if f, ok := r.inflight[id]; ok {
			f.claimedAt = now
		}
	}
	r.mu.Unlock()
}

func (r *Runtime) applyRetention(ctx context.Context, now time.Time) {
	rules := []struct {
		keep   time.Duration
		failed bool
	}{{r.retention, false}, {r.failedKeep, true}}
	for _, rule := range rules {
		if rule.keep <= 0 {
			continue
		}
		for ctx.Err() == nil {
			n, err := r.store.CallDeleteFinished(ctx, &CallDeleteFinishedParams{
				Before: now.Add(-rule.keep), Failed: rule.failed, Limit: 1000,
			})
			if err != nil {
				if ctx.Err() == nil {
					r.log.Error("delete finished calls", "err", err)
				}
				return
			}
			if n < 1000 {
				break
			}
		}
	}
}
