// Command fanout accepts events over HTTP, stores each one durably before it
// says yes, and delivers it to every destination URL, retrying each delivery
// on its own until it succeeds.
package main

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
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/dispatch/dispatchsqlite"
	"fanout/webhook"
)

// version is set at build time with -ldflags "-X main.version=...".
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

func main() {
	// Ingest allocates briskly and keeps little: collecting four times less
	// often than Go's default buys throughput for a few tens of MiB. GOGC
	// and GOMEMLIMIT still decide when they are set.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fanout: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run is the whole service: it parses args and the environment, opens the
// store, starts the runtime and the HTTP server, and shuts them down in order
// when ctx ends or SIGINT/SIGTERM arrives. Tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		fmt.Fprintln(stdout, "fanout", buildVersion())
		return nil
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

	store, where, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer store.Close()

	allow := cfg.allowNetworks
	var demo *demoDestination
	if cfg.demo {
		if demo, err = startDemo(log); err != nil {
			return err
		}
		defer demo.close()
		allow = append(allow, netip.MustParsePrefix("127.0.0.1/32"))
	}
	guard := webhook.NewGuard(allow)
	proxy, proxyFrom, err := webhook.ProxyFunc(cfg.proxy, getenv)
	if err != nil {
		return err
	}
	if proxy != nil {
		log.Info("deliveries go through a proxy; the SSRF guard checks each destination's addresses before handing it over",
			"proxy", proxyFrom)
	}
	client := webhook.NewClient(webhook.Config{Timeout: cfg.deliveryTimeout, UserAgent: "fanout/" + version,
		Guard: guard, Proxy: proxy})
	defer client.Close()
	policy := &dispatch.Backoff{
		Min:         100 * time.Millisecond,
		Initial:     cfg.retryInitial,
		Max:         cfg.retryMax,
		MaxAge:      cfg.retryMaxAge,
		MaxAttempts: cfg.retryMaxAttempts,
	}

	var rt *dispatch.Runtime
	dests := destination.NewRegistry(destination.Config{
		Store: store, Guard: guard, Policy: policy, BreakerCooldown: cfg.breakerCooldown, SecretGrace: cfg.secretGrace,
		Logger: log,
		Changed: func() {
			if rt != nil {
				rt.KeysChanged() // a destination resumed or was raised: look for what it held back
			}
		},
	})
	if err := dests.Refresh(ctx); err != nil {
		return fmt.Errorf("load destinations: %w", err)
	}
	for _, u := range cfg.destinations {
		if err := dests.Ensure(ctx, destination.ConfiguredID(u), u, "from --destination"); err != nil {
			return fmt.Errorf("--destination %s: %w", u, err)
		}
	}
	if demo != nil {
		if err := demo.register(ctx, dests); err != nil {
			return err
		}
	}
	if len(dests.List()) == 0 {
		log.Warn("no destination: events are accepted and stored but delivered nowhere; " +
			"add one with POST /v1/destinations, --destination URL (or FANOUT_DESTINATIONS), or start with --demo")
	}

	fns := newFunctions(dests, client, time.Now)
	rt, err = dispatch.New(&dispatch.Config{
		Store:           store,
		Workers:         cfg.workers,
		RetryPolicy:     policy,
		Retention:       cfg.retention,
		FailedRetention: cfg.failedRetention,
		Keys:            dests.KeyConfig,
		OnKeyTrip:       dests.Trip,
		BreakerFailures: cfg.breakerFailures,
		BreakerWindow:   cfg.breakerWindow,
		DedupWindow:     cfg.dedupWindow,
		Logger:          log,
	}, fns.publishEvent, fns.handleEvent)
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	refreshCtx, stopRefresh := context.WithCancel(ctx)
	defer stopRefresh()
	go dests.Run(refreshCtx, time.Second)

	svc := &service{rt: rt, store: store, fns: fns, dests: dests}
	srv := &http.Server{
		Handler:           newHandler(log, svc, cfg.limits, cfg.apiTokens),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.debugAddr != "" {
		closeDebug, err := startDebug(cfg.debugAddr, log)
		if err != nil {
			_ = rt.Stop(context.Background())
			return err
		}
		defer closeDebug()
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		_ = rt.Stop(context.Background())
		return fmt.Errorf("listen on %s (--addr): %w", cfg.addr, err)
	}
	log.Info("fanout listening", "addr", "http://"+ln.Addr().String(), "version", buildVersion(),
		"store", where, "destinations", len(dests.List()), "api_tokens", len(cfg.apiTokens))
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
	log.Info("shutting down: no new events; letting deliveries in flight finish", "deadline", cfg.shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(shutdownCtx); serr != nil {
		log.Warn("requests still open at the shutdown deadline were cut", "err", serr)
	}
	if serr := rt.Stop(shutdownCtx); serr != nil {
		err = errors.Join(err, serr)
	}
	rs := rt.Stats()
	totals := []any{"claims", rs.Claims, "claimed", rs.Claimed, "leased_on_create", rs.LeasedOnCreate,
		"eager", rs.Eager, "done", rs.Done, "retried", rs.Retried, "failed", rs.Failed,
		"results_from_memory", rs.ResultsFromMemory, "results_from_store", rs.ResultsFromStore}
	if sr, ok := store.(dispatch.StatsReporter); ok {
		st := sr.StoreStats()
		totals = append(totals, "commits", st.Commits, "store_operations", st.Ops, "replays", st.Replays,
			"connection_waits", st.ConnWaits)
	}
	log.Info("totals", totals...)
	if serr := store.Close(); serr != nil {
		err = errors.Join(err, fmt.Errorf("close store: %w", serr))
	}
	log.Info("stopped")
	return err
}

// appStore is what fanout needs of a driver: the runtime's calls, and the
// destinations kept as documents beside them.
type appStore interface {
	dispatch.Store
	dispatch.DocStore
}

// openStore opens PostgreSQL when --database-url is set, the embedded SQLite
// file under --data otherwise, and says which.
func openStore(ctx context.Context, cfg *config, log *slog.Logger) (appStore, string, error) {
	if cfg.databaseURL != "" {
		s, err := dispatchpg.Open(ctx, dispatchpg.Config{URL: cfg.databaseURL, Logger: log})
		if err != nil {
			return nil, "", fmt.Errorf("open the PostgreSQL store (--database-url): %w", err)
		}
		return s, "postgresql", nil
	}
	path := filepath.Join(cfg.dataDir, "fanout.db")
	s, err := dispatchsqlite.Open(ctx, dispatchsqlite.Config{Path: path, Synchronous: cfg.synchronous, Logger: log})
	if err != nil {
		return nil, "", fmt.Errorf("open the store in %s (--data): %w", cfg.dataDir, err)
	}
	return s, path, nil
}

// config is everything run needs, from flags and their FANOUT_* twins.
type config struct {
	addr             string
	dataDir          string
	databaseURL      string
	destinations     []string
	demo             bool
	deliveryTimeout  time.Duration
	workers          int
	limits           Limits
	shutdownTimeout  time.Duration
	synchronous      string
	retention        time.Duration
	failedRetention  time.Duration
	retryInitial     time.Duration
	retryMax         time.Duration
	retryMaxAge      time.Duration
	retryMaxAttempts int
	logLevel         string
	logFormat        string
	debugAddr        string
	allowNetworks    []netip.Prefix
	dedupWindow      time.Duration
	breakerFailures  int
	breakerWindow    time.Duration
	breakerCooldown  time.Duration
	secretGrace      time.Duration
	apiTokens        []string
	proxy            string
}

// usageError is a mistake in flags or environment: exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// parseConfig reads flags, then fills every flag not given on the command
// line from its environment twin (FANOUT_ and the flag's name in capitals).
// Flags are hand-wired rather than bound by a library so that the environment
// comes through getenv, which tests replace.
func parseConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("fanout", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	envOf := map[string]string{}
	fs.StringVar(&cfg.addr, "addr", "localhost:8000", "address to listen on")
	fs.StringVar(&cfg.dataDir, "data", "data", "directory of the SQLite database")
	fs.StringVar(&cfg.databaseURL, "database-url", "", "PostgreSQL connection `URL` (postgres://user:pass@host/db); when set, replaces the SQLite store and lets several replicas share the database")
	fs.Func("destination", "creates a destination for this `URL` at start unless it exists (manage them with /v1/destinations); repeat the flag for several (the environment takes a comma-separated list)", func(v string) error {
		for _, u := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
			if err := validateDestination(u); err != nil {
				return err
			}
			cfg.destinations = append(cfg.destinations, u)
		}
		return nil
	})
	envOf["destination"] = "FANOUT_DESTINATIONS"
	fs.BoolVar(&cfg.demo, "demo", false, "also deliver to a built-in demonstration destination that logs what it receives (and allows 127.0.0.1)")
	fs.Func("allow-network", "`CIDR` (or address) that deliveries may reach although it is loopback, private or link-local; repeat the flag for several (the environment takes a comma-separated list)", func(v string) error {
		nets, err := webhook.ParseNetworks(strings.Split(v, ","))
		cfg.allowNetworks = append(cfg.allowNetworks, nets...)
		return err
	})
	envOf["allow-network"] = "FANOUT_ALLOW_NETWORKS"
	// Tokens are checked in validate, after parsing: the flag package
	// would repeat a refused value in its message, and a token is a secret.
	fs.Func("api-token", "a `token` the API requires as \"Authorization: Bearer <token>\" (all but /healthz and /metrics); repeat the flag to accept several while rotating (the environment, better than a flag that ps shows, takes a comma-separated list)", func(v string) error {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				cfg.apiTokens = append(cfg.apiTokens, t)
			}
		}
		return nil
	})
	envOf["api-token"] = "FANOUT_API_TOKENS"
	fs.StringVar(&cfg.proxy, "proxy", "", "send every delivery through this HTTP proxy (`URL`: http://proxy.internal:3128); without it, HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured. The SSRF guard checks each destination before the proxy gets it")
	fs.DurationVar(&cfg.dedupWindow, "dedup-window", 24*time.Hour, "how long an event's id or Idempotency-Key is remembered to drop a repeat")
	fs.IntVar(&cfg.breakerFailures, "breaker-failures", 50, "failed attempts in a row that open a destination's circuit breaker (0: never)")
	fs.DurationVar(&cfg.breakerWindow, "breaker-window", time.Minute, "the failures that open the breaker must span at least this long")
	fs.DurationVar(&cfg.breakerCooldown, "breaker-cooldown", 5*time.Minute, "how long an open breaker pauses the destination before trying it again")
	fs.DurationVar(&cfg.secretGrace, "secret-grace", 24*time.Hour, "after a secret rotation, how long the old secret still signs")
	fs.DurationVar(&cfg.deliveryTimeout, "delivery-timeout", webhook.DefaultTimeout, "time limit of one delivery attempt")
	fs.IntVar(&cfg.workers, "workers", 256, "calls (deliveries, fan-outs) that run at once")
	cfg.limits = Limits{MaxEventBytes: 1 << 20, MaxBatchBytes: 16 << 20, MaxBatchEvents: 10000, IngestTimeout: 10 * time.Second}
	fs.Var((*byteSize)(&cfg.limits.MaxEventBytes), "max-event-bytes", "largest event accepted, in bytes (`SIZE`: 65536, 512KiB, 1MiB)")
	fs.Var((*byteSize)(&cfg.limits.MaxBatchBytes), "max-batch-bytes", "largest /v1/batch request body accepted, in bytes (`SIZE`, as for --max-event-bytes)")
	fs.IntVar(&cfg.limits.MaxBatchEvents, "max-batch-events", cfg.limits.MaxBatchEvents, "most events in one /v1/batch request")
	fs.DurationVar(&cfg.limits.IngestTimeout, "ingest-timeout", cfg.limits.IngestTimeout, "how long a request waits for the store before answering 503")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long deliveries in flight may take to finish")
	fs.StringVar(&cfg.synchronous, "synchronous", "FULL", "SQLite synchronous mode: FULL (durable) or NORMAL (faster; may lose acknowledged events on power loss)")
	fs.DurationVar(&cfg.retention, "retention", 7*24*time.Hour, "how long after arrival a delivered event is deleted; 0 keeps them forever")
	fs.DurationVar(&cfg.failedRetention, "failed-retention", 0, "how long after arrival an event with a failed delivery is deleted; 0 keeps them forever")
	fs.DurationVar(&cfg.retryInitial, "retry-initial", time.Second, "upper bound of the first retry delay (exponential backoff with full jitter)")
	fs.DurationVar(&cfg.retryMax, "retry-max", time.Hour, "longest delay between two attempts")
	fs.DurationVar(&cfg.retryMaxAge, "retry-max-age", 72*time.Hour, "give a delivery up this long after its event arrived")
	fs.IntVar(&cfg.retryMaxAttempts, "retry-max-attempts", 0, "give a delivery up after this many failed attempts; 0 is no limit")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&cfg.debugAddr, "debug-addr", "", "if set, serve Go's profiler (/debug/pprof/) on this address; keep it private")
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := envOf[f.Name]; !ok {
			envOf[f.Name] = "FANOUT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		}
	})

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs, envOf)
			return nil, err
		}
		return nil, &usageError{fmt.Errorf("%v (see fanout --help)", err)}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Errorf("unexpected argument %q (see fanout --help)", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := envOf[f.Name]
		v := getenv(name)
		if set[f.Name] || v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %v", name, v, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, &usageError{err}
	}
	if err := cfg.validate(); err != nil {
		return nil, &usageError{err}
	}
	return cfg, nil
}

