package dispatch

import (
	"context"
	"errors"
	"time"
)

// callContext is what a running call knows about itself; Gather reads and
// writes it through the context.
type callContext struct {
	rt       *Runtime
	call     *Call
	children [][]*Call // recorded children by gather
	next     int       // ordinal of the next Gather
	suspend  *suspension
}

// suspension is what a call that reached a new Gather leaves to be stored:
// the children of its gather-th Gather, stored with the call parked.
type suspension struct {
	gather   int
	children []*Call
}

type ctxKey struct{}

// callFrom returns the call that ctx runs, nil outside a durable function.
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
	// Meta is the call's Meta (see Call.Meta); do not change it.
	Meta []byte
}

// CallFromContext returns the call a durable function runs as.
func CallFromContext(ctx context.Context) (CallInfo, bool) {
	cc := callFrom(ctx)
	if cc == nil {
		return CallInfo{}, false
	}
	c := cc.call
	return CallInfo{ID: c.ID, ParentID: c.ParentID, Attempt: c.Attempt, Failures: c.Failures, CreatedAt: c.CreatedAt,
		Meta: c.Meta}, true
}
