package app

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"fanout/internal/httpapi"
	"fanout/webhook"
)

// testApp is fanout wired as run wires it, with its API on an httptest
// server: for tests that need a part run does not let them reach (an
// in-memory span exporter).
type testApp struct {
	*app
	URL string
}

// startApp parses args and env as run does, builds the app with
// exporter (if not nil) in place of the OTLP one, and starts it, with
// loopback allowed to the SSRF guard; the test's cleanup stops it.
func startApp(t *testing.T, args []string, env map[string]string, exporter sdktrace.SpanExporter) *testApp {
	t.Helper()
	return startAppWith(t, appOptions{args: append([]string{"--allow-network", "127.0.0.0/8"}, args...), env: env, exporter: exporter})
}

// appOptions are what a test may change of the app beside its flags.
type appOptions struct {
	args     []string
	env      map[string]string
	exporter sdktrace.SpanExporter // in place of the OTLP one
	resolver webhook.Resolver      // in place of the SSRF guard's DNS
	logs     io.Writer             // where the app logs (also to stderr with FANOUT_TEST_LOGS)
}

// startAppWith is startApp with the flags as given (nothing allowed to the
// SSRF guard unless they say so) and the parts o replaces.
func startAppWith(t *testing.T, o appOptions) *testApp {
	t.Helper()
	getenv := func(k string) string { return o.env[k] }
	cfg, err := parseConfig(o.args, getenv, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.spanExporter, cfg.resolver = o.exporter, o.resolver
	var logOut io.Writer = io.Discard
	if o.logs != nil {
		logOut = o.logs
	}
	if os.Getenv("FANOUT_TEST_LOGS") != "" {
		logOut = io.MultiWriter(logOut, os.Stderr)
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newApp(ctx, cfg, getenv, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := a.start(ctx); err != nil {
		cancel()
		a.close()
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = httpapi.NewHandler(log, a.svc, cfg.limits, cfg.apiTokens, httpapi.NewHostPolicy(srv.Listener.Addr(), cfg.addr, cfg.publicURL))
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		a.svc.Readiness.Drain()
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
