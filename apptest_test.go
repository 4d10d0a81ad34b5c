package main

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// testApp is fanout wired as run wires it, with its API on an httptest
// server: for tests that need a part run does not let them reach (an
// in-memory span exporter).
type testApp struct {
	*app
	URL string
}

// startApp parses args and env as run does, builds the app with
// exporter (if not nil) in place of the OTLP one, and starts it; the
// test's cleanup stops it.
func startApp(t *testing.T, args []string, env map[string]string, exporter sdktrace.SpanExporter) *testApp {
	t.Helper()
	args = append([]string{"--allow-network", "127.0.0.0/8"}, args...)
	getenv := func(k string) string { return env[k] }
	cfg, err := parseConfig(args, getenv, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.spanExporter = exporter
	var logOut io.Writer = io.Discard
	if os.Getenv("FANOUT_TEST_LOGS") != "" {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newApp(ctx, cfg, getenv, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := a.rt.Start(ctx); err != nil {
		cancel()
		a.close()
		t.Fatal(err)
	}
	a.refreshDestinations(ctx)
	a.notices.start(ctx)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = newHandler(log, a.svc, cfg.limits, cfg.apiTokens, newHostPolicy(srv.Listener.Addr(), cfg.addr, cfg.publicURL))
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		a.svc.ready.drain()
		stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		if err := a.stop(stopCtx); err != nil {
			t.Errorf("stop: %v", err)
		}
		cancel()
		a.close()
	})
	return &testApp{app: a, URL: srv.URL}
}
