package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/webhook"
)

// Service is what fanout offers, over the runtime, the store and the
// destinations: ingest, the views of events and deliveries, re-drive, and
// the destinations. It is the only code that turns runtime calls into
// fanout's words (an event is a handleEvent call without a parent, a
// delivery a publishEvent call keyed by its destination); the HTTP layer
// sees views and the errors below.
type Service struct {
	rt    *dispatch.Runtime
	store Store
	fns   *functions
	Dests *destination.Registry
	// Backlog counts the deliveries waiting in the store, for metrics.
	Backlog *backlogCache
	// Accepted counts the events ingest answered for (a repeat that was
	// dropped counts too).
	Accepted atomic.Int64
	// attemptObservers are told of every attempt the runtime reports
	// (metrics, traces, the console's charts add theirs before Start).
	attemptObservers []func(dispatch.AttemptReport)

	// replayFn is the durable function of replays (replay.go).
	replayFn *dispatch.Function[replayJob, ReplayCount]
	// retention and failedRetention are the runtime's, shown with the
	// history (history.go).
	retention, failedRetention time.Duration
	// stats are this process's figures for the console (stats.go), since
	// started; storeName says which store, for the console.
	stats     *statsRing
	started   time.Time
	storeName string
	// deliveryObservers are told of every delivery attempt, in fanout's
	// words (see deliveryAttempt).
	deliveryObservers []func(deliveryAttempt)
	// Metrics is the Prometheus registry of /metrics.
	Metrics *Metrics
	// Tracing makes the spans of ingest and deliveries; nil when tracing
	// is off.
	Tracing *Tracing
	// ready says whether this process is ready for traffic (/readyz).
	Readiness *readiness
	// Notices announces operational events (notices.go).
	Notices *Notifier
	// stopUpgrades and upgraded are those of startUpgrades (upgrade.go).
	stopUpgrades context.CancelFunc
	upgraded     chan struct{}
	version      string
	log          *slog.Logger
	// tenants caches the tenants (tenants.go); now is the clock of
	// tokens, tenants and their rates.
	tenants     *tenants
	stopTenants func() // ends the tenants' refresh and waits for it
	gate        *fairGate
	now         func() time.Time
	portal      PortalConfig
}

