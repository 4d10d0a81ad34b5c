package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"golang.org/x/sync/semaphore"
)

// bodyBudget bounds the request bodies held in memory across all requests
// (--max-inflight-bytes). Every body is read whole before it is decoded
// and stored, so without a bound across requests, memory grows with the
// number of clients that send large bodies at once, and an anonymous
// client can take the process down with a few dozen concurrent batches.
//
// A request reserves its body's bytes before they are read: its
// Content-Length at once, all or nothing, so that no request holds part of
// the budget while it waits for more (a body of unknown length, which has
// no choice, reserves as its buffer grows). Reserving every body as it
// arrives was tried (docs/BENCHMARKS.md, issue 18): concurrent large
// batches then each held a part and waited for the rest, none was read
// through before its wait ended, and the doubling buffers' garbage took
// the peak higher. A client that
// announces a large body and sends it slowly holds its reservation until
// the server's read timeout ends the request; small bodies keep their own
// reserve meanwhile.
//
// Two pools make sure small requests keep flowing while large ones queue:
// a body up to smallMax (--max-event-bytes: any single event) takes from
// the shared pool when it can and otherwise from a reserve that larger
// bodies never touch. A body that cannot have its bytes within wait is
// answered 503 with Retry-After, before any of it is read.
//
// A body's memory is not free when its handler returns, only once the
// garbage collector has reclaimed it, and until then it counts: a
// request's bytes are given back after the first garbage collection that
// completes once the request has ended (two generations: a collection
// under way when the request ended may still keep its body). When bodies
// wait while ended ones are still counted, fanout starts a collection
// rather than wait for one, since memory is what it bounds and a soft
// memory limit (GOMEMLIMIT) set high would otherwise let the garbage of
// answered requests hold the budget.
type bodyBudget struct {
	shared   *semaphore.Weighted
	reserve  *semaphore.Weighted
	smallMax int64
	wait     time.Duration

	mu         sync.Mutex
	ended, old heldBytes    // of requests that ended since the last collection, and before it
	collecting atomic.Bool  // a forced collection is under way
	gen        atomic.Int64 // collections noticed so far
}

// heldBytes is an amount held from each pool.
type heldBytes struct{ shared, reserve int64 }

// bodyWait is how long a body waits for its bytes. Long enough for a few
// rounds of large batches to be read and stored ahead of it; short enough
// that a client told to come back learns it before its own timeout.
const bodyWait = 3 * time.Second

// initialBodyBuffer is the first buffer for a body of unknown length.
const initialBodyBuffer = 32 << 10

// newBodyBudget returns a budget of total bytes, a quarter of them kept for
// bodies up to smallMax; nil (no bound) when total is 0.
func newBodyBudget(total, smallMax int64, wait time.Duration) *bodyBudget {
	if total <= 0 {
		return nil
	}
	reserve := reserveOf(total)
	b := &bodyBudget{
		shared:   semaphore.NewWeighted(total - reserve),
		reserve:  semaphore.NewWeighted(reserve),
		smallMax: smallMax,
		wait:     wait,
	}
	watchCollections(weak.Make(b))
	return b
}

// watchCollections calls the budget's collected after every garbage
// collection, from the runtime's cleanup goroutine, for as long as the
// budget is in use: an object that nothing references is collected by the
// next cycle, and its cleanup arms the next one. The budget is held weakly,
// so that a handler's budget that is gone (a server stopped, in tests)
// stops the chain instead of being kept alive by it.
func watchCollections(b weak.Pointer[bodyBudget]) {
	sentinel := new([16]byte) // not a tiny allocation, which may share a block and live on
	runtime.AddCleanup(sentinel, func(b weak.Pointer[bodyBudget]) {
		if budget := b.Value(); budget != nil {
			budget.collected()
			watchCollections(b)
		}
	}, b)
}

// collected gives back the bytes of requests that ended before the last
// collection but one: their bodies are reclaimed by now.
func (b *bodyBudget) collected() {
	defer b.gen.Add(1)
	b.mu.Lock()
	old := b.old
	b.old, b.ended = b.ended, heldBytes{}
	b.mu.Unlock()
	b.give(old)
}

// give returns an amount to the pools.
func (b *bodyBudget) give(h heldBytes) {
	if h.shared > 0 {
		b.shared.Release(h.shared)
	}
	if h.reserve > 0 {
		b.reserve.Release(h.reserve)
	}
}

// end counts the bytes of a request that has ended, until a collection.
func (b *bodyBudget) end(h heldBytes) {
	b.mu.Lock()
	b.ended.shared += h.shared
	b.ended.reserve += h.reserve
	b.mu.Unlock()
}

// collect starts garbage collections, unless they are under way or no
// ended request still counts: up to three, until no ended request counts
// (the first may only move the ended requests' bytes to the older
// generation).
func (b *bodyBudget) collect() {
	b.mu.Lock()
	pending := b.ended != heldBytes{} || b.old != heldBytes{}
	b.mu.Unlock()
	if !pending || !b.collecting.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer b.collecting.Store(false)
		// A collection's notice (collected) runs on the runtime's cleanup
		// goroutine after the collection, and arms the next one: wait for
		// it before the next collection, or that one may pass unnoticed.
		for range 3 {
			gen := b.gen.Load()
			runtime.GC()
			for deadline := time.Now().Add(100 * time.Millisecond); b.gen.Load() == gen && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			b.mu.Lock()
			pending := b.ended != heldBytes{} || b.old != heldBytes{}
			b.mu.Unlock()
			if !pending {
				return
			}
		}
	}()
}

