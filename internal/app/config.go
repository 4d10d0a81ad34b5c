package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"fanout/destination"
	"fanout/destination/transform"
	"fanout/dispatch"
	"fanout/internal/httpapi"
	"fanout/internal/service"
	"fanout/sink"
	"fanout/webhook"
)

// config is everything run needs, from flags and their FANOUT_* twins.
type config struct {
	addr             string
	dataDir          string
	databaseURL      string
	destinations     []string
	demo             bool
	localCalls       bool
	deliveryTimeout  time.Duration
	workers          int
	limits           httpapi.Limits
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
	ambient          sink.Ambient
	dedupWindow      time.Duration
	breakerFailures  int
	breakerWindow    time.Duration
	breakerCooldown  time.Duration
	secretGrace      time.Duration
	apiTokens        []string
	proxy            string
	publicURL        string
	otlpEndpoint     string
	otlpProtocol     string
	drainDelay       time.Duration
	noticeWindow     time.Duration
	tenantRate       float64
	tenantBurst      int
	tenantFair       int64
	transformWorkers int
	transformMemory  int64
	portal           service.Branding
	// spanExporter, set by tests only, replaces the OTLP exporter when
	// tracing is on.
	spanExporter sdktrace.SpanExporter
	// resolver, set by tests only, replaces the SSRF guard's DNS.
	resolver webhook.Resolver
}

