package dispatch

import (
	"runtime"
	"slices"
	"sync"
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
}

type gathered struct {
	expected map[string]bool  // child ids of the parent's gathers
	got      map[string]*Call // their outcomes, as far as they ran here
	// finishing counts the children of this parent whose outcome is being
	// stored here: siblings that finish in the same commit all return at
	// once, and the one that resumed the parent must not have it run
	// before the others recorded theirs.
	finishing int
}

func newResults(max int) *results {
	return &results{parents: make(map[string]*gathered), max: max}
}

// expect records the children a parent now waits for.
func (rs *results) expect(parent string, children []*Call) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parent]
	if g == nil {
		if len(rs.parents) >= rs.max {
			return
		}
		g = &gathered{expected: make(map[string]bool, len(children)), got: make(map[string]*Call, len(children))}
		rs.parents[parent] = g
	}
	for _, c := range children {
		g.expected[c.ID] = true
	}
}

// finishing notes that a child's outcome is about to be stored.
func (rs *results) finishing(parent string) {
	rs.mu.Lock()
	if g := rs.parents[parent]; g != nil {
		g.finishing++
	}
	rs.mu.Unlock()
}

// finished ends finishing, keeping the child's outcome when it was stored
// (c is nil when it was not: the attempt was taken over, or the store
// failed).
func (rs *results) finished(parent string, c *Call) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parent]
	if g == nil {
		return
	}
	g.finishing--
	if c != nil && g.expected[c.ID] {
		g.got[c.ID] = c
	}
}

// children returns a parent's children, ordered by gather and index, if
// every one of them finished here.
func (rs *results) children(parent string) ([]*Call, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	g := rs.parents[parent]
	// Siblings stored in the commit that resumed the parent are a few
	// instructions from recording their outcome: let them.
	for i := 0; g != nil && g.finishing > 0 && i < 1000; i++ {
		rs.mu.Unlock()
		runtime.Gosched()
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
	slices.SortFunc(out, func(a, b *Call) int {
		if a.Gather != b.Gather {
			return a.Gather - b.Gather
		}
		return a.Index - b.Index
	})
	return out, true
}

// forget drops a parent that finished (or is no longer ours to run).
func (rs *results) forget(parent string) {
	rs.mu.Lock()
	delete(rs.parents, parent)
	rs.mu.Unlock()
}
