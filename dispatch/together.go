package dispatch

import (
	"cmp"
	"context"
	"slices"
	"time"
)

// Local calls of one parent that end together are stored together: the
// first to end waits up to togetherWait for its siblings running here, and
// the last to end (or the first, once the wait is over) stores every
// outcome gathered so far in one store operation (ManyFinisher), so that
// an event's deliveries cost one write of the store between them instead
// of one each. A wait is short next to a delivery, and holds only the
// worker: its key's slot was given back when its function returned.
const togetherWait = 5 * time.Millisecond

// finishGroup is the outcomes of local calls of one parent to be stored in
// one operation.
type finishGroup struct {
	params []*CallFinishParams
	sealed bool // taken to be stored: later outcomes start a new group
	done   chan struct{}
	res    []*CallFinishResult // by place in params
	errs   []error
}

// finishTogether stores p, the final outcome of the local call c, with
// those of its siblings that end within togetherWait of it (see
// togetherWait), and returns its own result.
func (r *Runtime) finishTogether(ctx context.Context, c *Call, p *CallFinishParams) (*CallFinishResult, error) {
	g, i, lead := r.results.join(c.ParentID, c.ID, p)
	if g == nil {
		return r.retryStoreResult(ctx, c, p)
	}
	if !lead {
		t := time.NewTimer(togetherWait)
		select {
		case <-g.done:
		case <-t.C:
			lead = r.results.seal(c.ParentID, g)
		}
		t.Stop()
	}
	if lead {
		r.storeGroup(ctx, c, g)
	}
	<-g.done
	return g.res[i], g.errs[i]
}

// storeGroup stores a sealed group's outcomes and wakes its members. The
// finish that may finish the parent (FinishParent) goes last, so that it
// finds its siblings stored.
func (r *Runtime) storeGroup(ctx context.Context, c *Call, g *finishGroup) {
	defer close(g.done)
	g.res, g.errs = make([]*CallFinishResult, len(g.params)), make([]error, len(g.params))
	if len(g.params) == 1 {
		g.res[0], g.errs[0] = r.retryStoreResult(ctx, c, g.params[0])
		return
	}
	order := make([]int, len(g.params))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(btoi(g.params[a].FinishParent), btoi(g.params[b].FinishParent))
	})
	ps := make([]*CallFinishParams, len(order))
	for k, i := range order {
		ps[k] = g.params[i]
	}
	mf, ok := r.store.(ManyFinisher)
	if !ok {
		// One by one, each retried on its own: a finish stored is not
		// sent again because a later one failed.
		for _, i := range order {
			g.res[i], g.errs[i] = r.retryStoreResult(ctx, c, g.params[i])
		}
		return
	}
	var res []*CallFinishResult
	err := r.retryStore(c, func() (err error) {
		res, err = mf.CallFinishMany(ctx, ps)
		return err
	})
	for k, i := range order {
		if err != nil {
			g.errs[i] = err
		} else {
			g.res[i] = res[k]
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// join adds the final outcome p of the local call child to its parent's
// open group, and returns the group, p's place in it, and whether the
// caller must store it now: when every local sibling ran here has an
// outcome stored or on its way. It returns a nil group when the parent is
// not known here (its outcomes are then stored one by one).
func (rs *results) join(parentID, child string, p *CallFinishParams) (g *finishGroup, i int, lead bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	gp := rs.parents[parentID]
	if gp == nil || !gp.local[child] {
		return nil, 0, false
	}
	if gp.group == nil {
		gp.group = &finishGroup{done: make(chan struct{})}
	}
	g = gp.group
	g.params = append(g.params, p)
	i = len(g.params) - 1
	for id := range gp.local {
		if gp.got[id] == nil && gp.pending[id] == nil {
			return g, i, false // a sibling still runs
		}
		if id == gp.inlineChild && id != child && !slices.ContainsFunc(g.params, func(p *CallFinishParams) bool { return p.ID == id }) {
			// A sibling runs the parent inline and joins next: its
			// finish may finish the parent, and must be stored with
			// (after) this one, not alone before it.
			return g, i, false
		}
	}
	g.sealed, gp.group = true, nil
	return g, i, true
}

// seal takes a group to be stored, unless another member took it.
func (rs *results) seal(parentID string, g *finishGroup) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if g.sealed {
		return false
	}
	g.sealed = true
	if gp := rs.parents[parentID]; gp != nil && gp.group == g {
		gp.group = nil
	}
	return true
}
