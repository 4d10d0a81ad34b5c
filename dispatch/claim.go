package dispatch

import (
	"context"
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
			if free := r.pool.free(); free >= threshold || free == r.workers {
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
	r.keyTurn++
	turn := r.keyTurn
	for i := range keys {
		key := keys[(turn+i)%len(keys)]
		limit, wake := r.reserveKeyBatch(key, min(r.pool.free(), r.claimBatch), true, now)
		if !wake.IsZero() {
			r.noteDue(wake) // held back by its rate: look again when a token is due
		}
		if limit == 0 {
			if wake.IsZero() && !r.keys.config(key).Paused {
				// Held back by its concurrency limit: the key's own
				// calls wake the scheduler when enough of them have
				// returned (see ran). Calls of other keys finishing
				// meanwhile would only find it held back again. If
				// enough returned since it was held back, look again.
				if !r.keys.markBlocked(key) {
					r.signalBacklog()
				}
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
		if r.pool.free() <= 0 {
			return true, nil
		}
	}
	return more, nil
}
