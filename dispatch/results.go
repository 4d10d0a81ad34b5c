package dispatch

import (
	"slices"
	"sync"
	"time"
)

// results remembers the outcomes of the children this process ran, so that
// a parent resumed here finds its Gather's results without reading them back
// from the store: the last child's outcome and the parent's resumption are
// one transaction, and the parent runs right after, here, most of the time.
// It is a cache and only that: a parent whose children did not all finish
// here (another replica ran some, this process restarted, the cache was
// full) reads them from the store as before. It holds at most max parents
// (a few kB each), so that parents waiting long (on children whose calls
// hang) cannot make it grow without bound.
type results struct {
	mu      sync.Mutex
	parents map[string]*gathered
	max     int
	// held is the size of the inputs of the parents kept for a run
	// inline, at most maxHeld: beyond it a parent is cached without them
	// (and resumes as usual), so that large inputs do not fill memory.
	held int
}

// maxHeld bounds the inputs the cache holds for runs inline.
const maxHeld = 8 << 20

type gathered struct {
	// parent is the call as it was stored when it suspended, for a run
	// of it inline (see Function.ResumeInline); nil when not known.
	parent   *Call
	expected map[string]bool  // child ids of the parent's gathers
	local    map[string]bool  // those of them that are local calls run here
	group    *finishGroup     // outcomes of local calls to store together (together.go)
	got      map[string]*Call // their outcomes, as far as they ran here
	// finishing counts the children of this parent whose outcome is being
	// stored here: siblings that finish in the same commit all return at
	// once, and the one that resumed the parent must not have it run
	// before the others recorded theirs. pending holds their outcomes
	// meanwhile, and inline says that one of them runs the parent.
	finishing int
	pending   map[string]*Call
	inline    bool
	// inlineChild is the child whose worker runs the parent inline, while
	// it does: its outcome is still to join its siblings' (together.go).
	inlineChild string
	// settled is closed when finishing drops back to 0 (nil when it is).
	settled chan struct{}
}

// settleWait bounds how long a resumed parent waits for siblings still
// recording their outcome here before it reads them from the store: they
// returned from the same commit and are scheduled soon, but a sibling whose
// record failed may retry for a while.
const settleWait = 100 * time.Millisecond

func newResults(max int) *results {
	return &results{parents: make(map[string]*gathered), max: max}
}

// expect records the children a parent now waits for. parent is the call
// as stored with its suspension (waiting, its Gathers counting this one).
func (rs *results) expect(parent *Call, children []*Call) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parent.ID]
	if g == nil {
		if len(rs.parents) >= rs.max {
			return
		}
		g = &gathered{expected: make(map[string]bool, len(children)), got: make(map[string]*Call, len(children))}
		rs.parents[parent.ID] = g
	}
	if g.parent == nil && rs.held+len(parent.Input) <= maxHeld {
		g.parent = parent
		rs.held += len(parent.Input)
	}
	for _, c := range children {
		g.expected[c.ID] = true
		if c.Local {
			if g.local == nil {
				g.local = make(map[string]bool)
			}
			g.local[c.ID] = true
		}
	}
}

// finishing notes that a child's outcome (c) is about to be stored. When
// every other child of the parent finished here or is finishing, it
// returns the parent and all its children's outcomes, ordered by gather
// and index, for a run of the parent inline (to this caller only).
func (rs *results) finishing(parentID string, c *Call) (parent *Call, children []*Call) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parentID]
	if g == nil {
		return nil, nil
	}
	if g.finishing == 0 {
		g.settled = make(chan struct{})
	}
	g.finishing++
	if g.pending == nil {
		g.pending = make(map[string]*Call)
	}
	g.pending[c.ID] = c
	if g.inline || g.parent == nil || !g.expected[c.ID] {
		return nil, nil
	}
	for id := range g.expected {
		if g.got[id] == nil && g.pending[id] == nil {
			return nil, nil
		}
	}
	g.inline, g.inlineChild = true, c.ID
	children = make([]*Call, 0, len(g.expected))
	for id := range g.expected {
		if k := g.pending[id]; k != nil {
			children = append(children, k)
		} else {
			children = append(children, g.got[id])
		}
	}
	sortChildren(children)
	return g.parent, children
}

// finished ends finishing, keeping the child's outcome when it was stored
// (stored false: the attempt was taken over, or the store failed).
func (rs *results) finished(parentID string, c *Call, stored bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parentID]
	if g == nil {
		return
	}
	g.finishing--
	if g.finishing == 0 {
		close(g.settled)
		g.settled = nil
	}
	delete(g.pending, c.ID)
	g.inline, g.inlineChild = false, ""
	if stored && g.expected[c.ID] {
		g.got[c.ID] = c
	}
}

func sortChildren(calls []*Call) {
	slices.SortFunc(calls, func(a, b *Call) int {
		if a.Gather != b.Gather {
			return a.Gather - b.Gather
		}
		return a.Index - b.Index
	})
}

// children returns a parent's children, ordered by gather and index, if
// every one of them finished here.
func (rs *results) children(parent string) ([]*Call, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parent]
	// Siblings stored in the commit that resumed the parent are a few
	// instructions from recording their outcome: wait for them.
	if g != nil && g.finishing > 0 {
		settled := g.settled
		rs.mu.Unlock()
		select {
		case <-settled:
		case <-time.After(settleWait):
		}
		rs.mu.Lock()
		g = rs.parents[parent]
	}
	if g == nil || g.finishing > 0 || len(g.got) != len(g.expected) {
		return nil, false
	}
	out := make([]*Call, 0, len(g.got))
	for _, c := range g.got {
		out = append(out, c)
	}
	sortChildren(out)
	return out, true
}

// forget drops a parent that finished (or is no longer ours to run).
func (rs *results) forget(parent string) {
	rs.mu.Lock()
	if g := rs.parents[parent]; g != nil && g.parent != nil {
		rs.held -= len(g.parent.Input)
	}
	delete(rs.parents, parent)
	rs.mu.Unlock()
}
