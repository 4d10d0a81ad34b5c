package service

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is fanout's Prometheus registry and the measurements made on the
// way (answers of the API, latency histograms, the store's group commits).
// What lives in memory elsewhere (the runtime's counters, each
// destination's state, the backlog) is read at scrape time by a collector
// (fanoutCollector), so that nothing counts twice.
//
// Labels stay bounded: routes (the API's patterns), status classes,
// outcomes, and destination ids, the only label that grows with the
// configuration. Series of a destination that was deleted are dropped at
// the next scrape.
type Metrics struct {
	Reg *prometheus.Registry

	requests        *prometheus.CounterVec   // fanout_http_requests_total{route,code}
	ingestDuration  *prometheus.HistogramVec // {route,code}
	batchEvents     prometheus.Histogram
	firstAttempt    *prometheus.HistogramVec // {destination}
	deliveryLatency *prometheus.HistogramVec // {destination}
	attemptDuration *prometheus.HistogramVec // {destination,outcome}
	commitOps       prometheus.Histogram
	commitDuration  prometheus.Histogram
	notices         *prometheus.CounterVec // fanout_operational_events_total{type}
	tenantLimited   prometheus.Counter

	// routes holds each route's counters and histograms, resolved once:
	// the request path then costs atomic adds, no label lookups. The map
	// is read-only once track has filled it.
	routes map[string]*routeMetrics

	// destinations are those with series in the vectors above (id ->
	// true), so that a deleted one's can be dropped.
	destinations sync.Map
}

// routeMetrics are one route's series; answers and durations by status
// class 1xx-5xx, nil for a class until it happens (1xx and 3xx: the API
// answers neither, and series of zeros would say it might).
type routeMetrics struct {
	route     string
	ingest    bool // its answers are timed (fanout_ingest_duration_seconds)
	answers   [5]prometheus.Counter
	durations [5]prometheus.Observer
	once      [5]sync.Once
}

// latencyBuckets are the classic buckets of every latency histogram: 100 µs
// to an hour, about three to a decade (an acknowledgement takes a
// millisecond, an attempt up to --delivery-timeout, a delivery that waits
// for retries hours; beyond an hour, +Inf). Native histograms (for
// scrapers that ask for them) have their own, finer buckets.
var latencyBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
}

// histogramOpts are the options every histogram shares: classic buckets
// for every scraper, and a native histogram (a bucket per 10 % of value,
// at most 160 buckets, reset at most hourly) for those that scrape them.
func histogramOpts(name, help string, buckets []float64) prometheus.HistogramOpts {
	return prometheus.HistogramOpts{
		Name: name, Help: help, Buckets: buckets,
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}
}

func newMetrics(version string) *Metrics {
	m := &Metrics{
		Reg:    prometheus.NewRegistry(),
		routes: map[string]*routeMetrics{},
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fanout_http_requests_total",
		Help: `Answers of the API by route and status class (route "other": no route took the request).`,
	}, []string{"route", "code"})
	m.ingestDuration = prometheus.NewHistogramVec(histogramOpts("fanout_ingest_duration_seconds",
		"Time from the arrival of a /v1/event or /v1/batch request to its answer (a 2xx once the events are durable), by route and status class.",
		latencyBuckets), []string{"route", "code"})
	m.batchEvents = prometheus.NewHistogram(histogramOpts("fanout_ingest_batch_events",
		"Events in each batch /v1/batch accepted.",
		[]float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}))
	m.firstAttempt = prometheus.NewHistogramVec(histogramOpts("fanout_delivery_first_attempt_delay_seconds",
		"Time from an event's arrival to the start of the first attempt of its delivery, by destination.",
		latencyBuckets), []string{"destination"})
	m.deliveryLatency = prometheus.NewHistogramVec(histogramOpts("fanout_delivery_latency_seconds",
		"Time from an event's arrival to its delivery (the end of the attempt the destination accepted), retries included, by destination.",
		latencyBuckets), []string{"destination"})
	m.attemptDuration = prometheus.NewHistogramVec(histogramOpts("fanout_delivery_attempt_duration_seconds",
		`Duration of delivery attempts, by destination and outcome ("done": delivered, "retried": failed and tried again later, "failed": failed for good).`,
		latencyBuckets), []string{"destination", "outcome"})
	m.commitOps = prometheus.NewHistogram(histogramOpts("fanout_store_commit_operations",
		"Operations (events stored, attempts recorded...) per group commit of the store's writer.",
		[]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}))
	m.commitDuration = prometheus.NewHistogram(histogramOpts("fanout_store_commit_duration_seconds",
		"Duration of the store's group commits, from the start of the transaction to the end of the commit (its fsync or WAL flush included).",
		latencyBuckets))
	m.notices = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fanout_operational_events_total",
		Help: "Operational events fanout stored about itself (fanout.destination.paused, ...), by type.",
	}, []string{"type"})
	for _, t := range NoticeTypes {
		m.notices.WithLabelValues(t)
	}
	// Not by tenant: tenants are the customers' ids, unbounded.
	m.tenantLimited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fanout_tenant_ingest_limited_events_total",
		Help: "Events refused with 429 because their tenant sent more than its ingest rate.",
	})
	m.Reg.MustRegister(m.requests, m.ingestDuration, m.batchEvents, m.firstAttempt, m.deliveryLatency,
		m.attemptDuration, m.commitOps, m.commitDuration, m.notices, m.tenantLimited,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "fanout_build_info",
			Help:        "1, with the version of fanout that runs as a label.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }))
	return m
}