// retryPolicy is the default retry policy of deliveries: the runtime's
// default schedule with the bounds set by flags.
func (c *config) retryPolicy() *dispatch.Backoff {
	p := dispatch.DefaultBackoff()
	p.Initial, p.Max, p.MaxAge, p.MaxAttempts = c.retryInitial, c.retryMax, c.retryMaxAge, c.retryMaxAttempts
	return p
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
			if err := destination.ValidateURL(u, nil); err != nil {
				return err
			}
			cfg.destinations = append(cfg.destinations, u)
		}
		return nil
	})
	envOf["destination"] = "FANOUT_DESTINATIONS"
	fs.BoolVar(&cfg.demo, "demo", false, "also deliver to a built-in demonstration destination that logs what it receives (and allows 127.0.0.1)")
	fs.BoolVar(&cfg.localCalls, "local-calls", true, "run a delivery this process can start at once as a local call, written only when it ends; set false on every replica of a PostgreSQL fleet that still runs a version before it, until all run this one")
	fs.Func("allow-network", "`CIDR` (or address) that deliveries may reach although it is loopback, private or link-local; repeat the flag for several (the environment takes a comma-separated list)", func(v string) error {
		nets, err := webhook.ParseNetworks(strings.Split(v, ","))
		cfg.allowNetworks = append(cfg.allowNetworks, nets...)
		return err
	})
	envOf["allow-network"] = "FANOUT_ALLOW_NETWORKS"
	fs.BoolVar(&cfg.ambient.AWS, "allow-ambient-aws", false, "let broker destinations an operator's token creates use fanout's own AWS credentials (environment, shared files, instance role) with \"ambient_credentials\": true; never a tenant's")
	fs.BoolVar(&cfg.ambient.Google, "allow-ambient-google", false, "let broker destinations an operator's token creates use fanout's own Google application default credentials with \"ambient_credentials\": true; never a tenant's")
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
	fs.StringVar(&cfg.limits.MetricsToken, "metrics-token", "", "the bearer `TOKEN` /metrics needs (FANOUT_METRICS_TOKEN); without it /metrics answers anyone who reaches fanout, and its series name every destination, every tenant's")
	fs.StringVar(&cfg.publicURL, "public-url", "", "the `URL` users and portal links reach fanout by (https://fanout.example.com), when it is not localhost; without an API token, fanout answers only requests addressed to this machine or to this URL's host")
	fs.StringVar(&cfg.portal.Name, "portal-name", "", "the product name tenant portals show (your product's, not fanout's)")
	fs.StringVar(&cfg.portal.LogoURL, "portal-logo-url", "", "the https `URL` of the logo tenant portals show")
	fs.StringVar(&cfg.portal.Accent, "portal-accent", "", "the accent colour of tenant portals, #rrggbb")
	fs.StringVar(&cfg.proxy, "proxy", "", "send every delivery through this HTTP proxy (`URL`: http://proxy.internal:3128); without it, HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured. The SSRF guard checks each destination before the proxy gets it")
	fs.Float64Var(&cfg.tenantRate, "tenant-ingest-rate", 0, "events per second each tenant may send to this process, unless the tenant has its own ingest_rate; past it, 429 with Retry-After (0: no limit)")
	cfg.tenantFair = 64 << 10
	fs.Var((*byteSize)(&cfg.tenantFair), "tenant-fair-bytes", "ingest request bytes in flight that tenants share while more than one sends (`SIZE`): each may have this divided by the tenants sending (at least 16KiB), and its other requests wait their turn, bodies unread; a tenant alone is never held back (0: no sharing)")
	fs.IntVar(&cfg.transformWorkers, "transform-workers", runtime.GOMAXPROCS(0), "transformations that may run at once, each in a worker process of its own (fanout started again), started when first needed and kept")
	cfg.transformMemory = transform.DefaultWorkerMemory
	fs.Var((*byteSize)(&cfg.transformMemory), "transform-memory", "the memory each transformation worker may use (`SIZE`, at least 32MiB): a program that needs more fails its delivery attempt and its worker is replaced")
	fs.IntVar(&cfg.tenantBurst, "tenant-ingest-burst", 0, "events a tenant may send at once above --tenant-ingest-rate (0: as many as one second's rate)")
	fs.DurationVar(&cfg.dedupWindow, "dedup-window", 24*time.Hour, "how long an event's id or Idempotency-Key is remembered to drop a repeat")
	fs.IntVar(&cfg.breakerFailures, "breaker-failures", 50, "failed attempts in a row that open a destination's circuit breaker (0: never)")
	fs.DurationVar(&cfg.breakerWindow, "breaker-window", time.Minute, "the failures that open the breaker must span at least this long")
	fs.DurationVar(&cfg.breakerCooldown, "breaker-cooldown", 5*time.Minute, "how long an open breaker pauses the destination before trying it again")
	fs.DurationVar(&cfg.secretGrace, "secret-grace", 24*time.Hour, "after a secret rotation, how long the old secret still signs")
	fs.DurationVar(&cfg.deliveryTimeout, "delivery-timeout", webhook.DefaultTimeout, "time limit of one delivery attempt")
	fs.IntVar(&cfg.workers, "workers", dispatch.DefaultWorkers, "calls (deliveries, fan-outs) that run at once")
	cfg.limits = httpapi.Limits{MaxEventBytes: 1 << 20, MaxBatchBytes: 16 << 20, MaxBatchEvents: 10000, IngestTimeout: 10 * time.Second,
		MaxInflightBytes: 256 << 20}
	fs.Var((*byteSize)(&cfg.limits.MaxEventBytes), "max-event-bytes", "largest event accepted, in bytes (`SIZE`: 65536, 512KiB, 1MiB)")
	fs.Var((*byteSize)(&cfg.limits.MaxBatchBytes), "max-batch-bytes", "largest /v1/batch request body accepted, in bytes (`SIZE`, as for --max-event-bytes)")
	fs.IntVar(&cfg.limits.MaxBatchEvents, "max-batch-events", cfg.limits.MaxBatchEvents, "most events in one /v1/batch request")
	fs.Var((*byteSize)(&cfg.limits.MaxInflightBytes), "max-inflight-bytes", "request bodies held in memory at once, across all requests (`SIZE`); a quarter is kept for bodies up to --max-event-bytes, and a larger body that waits 3s for its turn is answered 503 with Retry-After; 0 removes the bound")
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
	fs.StringVar(&cfg.otlpEndpoint, "otlp-endpoint", "", "send traces over OTLP to this `URL` (http://collector:4318; OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* variables work too; off by default)")
	fs.StringVar(&cfg.otlpProtocol, "otlp-protocol", "", "OTLP transport of traces: http/protobuf (the default) or grpc (else OTEL_EXPORTER_OTLP_PROTOCOL)")
	fs.DurationVar(&cfg.drainDelay, "drain-delay", 0, "on SIGTERM, keep serving this long with /readyz answering 503, so that load balancers stop sending before fanout stops listening")
	fs.DurationVar(&cfg.noticeWindow, "notice-window", time.Minute, "dead-lettered deliveries of one destination are announced together, in one fanout.deliveries.failed event per window this long")
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
	if c.tenantRate < 0 || c.tenantRate > 1e6 || c.tenantBurst < 0 || c.tenantFair < 0 {
		errs = append(errs, fmt.Errorf("--tenant-ingest-rate must be between 0 (no limit) and 1000000, and --tenant-ingest-burst and --tenant-fair-bytes at least 0"))
	}
	if c.transformWorkers < 1 || c.transformWorkers > 256 || c.transformMemory < 32<<20 {
		errs = append(errs, fmt.Errorf("--transform-workers must be between 1 and 256, and --transform-memory at least 32MiB"))
	}
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
	if c.drainDelay < 0 || c.noticeWindow <= 0 {
		errs = append(errs, errors.New("--drain-delay cannot be negative, --notice-window must be positive"))
	}
	if c.workers <= 0 {
		errs = append(errs, errors.New("--workers must be positive"))
	}
	if c.limits.MaxEventBytes <= 0 || c.limits.MaxBatchBytes <= 0 || c.limits.MaxBatchEvents <= 0 {
		errs = append(errs, errors.New("--max-event-bytes, --max-batch-bytes and --max-batch-events must be positive"))
	}
	if err := httpapi.CheckBudget(c.limits.MaxInflightBytes, c.limits); err != nil {
		errs = append(errs, err)
	}
	if c.retention < 0 || c.failedRetention < 0 || c.retryMaxAge < 0 || c.retryMaxAttempts < 0 {
		errs = append(errs, errors.New("retention and retry limits cannot be negative"))
	}
	if !c.retryPolicy().Bounded() {
		errs = append(errs, errors.New("--retry-max-age and --retry-max-attempts cannot both be 0: deliveries would retry forever"))
	}
	if c.proxy != "" {
		if _, _, err := webhook.ProxyFunc(c.proxy, nil); err != nil {
			errs = append(errs, fmt.Errorf("--proxy: %w", err))
		}
	}
	if c.publicURL != "" {
		if u, err := url.Parse(c.publicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("--public-url %q must be an http or https URL with a host and nothing after the path, such as https://fanout.example.com", c.publicURL))
		}
	}
	if err := service.CheckBranding(c.portal); err != nil {
		errs = append(errs, err)
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
