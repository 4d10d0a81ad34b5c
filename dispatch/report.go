package dispatch

import "time"

// AttemptReport describes one attempt of a call once its outcome is stored:
// what Config.OnAttempt receives, for an application's measurements
// (latency histograms, traces). Attempts whose outcome was not stored (the
// store failed, the lease was lost, shutdown cut them) are not reported:
// they run again.
type AttemptReport struct {
	// Call is the call as it ran: its id, function, key, parent, Meta,
	// CreatedAt and Attempt. Do not change it.
	Call *Call
	// Started is when the function was called, Duration how long it ran.
	Started  time.Time
	Duration time.Duration
	// Outcome is StateDone, StateFailed, StatePending (to run again at
	// RetryAt: a retry, or a snooze that counts no failure) or StateWaiting
	// (suspended in a Gather).
	Outcome State
	Status  Status
	// Err is what the function returned: nil when it was done or
	// suspended.
	Err     error
	RetryAt time.Time
	Snoozed bool
	// Eager is set for a first attempt made before the call was stored
	// (see Function.Eager).
	Eager bool
}

// report tells OnAttempt of an attempt whose outcome is stored.
func (r *Runtime) report(a *AttemptReport) {
	if r.onAttempt != nil && a != nil {
		r.onAttempt(*a)
	}
}

// newReport is the report of an attempt that ended with p.
func newReport(c *Call, started, ended time.Time, p *CallFinishParams, err error) *AttemptReport {
	a := &AttemptReport{Call: c, Started: started, Duration: ended.Sub(started), Outcome: p.State, Status: p.Status,
		Snoozed: p.Snooze}
	if p.State != StateDone {
		a.Err = err
	}
	if p.State == StatePending {
		a.RetryAt = p.RunAfter
	}
	return a
}