// watch adds what svc holds in memory to the registry (see fanoutCollector).
func (m *Metrics) watch(svc *Service) {
	m.Reg.MustRegister(&fanoutCollector{svc: svc, m: m})
}

// Track makes room for the answers of each route, and of "other".
func (m *Metrics) Track(patterns []string) {
	for _, p := range patterns {
		m.addRoute(p, p == "POST /v1/event" || p == "POST /v1/batch")
	}
	m.addRoute("other", false)
}

func (m *Metrics) addRoute(pattern string, ingest bool) {
	rm := &routeMetrics{route: pattern, ingest: ingest}
	for _, c := range []int{1, 3, 4} { // 2xx, 4xx, 5xx: shown from the start
		rm.resolve(m, c)
	}
	m.routes[pattern] = rm
}

// resolve creates the series of status class c (0 for 1xx).
func (rm *routeMetrics) resolve(m *Metrics, c int) {
	rm.once[c].Do(func() {
		code := strconv.Itoa(c+1) + "xx"
		rm.answers[c] = m.requests.WithLabelValues(rm.route, code)
		if rm.ingest {
			rm.durations[c] = m.ingestDuration.WithLabelValues(rm.route, code)
		}
	})
}

// Instrument counts next's answers under the pattern the mux matched, which
// it leaves in r.Pattern (a request no route took, 404, 405 or 401, is
// "other"), and times those of the ingest routes.
func (m *Metrics) Instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		rm := m.routes[r.Pattern]
		if rm == nil {
			rm = m.routes["other"]
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		c := status/100 - 1
		if c < 0 || c >= 5 {
			return
		}
		rm.resolve(m, c)
		rm.answers[c].Inc()
		if rm.ingest {
			rm.durations[c].Observe(time.Since(start).Seconds())
		}
	})
}

// Attempted measures one delivery attempt.
func (m *Metrics) Attempted(d deliveryAttempt) {
	if _, ok := m.destinations.Load(d.DestinationID); !ok {
		m.destinations.Store(d.DestinationID, true)
	}
	m.attemptDuration.WithLabelValues(d.DestinationID, d.Outcome).Observe(d.Duration.Seconds())
	if d.First {
		m.firstAttempt.WithLabelValues(d.DestinationID).Observe(max(0, d.Started.Sub(d.EventAt).Seconds()))
	}
	if d.Outcome == outcomeDone {
		m.deliveryLatency.WithLabelValues(d.DestinationID).Observe(max(0, d.Started.Add(d.Duration).Sub(d.EventAt).Seconds()))
	}
}

// committed measures one group commit of the store: its Config.OnCommit.
func (m *Metrics) committed(ops int, took time.Duration) {
	m.commitOps.Observe(float64(ops))
	m.commitDuration.Observe(took.Seconds())
}