// reserveOf is the part of total kept for small bodies.
func reserveOf(total int64) int64 { return total / 4 }

// CheckBudget says whether limits leave every body it allows a way in: a
// largest event must fit in the reserve, and a largest batch, or an admin
// body, in the shared pool (with the byte that tells a body over its limit).
func CheckBudget(total int64, limits Limits) error {
	if total == 0 {
		return nil
	}
	reserve := reserveOf(total)
	largest := max(limits.MaxBatchBytes, limits.MaxEventBytes, adminBodyLimit) + 1
	if total < 0 || reserve < limits.MaxEventBytes+1 || total-reserve < largest {
		return fmt.Errorf("--max-inflight-bytes %d is too small for the largest body fanout accepts: it needs at least "+
			"4x --max-event-bytes (a quarter is kept for single events) and 4/3x --max-batch-bytes; 0 removes the bound", total)
	}
	return nil
}

// boundBodies gives every request with a body a hold on budget, released
// when next returns; readBody reserves through it. A nil budget bounds
// nothing. The hold travels with the body (as http.MaxBytesReader does),
// not in a copy of the request with a new context: the middleware around
// reads the route the mux matched from the request it passed on.
func boundBodies(budget *bodyBudget, next http.Handler) http.Handler {
	if budget == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r) // no body to hold
			return
		}
		b := &heldBody{ReadCloser: r.Body, hold: bodyHold{budget: budget, deadline: time.Now().Add(budget.wait)}}
		defer b.hold.release()
		r.Body = b
		next.ServeHTTP(w, r)
	})
}

// heldBody is a request body with its request's hold, in one allocation
// (a request of a single event makes few, and each counts).
type heldBody struct {
	io.ReadCloser
	hold bodyHold
}

// holdOf returns the hold of r's body, or nil (no bound).
func holdOf(r *http.Request) *bodyHold {
	if b, ok := r.Body.(*heldBody); ok {
		return &b.hold
	}
	return nil
}

// bodyHold is the bytes one request has reserved, from each pool. It is
// used by the request's handler alone, so it needs no lock.
type bodyHold struct {
	budget   *bodyBudget
	deadline time.Time
	held     heldBytes
}

// errBodyBusy is the answer to a body that waited too long for its bytes.
var errBodyBusy = &apiError{Status: http.StatusServiceUnavailable, RetryAfter: "1",
	Message: "fanout is reading as many request bodies as its memory bound allows (--max-inflight-bytes); " +
		"nothing was stored, retry later"}

// grow reserves n more bytes, waiting until the hold's deadline. A nil
// hold reserves nothing.
func (h *bodyHold) grow(ctx context.Context, n int64) error {
	if h == nil || n <= 0 {
		return nil
	}
	b := h.budget
	small := h.held.shared+h.held.reserve+n <= b.smallMax
	if b.shared.TryAcquire(n) {
		h.held.shared += n
		return nil
	}
	if small && b.reserve.TryAcquire(n) {
		h.held.reserve += n
		return nil
	}
	// It must wait: have ended requests' bytes given back now.
	b.collect()
	ctx, cancel := context.WithDeadline(ctx, h.deadline)
	defer cancel()
	if small {
		if err := b.reserve.Acquire(ctx, n); err != nil {
			return errBodyBusy
		}
		h.held.reserve += n
		return nil
	}
	if err := b.shared.Acquire(ctx, n); err != nil {
		return errBodyBusy
	}
	h.held.shared += n
	return nil
}

// swap gives back the bytes of a buffer that has just been replaced by a
// larger one: the old buffer is garbage, and counts until a collection.
func (h *bodyHold) swap(n int64) {
	if h == nil {
		return
	}
	s := min(n, h.held.shared)
	r := min(n-s, h.held.reserve)
	h.held.shared -= s
	h.held.reserve -= r
	h.budget.end(heldBytes{s, r})
}

// release ends the hold: its bytes count until a collection.
func (h *bodyHold) release() { h.budget.end(h.held) }

// readAll reads r to its end, or to max bytes, in a buffer that doubles,
// reserving each new buffer before it is made and giving back the old one
// once it is copied. A body longer than max returns its first max bytes:
// the caller, whose max is its limit plus one, refuses it.
func (h *bodyHold) readAll(ctx context.Context, r io.Reader, max int64) ([]byte, error) {
	size := min(max, initialBodyBuffer)
	if err := h.grow(ctx, size); err != nil {
		return nil, err
	}
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		switch {
		case err == io.EOF:
			return b, nil
		case err != nil:
			return b, err
		case len(b) < cap(b):
			continue
		case int64(cap(b)) >= max:
			return b, nil
		}
		next := min(2*int64(cap(b)), max)
		if err := h.grow(ctx, next); err != nil {
			return nil, err
		}
		nb := make([]byte, len(b), next)
		copy(nb, b)
		h.swap(int64(cap(b)))
		b = nb
	}
}
