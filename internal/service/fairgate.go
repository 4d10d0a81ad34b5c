package service

import (
	"context"
	"sync"
	"time"
)

// fairGate shares ingest between tenants. A tenant alone is never held
// back: its requests, as many as its clients send, go through at once, so
// that a single-tenant fanout ingests as it always did. While other
// tenants send too (a tenant sent a request within activeWindow), each may
// have at most its share of the budget in flight (budget / active tenants,
// at least minShare), and the rest of its requests wait, their bodies not
// yet read, in the tenant's own queue. Without it, one tenant's 64
// connections of batches take both the CPU that decodes requests and every
// commit of the store, and another tenant's single event waits behind them
// (docs/BENCHMARKS.md, "Tenant fairness").
//
// What is shared is request bytes (the Content-Length), not requests: a
// request's cost, in decoding and in the commit it joins, grows with its
// events, and a tenant that sends single events from many connections
// needs them all in flight for its events to share commits; a share in
// requests would hold it to a few. A request larger than the share goes
// when its tenant has nothing else in flight.
//
// The gate is taken before the body is read: a request that waits costs
// nothing but its connection.
type fairGate struct {
	budget int64 // bytes
	now    func() time.Time

	mu      sync.Mutex
	tenants map[string]*gateTenant
}

// gateTenant is one tenant's state at the gate.
type gateTenant struct {
	inflight int64 // bytes
	lastSeen time.Time
	waiters  []gateWaiter // FIFO
}

// gateWaiter is a request waiting at the gate: its bytes, and the channel
// closed when it is admitted.
type gateWaiter struct {
	bytes int64
	ready chan struct{}
}

const (
	// activeWindow is how long a tenant counts as sending after its last
	// request: one that sends 50 events/s is always active, and the share
	// of the others does not come and go between its requests.
	activeWindow = time.Second
	// minShare is the fewest bytes a tenant may have in flight however
	// many send at once.
	minShare = 16 << 10
	// unknownLength is the weight of a request whose length is not told
	// (chunked): a batch, likely.
	unknownLength = 64 << 10
)

func newFairGate(budget int64, now func() time.Time) *fairGate {
	return &fairGate{budget: budget, now: now, tenants: map[string]*gateTenant{}}
}

// share is what each tenant may have in flight now; 0 is no bound (one
// tenant sends). Called with g.mu held.
func (g *fairGate) share(now time.Time) int64 {
	active := 0
	for key, t := range g.tenants {
		switch {
		case t.inflight > 0 || len(t.waiters) > 0 || now.Sub(t.lastSeen) < activeWindow:
			active++
		default:
			delete(g.tenants, key) // forgotten until it sends again
		}
	}
	if active <= 1 {
		return 0
	}
	return max(minShare, g.budget/int64(active))
}

// fits reports whether n more bytes of t fit share s. Called with g.mu
// held.
func (t *gateTenant) fits(n, s int64) bool {
	return s == 0 || t.inflight == 0 || t.inflight+n <= s
}

// enter waits until the tenant of key may have a request of n bytes (-1:
// not told) in flight, and returns the function that ends it; an error is
// ctx's, or context.DeadlineExceeded after waiting timeout.
func (g *fairGate) enter(ctx context.Context, timeout time.Duration, key string, n int64) (leave func(), err error) {
	if g == nil || g.budget <= 0 {
		return func() {}, nil
	}
	if n < 0 {
		n = unknownLength
	}
	now := g.now()
	g.mu.Lock()
	t := g.tenants[key]
	if t == nil {
		t = &gateTenant{}
		g.tenants[key] = t
	}
	t.lastSeen = now
	if len(t.waiters) == 0 && t.fits(n, g.share(now)) {
		t.inflight += n
		g.mu.Unlock()
		return func() { g.leave(key, n) }, nil
	}
	ready := make(chan struct{})
	t.waiters = append(t.waiters, gateWaiter{bytes: n, ready: ready})
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case <-ready:
		return func() { g.leave(key, n) }, nil
	case <-ctx.Done():
		g.mu.Lock()
		defer g.mu.Unlock()
		select {
		case <-ready: // admitted meanwhile: give the place back
			t.inflight -= n
			g.admitLocked(g.now())
		default:
			for i, w := range t.waiters {
				if w.ready == ready {
					t.waiters = append(t.waiters[:i], t.waiters[i+1:]...)
					break
				}
			}
		}
		return nil, ctx.Err()
	}
}

// leave ends a request of n bytes of key's tenant and admits whom it can.
func (g *fairGate) leave(key string, n int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t := g.tenants[key]; t != nil {
		t.inflight -= n
	}
	g.admitLocked(g.now())
}

// admitLocked admits the waiting requests that fit the share now, each
// tenant's in order.
func (g *fairGate) admitLocked(now time.Time) {
	s := g.share(now)
	for _, t := range g.tenants {
		for len(t.waiters) > 0 && t.fits(t.waiters[0].bytes, s) {
			w := t.waiters[0]
			close(w.ready)
			t.waiters = t.waiters[1:]
			t.inflight += w.bytes
		}
	}
}