// forget drops the series of destinations that no longer exist.
func (m *Metrics) forget(exists func(id string) bool) {
	m.destinations.Range(func(k, _ any) bool {
		id := k.(string)
		if exists(id) {
			return true
		}
		m.destinations.Delete(id)
		m.firstAttempt.DeleteLabelValues(id)
		m.deliveryLatency.DeleteLabelValues(id)
		m.attemptDuration.DeletePartialMatch(prometheus.Labels{"destination": id})
		return true
	})
}

// MetricsHandler serves the registry in the text format, or in the
// protobuf one to a scraper that asks for it (the one that carries native
// histograms).
func (svc *Service) MetricsHandler(log *slog.Logger) http.Handler {
	h := sync.OnceValue(func() http.Handler {
		return promhttp.HandlerFor(svc.Metrics.Reg, promhttp.HandlerOpts{
			ErrorLog:      promLogger{log},
			ErrorHandling: promhttp.ContinueOnError,
		})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h().ServeHTTP(w, r) })
}

type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error("serve /metrics", "err", fmt.Sprint(v...)) }

// fanoutCollector reads, at each scrape, what the runtime, the store and
// the destinations hold in memory, and the backlog, which a backlogCache
// counts in the background.
type fanoutCollector struct {
	svc *Service
	m   *Metrics
}

var (
	descAccepted = prometheus.NewDesc("fanout_events_accepted_total",
		"Events in 2xx answers of /v1/event and /v1/batch (a repeat that was dropped counts too).", nil, nil)
	descAttempts = prometheus.NewDesc("fanout_attempts_total",
		"Attempts of calls (fan-outs and deliveries) by outcome.", []string{"outcome"}, nil)
	descClaimed = prometheus.NewDesc("fanout_claimed_total",
		"Calls claimed from the store's backlog.", nil, nil)
	descLeased = prometheus.NewDesc("fanout_leased_on_create_total",
		"Calls run without a claim: leased as they were stored.", nil, nil)
	descRows = prometheus.NewDesc("fanout_store_rows_written_total",
		"Rows written by the store's committed transactions, by table and operation (inserted, updated, deleted).",
		[]string{"table", "operation"}, nil)
	descLocal = prometheus.NewDesc("fanout_local_calls_total",
		"Deliveries run at once as local calls: stored only once their first attempt ended.", nil, nil)
	descCommits = prometheus.NewDesc("fanout_store_commits_total",
		"Group commits of the store's writer.", nil, nil)
	descOps = prometheus.NewDesc("fanout_store_operations_total",
		"Operations those commits carried.", nil, nil)
	descReplays = prometheus.NewDesc("fanout_store_replays_total",
		"Group commits that failed and were replayed operation by operation, so that only the failing one fails.", nil, nil)
	descConnWaits = prometheus.NewDesc("fanout_store_connection_waits_total",
		"Callers that waited for a PostgreSQL connection (0 on SQLite).", nil, nil)
	descFromMemory = prometheus.NewDesc("fanout_results_from_memory_total",
		"Resumed events that found their deliveries' results in memory (the rest read the store).", nil, nil)
	descStoreUp = prometheus.NewDesc("fanout_store_up",
		"1 if the last count of the backlog could read the store, else 0.", nil, nil)
	descBacklog = prometheus.NewDesc("fanout_destination_backlog",
		"Deliveries to a destination waiting in the store (new ones and retries waiting for their time), over all replicas, as of fanout_backlog_age_seconds ago.",
		[]string{"destination"}, nil)
	descBacklogAge = prometheus.NewDesc("fanout_backlog_age_seconds",
		"How old fanout_destination_backlog is: it grows when the store cannot be read or the count is slow.", nil, nil)
	descInFlight = prometheus.NewDesc("fanout_destination_in_flight",
		"Deliveries in flight to a destination in this process.", []string{"destination"}, nil)
	descLimit = prometheus.NewDesc("fanout_destination_concurrency_limit",
		"The adaptive limit of deliveries in flight to a destination.", []string{"destination"}, nil)
	descFailures = prometheus.NewDesc("fanout_destination_failures_in_a_row",
		"Failed attempts in a row to a destination (the circuit breaker's count).", []string{"destination"}, nil)
	descPaused = prometheus.NewDesc("fanout_destination_paused",
		"1 if a destination's deliveries are held back (disabled, paused, or its breaker open).", []string{"destination"}, nil)
	descThrottled = prometheus.NewDesc("fanout_destination_throttled",
		"Deliveries to a destination waiting on its throttle (rate_limit): its backlog while this process found the throttle spent in the last 5 seconds, else 0.",
		[]string{"destination"}, nil)
	descThrottleRate = prometheus.NewDesc("fanout_destination_throttle_rate",
		"A destination's throttle in deliveries per second, for every replica together on PostgreSQL (0: none).", []string{"destination"}, nil)
	descReady = prometheus.NewDesc("fanout_ready",
		"1 if this process is ready for traffic (/readyz answers 200), else 0.", nil, nil)
)