func (c *config) validate() error {
	var errs []error
	positive := map[string]time.Duration{
		"--delivery-timeout": c.deliveryTimeout, "--ingest-timeout": c.limits.IngestTimeout,
		"--shutdown-timeout": c.shutdownTimeout, "--retry-initial": c.retryInitial, "--retry-max": c.retryMax,
	}
	for _, name := range sortedKeys(positive) {
		if positive[name] <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	if c.dedupWindow <= 0 || c.breakerCooldown <= 0 || c.secretGrace <= 0 || c.breakerWindow < 0 || c.breakerFailures < 0 {
		errs = append(errs, errors.New("--dedup-window, --breaker-cooldown and --secret-grace must be positive, --breaker-window and --breaker-failures not negative"))
	}
	if c.workers <= 0 {
		errs = append(errs, errors.New("--workers must be positive"))
	}
	if c.limits.MaxEventBytes <= 0 || c.limits.MaxBatchBytes <= 0 || c.limits.MaxBatchEvents <= 0 {
		errs = append(errs, errors.New("--max-event-bytes, --max-batch-bytes and --max-batch-events must be positive"))
	}
	if c.retention < 0 || c.failedRetention < 0 || c.retryMaxAge < 0 || c.retryMaxAttempts < 0 {
		errs = append(errs, errors.New("retention and retry limits cannot be negative"))
	}
	if c.retryMaxAge == 0 && c.retryMaxAttempts == 0 {
		errs = append(errs, errors.New("--retry-max-age and --retry-max-attempts cannot both be 0: deliveries would retry forever"))
	}
	if c.proxy != "" {
		if _, _, err := webhook.ProxyFunc(c.proxy, nil); err != nil {
			errs = append(errs, fmt.Errorf("--proxy: %w", err))
		}
	}
	if c.dataDir == "" {
		errs = append(errs, errors.New("--data must name a directory"))
	}
	for i, t := range c.apiTokens {
		// The message says which token, by position, never what it is.
		if len(t) < 16 || strings.ContainsFunc(t, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
			errs = append(errs, fmt.Errorf("API token %d of %d (--api-token, FANOUT_API_TOKENS) must be at least 16 printable ASCII characters without spaces or commas", i+1, len(c.apiTokens)))
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validateDestination accepts absolute http and https URLs without
// credentials.
func validateDestination(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("destination %q is not a URL: %v", raw, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("destination %q must be an http or https URL", raw)
	case u.Host == "":
		return fmt.Errorf("destination %q has no host", raw)
	case u.User != nil:
		return fmt.Errorf("destination %q carries credentials; pass them another way", raw)
	case len(raw) > 2048:
		return fmt.Errorf("destination URL is longer than 2048 characters")
	}
	return nil
}

func printUsage(w io.Writer, fs *flag.FlagSet, envOf map[string]string) {
	fmt.Fprintf(w, `Usage: fanout [flags]

fanout accepts events over HTTP (POST /v1/event, POST /v1/batch), stores each
one durably before answering 202, and delivers it to every destination,
retrying each delivery on its own until it succeeds.

Every flag can also be set through the environment variable shown beside it;
a flag on the command line wins. fanout --version prints the version.

`)
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n        %s (env %s", usage, envOf[f.Name])
		if f.DefValue != "" && f.DefValue != "[]" {
			fmt.Fprintf(w, ", default %s", f.DefValue)
		}
		fmt.Fprintln(w, ")")
	})
}

func newLogger(cfg *config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return nil, &usageError{fmt.Errorf("--log-level: %v", err)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, &usageError{fmt.Errorf("--log-format must be text or json, not %q", cfg.logFormat)}
}

// byteSize is a flag of a number of bytes, written 65536, 64KiB or 1MB.
type byteSize int64

func (b *byteSize) String() string { return humanize.IBytes(uint64(*b)) }

func (b *byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return err
	}
	if n > 1<<40 {
		return fmt.Errorf("%s is too large", s)
	}
	*b = byteSize(n)
	return nil
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

// demoDestination is the demonstration destination: a receiver on loopback
// that logs every event it gets and checks its signature, so that a newcomer
// sees a delivery happen.
type demoDestination struct {
	srv   *http.Server
	url   string
	log   *slog.Logger
	dests *destination.Registry
}

// demoID is the demonstration destination's id: the same at every start,
// though its port changes.
const demoID = "dst_demo"

func startDemo(log *slog.Logger) (*demoDestination, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the demo destination: %w", err)
	}
	d := &demoDestination{url: "http://" + ln.Addr().String() + "/demo", log: log}
	d.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(d.serve)}
	go func() { _ = d.srv.Serve(ln) }()
	log.Info("demo destination started", "url", d.url)
	return d, nil
}

func (d *demoDestination) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
	signature := "unchecked"
	if dst, ok := d.dests.Get(demoID); ok {
		ts, _ := strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
		signature = "invalid"
		for _, key := range dst.Keys(time.Now()) {
			if webhook.Verify(key, r.Header.Get("webhook-id"), ts, body, r.Header.Get("webhook-signature")) {
				signature = "valid"
			}
		}
	}
	d.log.Info("demo destination received an event", "webhook-id", r.Header.Get("webhook-id"),
		"signature", signature, "body", string(body))
	w.WriteHeader(http.StatusNoContent)
}

// register points the demonstration destination at this run's port.
func (d *demoDestination) register(ctx context.Context, dests *destination.Registry) error {
	d.dests = dests
	if _, ok := dests.Get(demoID); ok {
		_, err := dests.Update(ctx, demoID, func(dst *destination.Destination) error {
			dst.URL, dst.Enabled, dst.Paused, dst.CircuitOpenUntil = d.url, true, false, nil
			return nil
		})
		return err
	}
	return dests.Create(ctx, &destination.Destination{ID: demoID, URL: d.url, Enabled: true,
		Description: "the demonstration destination of --demo"})
}

func (d *demoDestination) close() { _ = d.srv.Close() }