// serviceConfig is everything the service is made of; nothing is set on
// it after newService.
type Config struct {
	Runtime *dispatch.Runtime // not started yet
	Store   Store
	Fns     *functions
	Dests   *destination.Registry
	// Retention and FailedRetention are the runtime's, shown with the
	// history; StoreName says which store, for the console.
	Retention, FailedRetention time.Duration
	StoreName                  string
	// Tracing makes the spans of ingest and deliveries; nil when tracing
	// is off.
	Tracing *Tracing
	// NoticeWindow is how long the dead letters of one destination are
	// gathered into one fanout.deliveries.failed event (notices.go).
	NoticeWindow time.Duration
	// Version is fanout's, shown by the console and the metrics.
	Version string
	// Logger hears of readiness, notices and upgrades; nil logs nothing.
	Logger *slog.Logger
	// TenantIngestRate and TenantIngestBurst bound the events per second
	// of each tenant, per process, unless a tenant has its own; 0: none.
	TenantIngestRate  float64
	TenantIngestBurst int
	// TenantFairBytes is the ingest request bytes in flight that tenants
	// share while more than one sends (fairgate.go); 0: no sharing.
	TenantFairBytes int64
	// Portal is the operator's settings of the tenant portals.
	Portal PortalConfig
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// newService returns the service over a runtime that has not started: it
// registers the replay function with it, and watches attempts for stats,
// metrics and traces.
func New(cfg Config) *Service {
	s := &Service{rt: cfg.Runtime, store: cfg.Store, fns: cfg.Fns, Dests: cfg.Dests, Backlog: NewBacklogCache(cfg.Store),
		started: time.Now().UTC(), Metrics: newMetrics(cfg.Version), retention: cfg.Retention, failedRetention: cfg.FailedRetention,
		storeName: cfg.StoreName, Tracing: cfg.Tracing, version: cfg.Version, portal: cfg.Portal}
	s.now = cfg.Now
	if s.now == nil {
		s.now = time.Now
	}
	s.tenants = newTenants(cfg.Store, cfg.TenantIngestRate, cfg.TenantIngestBurst, s.now)
	s.gate = newFairGate(cfg.TenantFairBytes, s.now)
	s.fns.tenantOf = s.tenants.ofKey
	s.replayFn = newReplayFunction(s)
	if err := s.rt.Register(s.replayFn); err != nil {
		panic("register the replay function: " + err.Error()) // only before Start, once: a wiring mistake
	}
	s.stats = newStatsRing(s)
	s.observeAttempts(s.stats.record)
	s.log = cfg.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.Readiness = newReadiness(s.storeAnswers, cfg.Logger)
	s.Metrics.watch(s)
	s.observeAttempts(s.deliveryAttempted)
	s.observeDeliveries(s.Metrics.Attempted)
	if s.Tracing != nil {
		s.observeDeliveries(s.Tracing.attempted)
	}
	window := cfg.NoticeWindow
	if window <= 0 {
		window = time.Minute
	}
	s.Notices = NewNotifier(s, cfg.Store, window, s.log)
	s.observeDeliveries(s.Notices.attempted)
	return s
}

// Start starts what the service runs in the background once the runtime
// runs: operational events and the upgrades of stored data.
func (s *Service) Start(ctx context.Context) {
	if err := s.tenants.refresh(ctx); err != nil {
		s.log.Warn("load the tenants; they are loaded on first use", "err", err)
	}
	tctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	s.stopTenants = func() { stop(); <-done }
	go func() {
		defer close(done)
		s.tenants.run(tctx, time.Second)
	}()
	s.Notices.start(ctx)
	s.startUpgrades(ctx)
}

// Stop announces the failures counted so far (while the runtime still
// takes events) and stops what Start started, within ctx.
func (s *Service) Stop(ctx context.Context) {
	if s.stopTenants != nil {
		s.stopTenants()
	}
	s.Notices.Stop(ctx)
	s.StopUpgrading()
}

// DestinationsChanged tells the service that a destination changed (a
// pause, a recovery), to announce it now.
func (s *Service) DestinationsChanged() { s.Notices.poke() }

// Errors of the service, in the words of its callers; writeError gives each
// kind its HTTP status. A message says what is wrong and what to do.
var (
	ErrInvalid      = errors.New("invalid request")
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrShuttingDown = errors.New("shutting down")
	// errMaybeStored: the store lost the answer to its commit and could
	// not look afterwards; the events may be stored.
	ErrMaybeStored = errors.New("outcome unknown")
)

// serviceError is an error of one of the kinds above, with its message.
type serviceError struct {
	kind error
	msg  string
}

func (e *serviceError) Error() string { return e.msg }
func (e *serviceError) Unwrap() error { return e.kind }

// newError is an error of kind with its message.
func newError(kind error, format string, args ...any) error {
	return &serviceError{kind, fmt.Sprintf(format, args...)}
}

func Invalid(format string, args ...any) error {
	return &serviceError{ErrInvalid, fmt.Sprintf(format, args...)}
}

func NotFound(format string, args ...any) error {
	return &serviceError{ErrNotFound, fmt.Sprintf(format, args...)}
}

func Conflict(format string, args ...any) error {
	return &serviceError{ErrConflict, fmt.Sprintf(format, args...)}
}

// observeAttempts adds f to what is told of every attempt; call it before
// the runtime starts.
func (s *Service) observeAttempts(f func(dispatch.AttemptReport)) {
	s.attemptObservers = append(s.attemptObservers, f)
}

// Attempted is the runtime's Config.OnAttempt.
func (s *Service) Attempted(a dispatch.AttemptReport) {
	for _, f := range s.attemptObservers {
		f(a)
	}
}

// observeDeliveries adds f to what is told of every delivery attempt; call
// it before the runtime starts.
func (s *Service) observeDeliveries(f func(deliveryAttempt)) {
	s.deliveryObservers = append(s.deliveryObservers, f)
}

// Outcomes of a delivery attempt, as fanout_attempts_total names them.
const (
	outcomeDone    = "done"    // delivered
	outcomeRetried = "retried" // failed, to be tried again at RetryAt
	outcomeFailed  = "failed"  // failed for good: a dead letter
)

// deliveryAttempt is one attempt of a delivery whose outcome is stored, in
// fanout's words: what metrics, traces and operational events know of it.
type deliveryAttempt struct {
	ID            string // the delivery's
	EventID       string
	DestinationID string
	// Attempt counts the delivery's attempts, 1 for the first; First is
	// set for the first.
	Attempt int
	First   bool
	// EventAt is when the event arrived; Started and Duration time the
	// attempt.
	EventAt  time.Time
	Started  time.Time
	Duration time.Duration
	// Outcome is outcomeDone, outcomeRetried or outcomeFailed.
	Outcome string
	// Status is the destination's HTTP status when it answered with an
	// error; ErrorClass names the error ("503", "timeout", "tcp_error"...),
	// Err is the error itself; all empty when it was delivered.
	Status     int
	ErrorClass string
	Err        error
	// RetryAt is when a retried delivery runs again.
	RetryAt time.Time
	// Trace is what the event's trace context was stored as (Call.Meta).
	Trace []byte
}

// deliveryAttempted turns the runtime's report of a delivery attempt into a
// deliveryAttempt for the delivery observers. Snoozes (a destination paused
// while the delivery was leased) were no attempt; other calls are not
// deliveries.
func (s *Service) deliveryAttempted(a dispatch.AttemptReport) {
	c := a.Call
	if c.Function != s.fns.PublishEvent.Name() || a.Snoozed || len(s.deliveryObservers) == 0 {
		return
	}
	d := deliveryAttempt{ID: c.ID, EventID: c.ParentID, DestinationID: c.Key, Attempt: c.Attempt, First: c.Attempt == 1,
		EventAt: eventTime(c.ParentID, c.CreatedAt), Started: a.Started, Duration: a.Duration, Err: a.Err, Trace: c.Meta}
	switch a.Outcome {
	case dispatch.StateDone:
		d.Outcome = outcomeDone
	case dispatch.StatePending:
		d.Outcome, d.RetryAt = outcomeRetried, a.RetryAt
	case dispatch.StateFailed:
		d.Outcome = outcomeFailed
	default:
		return
	}
	if a.Err != nil {
		var se *webhook.StatusError
		if errors.As(a.Err, &se) {
			d.Status, d.ErrorClass = se.Code, strconv.Itoa(se.Code)
		} else {
			d.ErrorClass = errorClass(a.Err)
		}
	}
	for _, f := range s.deliveryObservers {
		f(d)
	}
}

// eventTime is when the event of this id arrived: ids are UUIDv7s, which
// carry their time to a quarter of a microsecond. A delivery's own
// creation time (fallback) is later when the fan-out waited for a worker.
func eventTime(id string, fallback time.Time) time.Time {
	u, err := uuid.Parse(id)
	if err != nil || u.Version() != 7 {
		return fallback
	}
	ms := int64(u[0])<<40 | int64(u[1])<<32 | int64(u[2])<<24 | int64(u[3])<<16 | int64(u[4])<<8 | int64(u[5])
	frac := int64(u[6]&0x0f)<<8 | int64(u[7]) // 256 ns units (github.com/google/uuid)
	t := time.Unix(0, ms*int64(time.Millisecond)+frac<<8)
	if t.After(fallback) {
		return fallback
	}
	return t
}

// StoreStats returns the store's counters.
func (s *Service) StoreStats() dispatch.StoreStats { return s.store.StoreStats() }

// --- ingest ---

// EnterIngest waits for the turn of a request of tenant, of bytes (-1: not
// told), to ingest, when
// other tenants send too (fairgate.go), and returns the function that ends
// it; call it before reading the request's body. An unknown tenant, or
// one scope does not cover, is not found; an error of ctx is the wait's.
// The wait, for the gate or for loading the tenant, ends after timeout;
// its deadline is set only when something waits, since a context with a
// deadline (a timer, and a child of the request's context) for every
// request that goes straight through cost single events ~4 % of fanout's
// CPU.
func (s *Service) EnterIngest(ctx context.Context, timeout time.Duration, scope Scope, tenant string, bytes int64) (leave func(), err error) {
	if !scope.Allows(tenant) {
		return nil, NotFound("no tenant with id %q", tenant)
	}
	t := s.tenants.cached(tenant)
	wait := timeout
	if t == nil {
		// The load and the gate share one timeout: what the load took,
		// the gate's queue does not get again.
		deadline := time.Now().Add(timeout)
		load, cancel := context.WithDeadline(ctx, deadline)
		t, err = s.tenants.get(load, tenant)
		cancel()
		if err != nil {
			return nil, err
		}
		wait = time.Until(deadline)
	}
	if !s.tenants.any() {
		return func() {}, nil // the default tenant alone: no one to share with, no gate's lock to take
	}
	return s.gate.enter(ctx, wait, t.Key, bytes)
}

// Ingest stores events atomically, each as a handleEvent call, and returns
// their ids in order once they are durable. An event whose idempotency key
// was seen within the dedup window is not stored again: its id is the
// original one. The key is the request's Idempotency-Key (with the event's
// index for a batch, so that a repeated batch is repeated whole), else the
// event's own "id" field.
//
// The events are tenant's (DefaultTenant without tenants), whose scope must
// allow it: they are routed to that tenant's destinations and to the
// operator's destinations of every tenant. A tenant over its ingest rate
// gets an *ErrTooMany and nothing is stored.
func (s *Service) Ingest(ctx context.Context, scope Scope, tenant string, events []json.RawMessage, idempotencyKey string) ([]string, error) {
	if !scope.Allows(tenant) {
		return nil, NotFound("no tenant with id %q", tenant)
	}
	t, err := s.tenants.get(ctx, tenant)
	if err != nil {
		return nil, err
	}
	if ok, wait := s.tenants.allow(t, len(events)); !ok {
		s.Metrics.tenantLimited.Add(float64(len(events)))
		return nil, &ErrTooMany{Tenant: tenant, RetryAfter: wait}
	}
	ids, err := s.ingest(ctx, t.Key, events, idempotencyKey)
	if err == nil {
		s.Accepted.Add(int64(len(ids)))
	}
	return ids, err
}

// ingest is Ingest without counting the events as accepted through the API
// (fanout's operational events come this way).
func (s *Service) ingest(ctx context.Context, tenantKey string, events []json.RawMessage, idempotencyKey string) (ids []string, err error) {
	var spans *createSpans
	if s.Tracing != nil {
		spans = s.Tracing.startCreate(ctx, len(events))
		defer func() { spans.end(ids, err) }()
	}
	batch := s.rt.Batch()
	for i, e := range events {
		call, err := s.fns.HandleEvent.BuildCall(e)
		if err != nil {
			return nil, err
		}
		f := EventFields(e)
		call.Tag = f.Type // for listings by type
		// The tenant's key: its history is a scan by key, and the
		// runtime shares its work fairly between keys.
		call.Key = tenantKey
		if spans != nil {
			// The event's trace context, which its deliveries inherit:
			// their attempts join the event's trace, wherever and
			// whenever they run.
			call.Meta = spans.start(i, f.Type)
		}
		// A repeat is a repeat within one tenant: another tenant's event
		// with the same id is its own.
		switch {
		case idempotencyKey != "" && len(events) == 1:
			call.DedupKey = "key:" + idempotencyKey
		case idempotencyKey != "":
			call.DedupKey = "key:" + idempotencyKey + "#" + strconv.Itoa(i)
		case f.ID != "":
			call.DedupKey = "id:" + f.ID
		}
		if call.DedupKey != "" && tenantKey != "" {
			call.DedupKey = tenantKey + "/" + call.DedupKey
		}
		batch.Add(call)
	}
	ids, err = batch.Dispatch(ctx)
	switch {
	case errors.Is(err, dispatch.ErrStopped):
		return nil, fmt.Errorf("%w: %w", ErrShuttingDown, err)
	case errors.Is(err, dispatch.ErrOutcomeUnknown):
		return nil, fmt.Errorf("%w: %w", ErrMaybeStored, err)
	}
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// Store is what fanout needs of a driver, every capability in one
// interface, so that the compiler checks each driver (both say so with
// var _ lines) and nothing recovers a capability by type assertion: the
// runtime's calls, the destinations and other documents beside them, the
// history's walk, and the counters of its work.
type Store interface {
	dispatch.Store
	dispatch.DocStore
	dispatch.HistoryStore
	dispatch.StatsReporter
}
