package dispatch

import (
	"context"
	"fmt"
	"time"
)

// Attaching children to a call after it ran.
//
// A call that fanned out (Gather) has the children of its first run. An
// application may later want it to have one more (fanout: a delivery of an
// old event to a destination added since, a replay). Attach gives a call new
// children as one more Gather of its own, as if it had asked for them: the
// call waits for them, becoming waiting again if it had finished, and runs
// once more when they are final. On that run, the gathers its function
// reaches return their recorded results as always; the attached gathers it
// does not reach count toward its outcome as a Gather's failures would (a
// failed attached child fails the call with a *GatherError). So a call is
// never finished while a child of it is not, and retention, which deletes
// finished calls with their descendants, never deletes a child that has yet
// to run.
//
// The attached gather takes the next ordinal (the call's Gathers). A
// function that would Gather again after the point it reached when it
// finished would get the attached children's results there instead of
// gathering its own: attach only to calls of functions that gather at most
// once (a fan-out), or that have finished.

// AttachOutcome says what CallAttach did with one child.
type AttachOutcome int

// The outcomes of an attach.
const (
	// Attached: the child is stored, pending, and its parent waits for it.
	Attached AttachOutcome = iota
	// AttachSkipped: the parent has a child like it already (see
	// CallAttachParams.Unless); nothing was stored.
	AttachSkipped
	// AttachBusy: the parent is running, or has not made its first
	// attempt (its children are not known yet): try again later.
	AttachBusy
	// AttachNoParent: no such parent (it was deleted, by retention say).
	AttachNoParent
)

var attachOutcomeNames = [...]string{"attached", "skipped", "busy", "no parent"}

func (o AttachOutcome) String() string {
	if o >= 0 && int(o) < len(attachOutcomeNames) {
		return attachOutcomeNames[o]
	}
	return fmt.Sprintf("AttachOutcome(%d)", int(o))
}

// AttachUnless says which existing children make an attach skip a child.
type AttachUnless int

// The rules of CallAttachParams.Unless.
const (
	// AttachAlways attaches every child.
	AttachAlways AttachUnless = iota
	// AttachUnlessKey skips a child whose parent has a child of the same
	// Key (fanout: a delivery to the same destination).
	AttachUnlessKey
	// AttachUnlessKeyTag skips a child whose parent has a child of the same
	// Key and Tag: an attach repeated with the same tag (a retried page of
	// a replay) stores nothing twice.
	AttachUnlessKeyTag
)

// CallAttachParams are the arguments of Store.CallAttach.
type CallAttachParams struct {
	// Calls are the new children, each with ParentID, Function, Input and,
	// as needed, Key and Tag. The store sets the rest: the children of one
	// parent form a new gather of it (Gather is the parent's Gathers,
	// Index their order here, ID ChildID of both), pending and runnable at
	// Now, with the parent's Meta.
	Calls  []*Call
	Unless AttachUnless
	Now    time.Time
}

// AttachResult is what CallAttach did with one child of
// CallAttachParams.Calls, in the same order.
type AttachResult struct {
	Outcome AttachOutcome
	// ID is the stored child's id, when Attached.
	ID string
}

// ChildID is the id of the index-th child of a call's gather-th Gather:
// "<parent>.<gather>.<index>".
func ChildID(parent string, gather, index int) string { return childID(parent, gather, index) }

// Attach attaches children to calls after they ran (see the top of this
// file, and Store.CallAttach), and returns what it did with each. The new
// children are pending: this process and the others claim them as any
// backlog.
func (r *Runtime) Attach(ctx context.Context, p *CallAttachParams) ([]AttachResult, error) {
	if r.state.Load() == stateStopped {
		return nil, ErrStopped
	}
	for _, c := range p.Calls {
		if _, ok := r.funcs[c.Function]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrNotRegistered, c.Function)
		}
		if c.ParentID == "" {
			return nil, fmt.Errorf("dispatch: attach a call of %s without a parent", c.Function)
		}
		if c.OrderKey != "" {
			// Its turn in its sequence has passed: it runs now, marked.
			c.OrderKey, c.OutOfOrder = "", true
		}
	}
	if p.Now.IsZero() {
		p.Now = r.clock.Now()
	}
	res, err := r.store.CallAttach(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("dispatch: attach calls: %w", err)
	}
	attached := false
	for i, a := range res {
		if a.Outcome == Attached {
			// What this process remembers of the parent's children no
			// longer covers them all.
			r.results.forget(p.Calls[i].ParentID)
			attached = true
		}
	}
	if attached {
		r.signalBacklog()
	}
	return res, nil
}

// attachedError is the outcome of the gathers of a call that its function
// did not reach on a run that ended without error: gathers attached after it
// first ran. Their failures are the call's, as a Gather's would be.
func (cc *callContext) attachedError() error {
	var failed []ChildError
	total := 0
	for g := cc.next; g < len(cc.children); g++ {
		for i, child := range cc.children[g] {
			total++
			if child.State != StateDone {
				failed = append(failed, ChildError{Index: i, CallID: child.ID, Status: child.Status, Message: child.Error})
			}
		}
	}
	if len(failed) > 0 {
		return &GatherError{Total: total, Failed: failed}
	}
	return nil
}

// childrenOf is results.children for a resumed call c, trusted only if it
// holds a child of c's last gather: a gather attached after the others ran
// here is not among them, and c must then read its children from the
// store. (Every gather that suspended a call, or was attached to it, has at
// least one child.)
func (rs *results) childrenOf(c *Call) ([]*Call, bool) {
	children, ok := rs.children(c.ID)
	if !ok || c.Gathers == 0 {
		return children, ok
	}
	if len(children) == 0 || children[len(children)-1].Gather != c.Gathers-1 {
		return nil, false
	}
	return children, true
}