func (c *fanoutCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descAttempts, descClaimed, descLeased, descLocal, descRows, descCommits, descOps,
		descReplays, descConnWaits, descFromMemory, descStoreUp, descBacklog, descBacklogAge, descInFlight, descLimit,
		descFailures, descPaused, descReady, descThrottled, descThrottleRate} {
		ch <- d
	}
}

func (c *fanoutCollector) Collect(ch chan<- prometheus.Metric) {
	svc := c.svc
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(descAccepted, svc.Accepted.Load())
	st := svc.rt.Stats()
	counter(descAttempts, st.Done, "done")
	counter(descAttempts, st.Retried, "retried")
	counter(descAttempts, st.Failed, "failed")
	counter(descClaimed, st.Claimed)
	counter(descLeased, st.LeasedOnCreate)
	ss := svc.StoreStats()
	counter(descCommits, ss.Commits)
	counter(descOps, ss.Ops)
	counter(descLocal, st.Local)
	for kind, n := range ss.Rows {
		if table, op, ok := strings.Cut(kind, " "); ok {
			counter(descRows, n, table, op)
		}
	}
	counter(descReplays, ss.Replays)
	counter(descConnWaits, ss.ConnWaits)
	counter(descFromMemory, st.ResultsFromMemory)
	ready := 0.0
	if svc.Readiness.Last().Ready {
		ready = 1
	}
	gauge(descReady, ready)

	dests := svc.Dests.List()
	now := time.Now()
	// The backlog comes from the store, shared by every replica, and is
	// read at most every backlogMaxAge, in the background: a scrape never
	// waits on a slow count, and many scrapes cost one count.
	pending, at, err := svc.Backlog.Get(now)
	up := 0.0
	if err == nil && !at.IsZero() {
		up = 1
	}
	gauge(descStoreUp, up)
	if !at.IsZero() {
		for _, d := range dests {
			gauge(descBacklog, float64(pending[d.ID]), d.ID)
		}
		gauge(descBacklogAge, time.Since(at).Seconds())
	}
	exists := make(map[string]bool, len(dests))
	for _, d := range dests {
		exists[d.ID] = true
		ks := svc.rt.KeyStatus(d.ID)
		gauge(descInFlight, float64(ks.InFlight), d.ID)
		gauge(descLimit, ks.Limit, d.ID)
		gauge(descFailures, float64(ks.Failures), d.ID)
		paused := 0.0
		if d.PausedAt(now) {
			paused = 1
		}
		gauge(descPaused, paused, d.ID)
		gauge(descThrottleRate, d.RateLimit.PerSecond(), d.ID)
		if !at.IsZero() {
			gauge(descThrottled, float64(throttleWaiting(d, ks, pending[d.ID], now)), d.ID)
		}
	}
	c.m.forget(func(id string) bool { return exists[id] })
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TrackRoutes makes room in the metrics for the answers of each route
// pattern ("POST /v1/event"), before the first request.
func (svc *Service) TrackRoutes(patterns []string) { svc.Metrics.Track(patterns) }

// InstrumentHTTP counts and times the answers of next, and traces them when
// tracing is on: the outermost layer of the API.
func (svc *Service) InstrumentHTTP(next http.Handler) http.Handler {
	h := svc.Metrics.Instrument(next)
	if svc.Tracing != nil {
		h = svc.Tracing.serve(h)
	}
	return h
}

// BatchAccepted counts the events of an accepted batch, for the
// histogram of batch sizes.
func (svc *Service) BatchAccepted(events int) { svc.Metrics.batchEvents.Observe(float64(events)) }

// Committed measures one group commit of the store (its OnCommit).
func (svc *Service) Committed(ops int, took time.Duration) { svc.Metrics.committed(ops, took) }
