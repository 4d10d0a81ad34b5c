// Package app is fanout assembled: flags and environment into a config,
// the config into one app (the store, the outbound client, the
// destinations, the runtime with its durable functions, the service and
// its HTTP API), and the app run until it is told to stop. The command in
// the module's root calls Main; the tests call it too, and build the app
// through the same constructor.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"fanout/destination"
	"fanout/destination/transform"
	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/dispatch/dispatchsqlite"
	"fanout/internal/console"
	"fanout/internal/httpapi"
	"fanout/internal/service"
	"fanout/sink"
	"fanout/sink/kinds"
	"fanout/webhook"
)

// version is set at build time with -ldflags "-X fanout/internal/app.version=...".
var version = "dev"

// buildVersion is version, and for a build without it (go build, go
// install) the commit Go recorded, so that a bug report names the code.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	v := version
	if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value[:min(12, len(s.Value))]
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	if rev != "" {
		v += " (" + rev + modified + ")"
	}
	return v + " " + info.GoVersion
}

// ExitCode is the exit status of a run that ended with err: 2 for a
// mistake in flags or environment, 1 for anything else.
func ExitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// Main is the whole service: it parses args and the environment, opens the
// store, starts the runtime and the HTTP server, and shuts them down in order
// when ctx ends or SIGINT/SIGTERM arrives. Tests call it directly.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if ok, err := command(ctx, args, getenv, stdout, stderr); ok {
		return err
	}
	cfg, err := parseConfig(args, getenv, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	a, err := newApp(ctx, cfg, getenv, log)
	if err != nil {
		return err
	}
	defer a.close()
	if cfg.debugAddr != "" {
		closeDebug, err := startDebug(cfg.debugAddr, log)
		if err != nil {
			return err
		}
		defer closeDebug()
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on %s (--addr): %w", cfg.addr, err)
	}
	if err := a.start(ctx); err != nil {
		_ = ln.Close()
		return err
	}
	srv := newServer(httpapi.NewHandler(log, a.svc, cfg.limits, cfg.apiTokens, httpapi.NewHostPolicy(ln.Addr(), cfg.addr, cfg.publicURL)), log)
	log.Info("fanout listening", "addr", "http://"+ln.Addr().String(), "console", console.URL(ln.Addr()), "version", buildVersion(),
		"store", a.where, "destinations", len(a.dests.List()), "api_tokens", len(cfg.apiTokens))
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && len(cfg.apiTokens) == 0 && !tcp.IP.IsLoopback() {
		log.Warn("the API answers anyone who can reach "+ln.Addr().String()+" without a token; "+
			"set FANOUT_API_TOKENS (or --api-token) unless something in front of fanout checks who calls", "addr", ln.Addr().String())
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case <-ctx.Done():
		err = nil
	case err = <-serveErr:
		err = fmt.Errorf("serve: %w", err)
	}
	// Not ready first, so that load balancers stop sending; with a drain
	// delay, keep serving meanwhile.
	a.svc.Drain()
	if cfg.drainDelay > 0 && err == nil {
		log.Info("draining: /readyz answers 503; still serving until the drain delay ends", "drain_delay", cfg.drainDelay)
		select {
		case <-time.After(cfg.drainDelay):
		case err = <-serveErr:
			err = fmt.Errorf("serve: %w", err)
		}
	}
	log.Info("shutting down: no new events; letting deliveries in flight finish", "deadline", cfg.shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(shutdownCtx); serr != nil {
		log.Warn("requests still open at the shutdown deadline were cut", "err", serr)
	}
	err = errors.Join(err, a.stop(shutdownCtx))
	log.Info("stopped")
	return err
}

// app is fanout's parts, wired together: the store, the outbound client,
// the destinations, the runtime with the two durable functions, and the
// service the API offers over them.
type app struct {
	log    *slog.Logger
	store  service.Store
	where  string // which store, for the start-up line
	demo   *demoDestination
	client *webhook.Client
	dests  *destination.Registry
	rt     *dispatch.Runtime
	svc    *service.Service
	// brokers keeps the connections of broker destinations.
	brokers *sink.Pool
	// transforms runs transformations, in worker processes.
	transforms *transform.Engine
	// tracing is nil when traces are off.
	tracing *service.Tracing
	// commits is who is told of the store's group commits (its OnCommit),
	// once it exists.
	commits atomic.Pointer[service.Service]

	stopRefresh context.CancelFunc
	refreshed   chan struct{}
}

// newApp opens the store and wires the parts; nothing runs yet but the demo
// destination. close releases what it opened, on every path.
func newApp(ctx context.Context, cfg *config, getenv func(string) string, log *slog.Logger) (*app, error) {
	a := &app{log: log}
	wired := false
	defer func() {
		if !wired {
			a.close()
		}
	}()
	settings, err := service.TraceSettingsFrom(service.TraceOptions{Endpoint: cfg.otlpEndpoint, Protocol: cfg.otlpProtocol, Version: version,
		Exporter: cfg.spanExporter}, getenv)
	if err != nil {
		return nil, &usageError{err}
	}
	if settings != nil {
		if a.tracing, err = service.NewTracing(ctx, settings, log); err != nil {
			return nil, err
		}
	}
	onCommit := func(ops int, took time.Duration) {
		if svc := a.commits.Load(); svc != nil {
			svc.Committed(ops, took)
		}
	}
	if a.store, a.where, err = openStore(ctx, cfg, log, onCommit); err != nil {
		return nil, err
	}
	allow := cfg.allowNetworks
	if cfg.demo {
		if a.demo, err = startDemo(log); err != nil {
			return nil, err
		}
		allow = append(allow, netip.MustParsePrefix("127.0.0.1/32"))
	}
	guard := webhook.NewGuard(allow, webhook.WithResolver(cfg.resolver))
	proxy, proxyFrom, err := webhook.ProxyFunc(cfg.proxy, getenv)
	if err != nil {
		return nil, err
	}
	if proxy != nil {
		log.Info("deliveries go through a proxy; the SSRF guard checks each destination's addresses before handing it over",
			"proxy", proxyFrom)
	}
	a.client = webhook.NewClient(webhook.Config{Timeout: cfg.deliveryTimeout, UserAgent: "fanout/" + version,
		Guard: guard, Proxy: proxy})
	policy := cfg.retryPolicy()

	brokers := kinds.Registry(cfg.ambient)
	a.brokers = sink.NewPool(brokers, sink.GuardedEnv(guard, cfg.deliveryTimeout))
	a.dests = destination.NewRegistry(destination.Config{
		Store: a.store, Guard: guard, Policy: policy, BreakerCooldown: cfg.breakerCooldown, SecretGrace: cfg.secretGrace,
		Logger: log, Kinds: brokers, Forget: a.brokers.Forget,
		Changed: func() {
			if a.rt != nil {
				a.rt.KeysChanged() // a destination resumed or was raised: look for what it held back
			}
			if a.svc != nil {
				a.svc.DestinationsChanged() // and announce a pause, a recovery
			}
		},
	})
	if err := a.loadDestinations(ctx, cfg); err != nil {
		return nil, err
	}

	fns := service.NewFunctions(a.dests, a.client, time.Now, a.tracing)
	fns.UseBrokers(a.brokers)
	a.transforms = transform.NewEngine(transform.Limits{Isolation: &transform.Isolation{
		Workers: cfg.transformWorkers, Memory: cfg.transformMemory}})
	fns.UseTransforms(a.transforms)
	a.rt, err = dispatch.New(&dispatch.Config{
		Store:           a.store,
		Workers:         cfg.workers,
		RetryPolicy:     policy,
		Retention:       cfg.retention,
		FailedRetention: cfg.failedRetention,
		Keys:            a.dests.KeyConfig,
		OnKeyTrip:       a.dests.Trip,
		BreakerFailures: cfg.breakerFailures,
		BreakerWindow:   cfg.breakerWindow,
		DedupWindow:     cfg.dedupWindow,
		NoLocalCalls:    !cfg.localCalls,
		OnAttempt:       func(r dispatch.AttemptReport) { a.svc.Attempted(r) },
		Logger:          log,
	}, fns.PublishEvent, fns.HandleEvent)
	if err != nil {
		return nil, err
	}
	storeName := "sqlite"
	if cfg.databaseURL != "" {
		storeName = "postgresql"
	}
	a.svc = service.New(service.Config{Runtime: a.rt, Store: a.store, Fns: fns, Dests: a.dests, Retention: cfg.retention,
		FailedRetention: cfg.failedRetention, StoreName: storeName, Tracing: a.tracing, NoticeWindow: cfg.noticeWindow,
		Version: buildVersion(), Logger: log, TenantIngestRate: cfg.tenantRate, TenantIngestBurst: cfg.tenantBurst,
		TenantFairBytes: cfg.tenantFair,
		Portal:          service.PortalConfig{PublicURL: cfg.publicURL, Branding: cfg.portal}})
	a.commits.Store(a.svc)
	wired = true
	return a, nil
}

// start sets the app running: the runtime, the reload of destinations,
// operational events and the upgrades. Tests start the app with it too, so
// that they run what users run.
func (a *app) start(ctx context.Context) error {
	if err := a.rt.Start(ctx); err != nil {
		return err
	}
	a.refreshDestinations(ctx)
	a.svc.Start(ctx)
	return nil
}

// loadDestinations reads the stored destinations and adds those of
// --destination and --demo.
func (a *app) loadDestinations(ctx context.Context, cfg *config) error {
	if err := a.dests.Refresh(ctx); err != nil {
		return fmt.Errorf("load destinations: %w", err)
	}
	for _, u := range cfg.destinations {
		if err := a.dests.Ensure(ctx, destination.ConfiguredID(u), u, "from --destination"); err != nil {
			return fmt.Errorf("--destination %s: %w", u, err)
		}
	}
	if a.demo != nil {
		if err := a.demo.register(ctx, a.dests); err != nil {
			return err
		}
	}
	if len(a.dests.List()) == 0 {
		a.log.Warn("no destination: events are accepted and stored but delivered nowhere; " +
			"add one with POST /v1/destinations, --destination URL (or FANOUT_DESTINATIONS), or start with --demo")
	}
	return nil
}

// refreshDestinations reloads the destinations every second (changes made
// by other replicas) until stop.
func (a *app) refreshDestinations(ctx context.Context) {
	ctx, a.stopRefresh = context.WithCancel(ctx)
	a.refreshed = make(chan struct{})
	go func() {
		defer close(a.refreshed)
		a.dests.Run(ctx, time.Second)
	}()
}

// stop stops the runtime (deliveries in flight get until ctx ends), logs
// the totals and closes the store, reporting what failed.
func (a *app) stop(ctx context.Context) error {
	a.svc.Stop(ctx) // announces the failures counted so far, while the runtime still takes events
	err := a.rt.Stop(ctx)
	a.stopRefreshing()
	rs := a.rt.Stats()
	totals := []any{"claims", rs.Claims, "claimed", rs.Claimed, "leased_on_create", rs.LeasedOnCreate,
		"eager", rs.Eager, "done", rs.Done, "retried", rs.Retried, "failed", rs.Failed,
		"results_from_memory", rs.ResultsFromMemory, "results_from_store", rs.ResultsFromStore, "local", rs.Local}
	st := a.store.StoreStats()
	totals = append(totals, "commits", st.Commits, "store_operations", st.Ops, "replays", st.Replays,
		"connection_waits", st.ConnWaits, "rows_written", st.Rows)
	a.log.Info("totals", totals...)
	if cerr := a.store.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close store: %w", cerr))
	}
	// Spans still queued get a few seconds: a collector that is down must
	// not hold the exit up for the whole shutdown timeout.
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if terr := a.tracing.Shutdown(tctx); terr != nil {
		a.log.Warn("spans still queued at the shutdown deadline were dropped", "err", terr)
	}
	return err
}

