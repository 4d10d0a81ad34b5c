package service

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestFairGate: a tenant alone is never held back; once another sends,
// each keeps within its share of bytes and the other's requests go through
// at once; small requests (single events) fit the share by the dozen; when
// the other stops, the first is free again; a waiter that gives up leaves
// no trace.
func TestFairGate(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	const kib = 1 << 10
	g := newFairGate(64*kib, clock.now) // 32 KiB each with two tenants
	ctx := context.Background()
	var leaveA []func()
	for range 20 { // alone: 20 batches of 4 KiB at once, more than any share
		leave, err := g.enter(ctx, time.Minute, "a", 4*kib)
		if err != nil {
			t.Fatal(err)
		}
		leaveA = append(leaveA, leave)
	}
	leaveB, err := g.enter(ctx, time.Minute, "b", 200) // another tenant: through at once
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := g.enter(short, time.Minute, "a", 4*kib); err == nil {
		t.Fatal("a went past its share (32 of 64 KiB with b sending) with 80 KiB in flight")
	}
	// The gate's own timeout ends a wait that ctx would let go on.
	long, cancelLong := context.WithTimeout(ctx, 10*time.Second)
	defer cancelLong()
	start := time.Now()
	if _, err := g.enter(long, 30*time.Millisecond, "a", 4*kib); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a waiting past the gate's timeout: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the gate's timeout of 30ms ended the wait after %v", d)
	}
	// b's single events, 64 of them, fit its share at once.
	var leaveSmall []func()
	for range 64 {
		leave, err := g.enter(short, time.Minute, "b", 200)
		if err != nil {
			t.Fatalf("b's single events held back: %v", err)
		}
		leaveSmall = append(leaveSmall, leave)
	}
	for _, l := range leaveSmall {
		l()
	}
	admitted := make(chan func(), 1)
	go func() {
		leave, err := g.enter(ctx, time.Minute, "a", 4*kib)
		if err != nil {
			t.Error(err)
		}
		admitted <- leave
	}()
	time.Sleep(20 * time.Millisecond)
	for _, leave := range leaveA[:12] { // a down to 32 KiB: its share, full
		leave()
	}
	select {
	case <-admitted:
		t.Fatal("a admitted at its share")
	case <-time.After(30 * time.Millisecond):
	}
	leaveA[12]() // 28 KiB: a's waiter fits
	var next func()
	select {
	case next = <-admitted:
	case <-time.After(time.Second):
		t.Fatal("a's waiter not admitted below its share")
	}
	leaveB()
	// b stops: once it is idle past the window, a is alone and free.
	clock.add(2 * activeWindow)
	var more []func()
	for range 30 {
		leave, err := g.enter(ctx, time.Minute, "a", 4*kib)
		if err != nil {
			t.Fatalf("a held back after b stopped: %v", err)
		}
		more = append(more, leave)
	}
	g.mu.Lock()
	if n := len(g.tenants["a"].waiters); n != 0 {
		t.Errorf("%d waiters left of the one that gave up", n)
	}
	if _, ok := g.tenants["b"]; ok {
		t.Error("b, idle, is still counted")
	}
	g.mu.Unlock()
	next()
	for _, l := range append(leaveA[13:], more...) {
		l()
	}
	if n := g.tenants["a"].inflight; n != 0 {
		t.Errorf("a has %d in flight after every leave", n)
	}
	// A request over the share goes when its tenant has nothing in flight.
	leaveB, err = g.enter(ctx, time.Minute, "b", 200)
	if err != nil {
		t.Fatal(err)
	}
	soon, cancelSoon := context.WithTimeout(ctx, time.Second)
	defer cancelSoon()
	huge, err := g.enter(soon, time.Minute, "a", 1<<20)
	if err != nil {
		t.Fatalf("a request over the share, nothing else in flight: %v", err)
	}
	huge()
	leaveB()
	// No budget: nothing is shared.
	var none *fairGate
	if _, err := none.enter(short, time.Minute, "x", 1<<30); err != nil {
		t.Fatal(err)
	}
}
