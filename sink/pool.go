package sink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"

	"fanout/dispatch"
)

// Target is a broker destination as the pool sees it: which one, which
// version of it, and its kind and config as stored.
type Target struct {
	ID      string
	Version int64
	Type    string
	Config  json.RawMessage
}

// Pool keeps one open Sender per destination, shared by all its
// deliveries, opened on the first delivery and kept until the destination
// changes or is deleted: connecting to a broker (TCP, TLS, authentication,
// a channel in confirm mode) costs far more than a message. A change of
// version that leaves the type and config as they were (a pause, a new
// description) keeps the connection. It is safe for concurrent use.
type Pool struct {
	reg *Registry
	env Env

	mu      sync.Mutex
	entries map[string]*entry
	closed  bool
}

// entry is the sender of one destination version.
type entry struct {
	version int64
	sum     [32]byte // of type and config: the same sum, the same sender
	ready   chan struct{}
	sender  Sender // once ready is closed; nil if opening failed
	err     error
	refs    int  // sends in flight
	retired bool // replaced or forgotten: closed when refs drops to 0
}

// NewPool returns a pool that opens senders of reg's kinds with env.
func NewPool(reg *Registry, env Env) *Pool {
	return &Pool{reg: reg, env: env, entries: make(map[string]*entry)}
}

func sum(t Target) [32]byte {
	h := sha256.New()
	h.Write([]byte(t.Type))
	h.Write([]byte{0})
	var compact bytes.Buffer
	if json.Compact(&compact, t.Config) == nil {
		h.Write(compact.Bytes())
	} else {
		h.Write(t.Config)
	}
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// Send delivers m to t with t's pooled sender, opening it if need be.
func (p *Pool) Send(ctx context.Context, t Target, m *Message) error {
	s, release, err := p.Acquire(ctx, t)
	if err != nil {
		return err
	}
	defer release()
	return s.Send(ctx, m)
}

// Acquire returns t's sender, opening it if no delivery has yet, and a
// release function to call when done with it: a sender replaced meanwhile
// is closed when its last user releases it. A stored config that no longer
// parses is a permanent error; a sender that fails to open is not kept, so
// the next delivery tries again.
func (p *Pool) Acquire(ctx context.Context, t Target) (Sender, func(), error) {
	s := sum(t)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, ErrClosed
	}
	e := p.entries[t.ID]
	switch {
	case e != nil && e.sum == s:
		e.version = max(e.version, t.Version)
	case e != nil && t.Version < e.version:
		// A delivery that read the destination before its last change:
		// the next attempt reads the current one.
		p.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: destination %s changed (version %d, now %d) during the delivery", dispatch.ErrTemporary, t.ID, t.Version, e.version)
	default:
		if e != nil {
			if old := p.retireLocked(t.ID, e); old != nil {
				defer old.Close()
			}
		}
		e = &entry{version: t.Version, sum: s, ready: make(chan struct{})}
		p.entries[t.ID] = e
		go p.open(e, t)
	}
	e.refs++
	p.mu.Unlock()

	release := func() { p.release(e) }
	select {
	case <-e.ready:
	case <-ctx.Done():
		release()
		return nil, nil, fmt.Errorf("%w: connecting to destination %s: %v", dispatch.ErrTimeout, t.ID, ctx.Err())
	}
	if e.err != nil {
		release()
		return nil, nil, e.err
	}
	return e.sender, release, nil
}

// open opens e's sender, on its own context: a delivery that gives up
// waiting does not fail the connection the next one will use. The
// connection's own timeout (Env.Timeout) bounds it.
func (p *Pool) open(e *entry, t Target) {
	cfg, err := p.reg.Parse(t.Type, t.Config)
	if err != nil {
		e.err = fmt.Errorf("%w: destination %s: %v", dispatch.ErrPermanent, t.ID, err)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), p.env.ConnectTimeout())
		e.sender, e.err = cfg.Open(ctx, p.env)
		cancel()
	}
	p.mu.Lock()
	if e.err != nil && p.entries[t.ID] == e {
		delete(p.entries, t.ID) // the next delivery tries again
	}
	closeNow := e.sender != nil && (e.retired || p.closed) && e.refs == 0
	p.mu.Unlock()
	close(e.ready)
	if closeNow {
		_ = e.sender.Close()
	}
}

func (p *Pool) release(e *entry) {
	p.mu.Lock()
	e.refs--
	closeNow := e.retired && e.refs == 0 && isReady(e)
	p.mu.Unlock()
	if closeNow && e.sender != nil {
		_ = e.sender.Close()
	}
}

func isReady(e *entry) bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// retireLocked takes e out of the pool. It returns e's sender if the caller
// is to close it (once the lock is released) because no delivery uses it;
// otherwise the last delivery that does closes it, or the open that is
// still under way does.
func (p *Pool) retireLocked(id string, e *entry) Sender {
	if p.entries[id] == e {
		delete(p.entries, id)
	}
	e.retired = true
	if e.refs == 0 && isReady(e) && e.sender != nil {
		return e.sender
	}
	return nil
}

// Forget closes the sender of destination id, if one is open: call it when
// the destination is deleted or changed (a delivery of the new version
// opens a new sender). Deliveries in flight finish on the old one.
func (p *Pool) Forget(id string) {
	p.mu.Lock()
	var old Sender
	if e := p.entries[id]; e != nil {
		old = p.retireLocked(id, e)
	}
	p.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
}

// Open reports how many destinations have a sender open or opening.
func (p *Pool) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.entries)
}

// Close closes every sender; deliveries in flight finish first, and
// Acquire fails from now on.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var olds []Sender
	for id, e := range p.entries {
		if old := p.retireLocked(id, e); old != nil {
			olds = append(olds, old)
		}
	}
	p.mu.Unlock()
	for _, s := range olds {
		_ = s.Close()
	}
	return nil
}
