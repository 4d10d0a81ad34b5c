package dispatch

import (
	"sync"
	"time"
)

// pool counts the slots of the worker pool: the calls leased to this process
// (queued for a worker or running) and the slots promised to calls that are
// being stored or claimed, which become calls in flight once they are.
//
// A slot is taken together with room in the call's key: keyLimiter.reserve
// calls take with its own lock held (lock order: keyLimiter.mu, then
// pool.mu). pool calls nothing else while it holds its lock.
type pool struct {
	size int
	// work holds the calls leased to this process that wait for a worker.
	// It has room for size calls, so handing it a call never blocks.
	work chan *Call

	mu       sync.Mutex
	inflight map[string]*inflight // leased to this process: queued or running
	reserved int                  // slots promised to calls being stored or claimed
}

type inflight struct {
	key string
	// lease is the id whose lease covers the call: its own, or its
	// parent's for a local call (Call.Local), which has no row to lease.
	lease     string
	claimedAt time.Time // or last renewed
	ran       bool      // its function returned: it no longer counts against its key
}

func newPool(size int) *pool {
	return &pool{size: size, work: make(chan *Call, size), inflight: make(map[string]*inflight)}
}

// free returns how many more calls this process may take on.
func (p *pool) free() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size - len(p.inflight) - p.reserved
}

// take promises up to want slots and returns how many it promised, and how
// many were free before.
func (p *pool) take(want int) (n, free int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	free = p.size - len(p.inflight) - p.reserved
	n = max(0, min(want, free))
	p.reserved += n
	return n, free
}

// giveBack returns n promised slots that will not be used.
func (p *pool) giveBack(n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	p.reserved -= n
	p.mu.Unlock()
}

// admit turns the slots promised to calls into calls in flight, and hands
// the calls to the workers.
func (p *pool) admit(calls []*Call, now time.Time) {
	p.mu.Lock()
	for _, c := range calls {
		p.reserved--
		lease := c.ID
		if c.Local {
			lease = c.ParentID
		}
		p.inflight[c.ID] = &inflight{key: c.Key, lease: lease, claimedAt: now}
	}
	p.mu.Unlock()
	for _, c := range calls {
		p.work <- c // never blocks: the channel holds as many calls as there are slots
	}
}

// markRan notes that a call's function returned. It returns the call's key
// the first time, and ok false after that or for a call not in flight.
func (p *pool) markRan(id string) (key string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, ok := p.inflight[id]
	if !ok || f.ran {
		return "", false
	}
	f.ran = true
	return f.key, true
}

// done ends a call's time in flight and frees its slot. It returns the
// call's key and whether its function ran (see markRan); ok is false for a
// call not in flight.
func (p *pool) done(id string) (key string, ran, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, ok := p.inflight[id]
	if !ok {
		return "", false, false
	}
	delete(p.inflight, id)
	return f.key, f.ran, true
}

// leasedBefore returns the calls in flight whose lease was taken or last
// renewed at least age before now, and the ids whose leases cover them
// (each once: the siblings of local calls share their parent's).
func (p *pool) leasedBefore(now time.Time, age time.Duration) (ids, leases []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := make(map[string]bool)
	for id, f := range p.inflight {
		if now.Sub(f.claimedAt) >= age {
			ids = append(ids, id)
			if !seen[f.lease] {
				seen[f.lease] = true
				leases = append(leases, f.lease)
			}
		}
	}
	return ids, leases
}

// renewed records that the leases of the calls were renewed at now.
func (p *pool) renewed(ids []string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if f, ok := p.inflight[id]; ok {
			f.claimedAt = now
		}
	}
}

// A call runs here once it holds a slot in the pool and room in its key.
// The methods below take and give back both; keyLimiter.reserve takes them
// as one step.

// reserveKey promises up to n slots to calls of key, within the workers and
// the key's limits, and returns how many it could. When the key's rate held
// it back, wake says when to look again.
func (r *Runtime) reserveKey(key string, n int, now time.Time) (k int, wake time.Time) {
	return r.reserveKeyBatch(key, n, false, now)
}

// reserveKeyBatch is reserveKey, but when batch is set it promises nothing
// unless a quarter of the key's limit is free: a claim is a write, and
// claiming one call each time one of a busy key's calls finishes would cost
// a transaction per call.
func (r *Runtime) reserveKeyBatch(key string, n int, batch bool, now time.Time) (k int, wake time.Time) {
	if n <= 0 || !r.running() {
		return 0, time.Time{}
	}
	return r.keys.reserve(key, n, batch, now, r.pool)
}

// unreserve gives back the slots promised to calls that will not run here.
func (r *Runtime) unreserve(calls []*Call) {
	if len(calls) == 0 {
		return
	}
	r.pool.giveBack(len(calls))
	r.keys.releaseEach(calls)
}

// unreserveKey gives back n slots promised to a key.
func (r *Runtime) unreserveKey(key string, n int) {
	if n <= 0 {
		return
	}
	r.pool.giveBack(n)
	r.keys.release(key, n)
}

// admit turns reservations into calls in flight and hands them to workers.
// Once stopping, it only gives the slots back: the calls stay leased to
// this process in the store, and Stop releases them.
func (r *Runtime) admit(calls []*Call) {
	if len(calls) == 0 {
		return
	}
	if r.stopping.Load() {
		r.unreserve(calls)
		return
	}
	r.pool.admit(calls, r.clock.Now())
}

// admitResumed admits a parent leased on resume, whose slot was promised
// to key "" before its key was known.
func (r *Runtime) admitResumed(parent *Call) {
	if parent.Key != "" {
		r.keys.move("", parent.Key)
	}
	r.admit([]*Call{parent})
}

// ran gives back a call's slot in its key's limit once its function has
// returned: the limit is of calls running against the key (the work a key
// stands for, such as requests to one service), and recording the outcome
// is no longer that. The worker's slot is given back by done.
func (r *Runtime) ran(c *Call) {
	if key, ok := r.pool.markRan(c.ID); ok && r.keys.returned(key) {
		r.signalBacklog()
	}
}

// done ends a call's time in flight: its slot in the pool, and in its key
// if its function never ran.
func (r *Runtime) done(c *Call) {
	if key, ran, ok := r.pool.done(c.ID); ok && !ran {
		r.keys.release(key, 1)
	}
}
