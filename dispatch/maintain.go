package dispatch

import (
	"context"
	"time"
)

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

// renewLeases renews the leases of the calls in flight here that were taken
// or last renewed at least age ago: a call may run for longer than a lease,
// and another process must not take it over while it does.
func (r *Runtime) renewLeases(ctx context.Context, now time.Time, age time.Duration) {
	ids, leases := r.pool.leasedBefore(now, age)
	if len(ids) == 0 {
		return
	}
	err := r.store.CallLeaseRenew(ctx, &CallLeaseRenewParams{Owner: r.owner, IDs: leases, LeaseUntil: now.Add(r.leaseDuration)})
	if err != nil && ctx.Err() == nil {
		r.log.Error("renew leases", "calls", len(ids), "err", err)
		return
	}
	r.pool.renewed(ids, now)
}

// applyRetention deletes the finished calls past their retention, a
// thousand top-level calls per store operation, so that no operation holds
// the store for long.
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
