package dispatch

import (
	"context"
	"errors"
	"fmt"
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
	// parentInput is the parent's input once read (call.ParentInput when
	// the runtime had it).
	parentInput []byte
	parentRead  bool
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
	// Key is the call's key (see Call.Key).
	Key string
	// Attempt counts the runs of this call, 1 for the first.
	Attempt int
	// Failures counts the earlier attempts that failed and were retried.
	Failures  int
	CreatedAt time.Time
	// Meta is the call's Meta (see Call.Meta); do not change it.
	Meta []byte
	// OrderKey and OutOfOrder are the call's (see Call.OrderKey).
	OrderKey   string
	OutOfOrder bool
}

// CallFromContext returns the call a durable function runs as.
func CallFromContext(ctx context.Context) (CallInfo, bool) {
	cc := callFrom(ctx)
	if cc == nil {
		return CallInfo{}, false
	}
	c := cc.call
	return CallInfo{ID: c.ID, ParentID: c.ParentID, Key: c.Key, Attempt: c.Attempt, Failures: c.Failures, CreatedAt: c.CreatedAt,
		Meta: c.Meta, OrderKey: c.OrderKey, OutOfOrder: c.OutOfOrder}, true
}

// ParentInput returns the Input of the parent of the call ctx runs: the
// same bytes the parent was given. A child can so leave out of its own
// input what its parent holds already (fanout: a delivery carries no copy
// of its event). The runtime has the parent's input at hand when the parent
// ran in this process (no copy, no read); otherwise it reads it from the
// store, once per attempt. It returns nil for a top-level call, and an
// error outside a durable function or when the store cannot be read (the
// error is temporary: the call is retried).
func ParentInput(ctx context.Context) ([]byte, error) {
	cc := callFrom(ctx)
	if cc == nil {
		return nil, ErrNotInCall
	}
	if cc.call.ParentID == "" {
		return nil, nil
	}
	if cc.parentRead {
		return cc.parentInput, nil
	}
	if in := cc.call.ParentInput; in != nil {
		cc.parentInput, cc.parentRead = in, true
		return in, nil
	}
	cc.rt.stats.parentInputReads.Add(1)
	p, err := cc.rt.store.CallGet(ctx, cc.call.ParentID)
	if err != nil {
		return nil, fmt.Errorf("%w: read the input of parent %s: %v", ErrTemporary, cc.call.ParentID, err)
	}
	cc.parentInput, cc.parentRead = p.Input, true
	return p.Input, nil
}
