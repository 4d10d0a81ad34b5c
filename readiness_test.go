package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch/dispatchsqlite"
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
			r.timeout = 50 * time.Millisecond
			if tc.drain {
				r.drain()
			}
			v := r.check(context.Background())
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
	r.maxAge = time.Hour
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if !r.check(context.Background()).Ready {
				t.Error("not ready")
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	r.check(context.Background())
	if !r.last().Ready {
		t.Error("last: not ready")
	}
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes, want 1", n)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	w := api.do(t, "GET", "/readyz", "")
	var v readyView
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || w.Code != 200 || v.Status != "ready" ||
		w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /readyz: %d %s", w.Code, w.Body)
	}
	if err := api.store.(*dispatchsqlite.Store).Close(); err != nil {
		t.Fatal(err)
	}
	api.svc.ready.maxAge = 0
	w = api.do(t, "GET", "/readyz", "")
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || w.Code != http.StatusServiceUnavailable ||
		v.Status != "not ready" || v.Checks["store"] != "unavailable" {
		t.Fatalf("GET /readyz on a closed store: %d %s", w.Code, w.Body)
	}
	if w := api.do(t, "GET", "/healthz", ""); w.Code != 200 {
		t.Fatalf("GET /healthz on a closed store: %d", w.Code)
	}
}

// TestRun_DrainOnShutdown: on SIGTERM (here: run's context ends), /readyz
// turns 503 at once, and with --drain-delay fanout keeps taking events
// meanwhile, so that a load balancer stops sending before it stops
// listening. Probes need no token.
func TestRun_DrainOnShutdown(t *testing.T) {
	t.Parallel()
	token := "0123456789abcdef0123"
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--drain-delay", "3s", "--api-token", token}, nil)
	if code := call(t, "GET", base+"/readyz", nil, nil); code != http.StatusOK {
		t.Fatalf("/readyz before the shutdown, without a token: %d", code)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	var v readyView
	eventually(t, "not ready once draining", 2*time.Second, func() bool {
		return call(t, "GET", base+"/readyz", nil, &v) == http.StatusServiceUnavailable
	})
	if v.Checks["shutdown"] != "draining" || !strings.Contains(v.Reason, "shutting down") {
		t.Errorf("draining: %+v", v)
	}
	if code := call(t, "POST", base+"/v1/event", `{}`, nil, "Authorization", "Bearer "+token); code != http.StatusAccepted {
		t.Errorf("POST /v1/event while draining: %d, want 202: it still serves until the drain delay ends", code)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return")
	}
}