// close releases what newApp opened; it is safe after stop.
func (a *app) close() {
	if a.rt != nil {
		_ = a.rt.Stop(context.Background()) // a no-op once stopped, or if never started
	}
	a.stopRefreshing()
	if a.svc != nil {
		a.svc.StopUpgrading()
	}
	if a.client != nil {
		a.client.Close()
	}
	if a.brokers != nil {
		_ = a.brokers.Close() // after the runtime stopped: no delivery uses them
	}
	if a.transforms != nil {
		a.transforms.Close()
	}
	if a.demo != nil {
		a.demo.close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
	if a.tracing != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = a.tracing.Shutdown(ctx) // a no-op once shut down
	}
}

func (a *app) stopRefreshing() {
	if a.stopRefresh != nil {
		a.stopRefresh()
		<-a.refreshed
	}
}

// newServer is the HTTP server of the API, with limits on slow and large
// requests.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// openStore opens PostgreSQL when --database-url is set, the embedded SQLite
// file under --data otherwise, and says which.
func openStore(ctx context.Context, cfg *config, log *slog.Logger, onCommit func(int, time.Duration)) (service.Store, string, error) {
	if cfg.databaseURL != "" {
		s, err := dispatchpg.Open(ctx, dispatchpg.Config{URL: cfg.databaseURL, Logger: log, OpTimeout: cfg.limits.IngestTimeout,
			OnCommit: onCommit})
		if err != nil {
			return nil, "", fmt.Errorf("open the PostgreSQL store (--database-url): %w", err)
		}
		return s, "postgresql", nil
	}
	path := filepath.Join(cfg.dataDir, "fanout.db")
	s, err := dispatchsqlite.Open(ctx, dispatchsqlite.Config{Path: path, Synchronous: cfg.synchronous, Logger: log,
		OnCommit: onCommit})
	if err != nil {
		return nil, "", fmt.Errorf("open the store in %s (--data): %w", cfg.dataDir, err)
	}
	return s, path + " (synchronous=" + s.Synchronous() + ")", nil
}

// startDebug serves the profiler on its own listener, away from the API.
func startDebug(addr string, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (--debug-addr): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("profiler listening", "addr", "http://"+ln.Addr().String()+"/debug/pprof/")
	return func() { _ = srv.Close() }, nil
}
