package app

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"fanout/dispatch/dispatchsqlite"
	"fanout/internal/service"
)

func TestReadyz(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	w := api.do(t, "GET", "/readyz", "")
	var v service.ReadyView
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || w.Code != 200 || v.Status != "ready" ||
		w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /readyz: %d %s", w.Code, w.Body)
	}
	if err := api.store.(*dispatchsqlite.Store).Close(); err != nil {
		t.Fatal(err)
	}
	api.svc.Readiness.MaxAge = 0
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
	var v service.ReadyView
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
