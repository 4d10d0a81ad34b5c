package service

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestReadiness(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		probe  func(ctx context.Context) error
		drain  bool
		ready  bool
		store  string
		reason string
	}{
		{name: "Ready", probe: func(context.Context) error { return nil }, ready: true, store: "ok"},
		{name: "StoreFails", probe: func(context.Context) error { return errors.New("connection refused by db.internal:5432") },
			store: "unavailable", reason: "fanout's log says why"},
		{name: "StoreHangs", probe: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() },
			store: "timeout", reason: "within 50ms"},
		{name: "Draining", probe: func(context.Context) error { return nil }, drain: true, store: "not checked", reason: "shutting down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newReadiness(tc.probe, nil)
			r.Timeout = 50 * time.Millisecond
			if tc.drain {
				r.Drain()
			}
			v := r.Check(context.Background())
			if v.Ready != tc.ready || v.Checks["store"] != tc.store || !strings.Contains(v.Reason, tc.reason) ||
				(v.Status == "ready") != tc.ready || v.Checks["migrations"] != "ok" {
				t.Fatalf("%+v, want ready %v, store %q, a reason that says %q", v, tc.ready, tc.store, tc.reason)
			}
			if strings.Contains(v.Reason, "db.internal") || strings.Contains(v.Checks["store"], "db.internal") {
				t.Errorf("/readyz, open to anyone, shows the store's error: %+v", v)
			}
		})
	}
}

// TestReadiness_OneProbe: many checks at once, and checks within maxAge,
// cost one probe of the store.
func TestReadiness_OneProbe(t *testing.T) {
	t.Parallel()
	var probes atomic.Int32
	release := make(chan struct{})
	r := newReadiness(func(context.Context) error {
		probes.Add(1)
		<-release
		return nil
	}, nil)
	r.MaxAge = time.Hour
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if !r.Check(context.Background()).Ready {
				t.Error("not ready")
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	r.Check(context.Background())
	if !r.Last().Ready {
		t.Error("last: not ready")
	}
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes, want 1", n)
	}
}
