package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/webhook"
)

// service is what fanout offers, over the runtime, the store and the
// destinations: ingest, the views of events and deliveries, re-drive, and
// the destinations. It is the only code that turns runtime calls into
// fanout's words (an event is a handleEvent call without a parent, a
// delivery a publishEvent call keyed by its destination); the HTTP layer
// sees views and the errors below.
type service struct {
	rt    *dispatch.Runtime
	store dispatch.Store
	fns   *functions
	dests *destination.Registry
	// backlog counts the deliveries waiting in the store, for metrics.
	backlog *backlogCache
	// accepted counts the events ingest answered for (a repeat that was
	// dropped counts too).
	accepted atomic.Int64
	// attemptObservers are told of every attempt the runtime reports
	// (metrics, traces, the console's charts add theirs before Start).
	attemptObservers []func(dispatch.AttemptReport)

	// docs keeps the progress of replays (replay.go); replayFn is their
	// durable function.
	docs     dispatch.DocStore
	replayFn *dispatch.Function[replayJob, replayCount]
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
	// metrics is the Prometheus registry of /metrics.
	metrics *metrics
	// tracing makes the spans of ingest and deliveries; nil when tracing
	// is off.
	tracing *tracing
	// ready says whether this process is ready for traffic (/readyz).
	ready *readiness
}

// newService returns the service over a runtime that has not started: it
// registers the replay function with it, and watches attempts for stats.
func newService(rt *dispatch.Runtime, store dispatch.Store, fns *functions, dests *destination.Registry) *service {
	s := &service{rt: rt, store: store, fns: fns, dests: dests, backlog: newBacklogCache(store), started: time.Now().UTC(),
		metrics: newMetrics()}
	s.docs, _ = store.(dispatch.DocStore)
	s.replayFn = newReplayFunction(s)
	if err := rt.Register(s.replayFn); err != nil {
		panic("register the replay function: " + err.Error()) // only before Start, once: a wiring mistake
	}
	s.stats = newStatsRing(s)
	s.observeAttempts(s.stats.record)
	s.ready = newReadiness(s.storeAnswers)
	s.metrics.watch(s)
	s.observeAttempts(s.deliveryAttempted)
	s.observeDeliveries(s.metrics.attempted)
	return s
}

// Errors of the service, in the words of its callers; writeError gives each
// kind its HTTP status. A message says what is wrong and what to do.
var (
	errInvalid      = errors.New("invalid request")
	errNotFound     = errors.New("not found")
	errConflict     = errors.New("conflict")
	errShuttingDown = errors.New("shutting down")
	// errMaybeStored: the store lost the answer to its commit and could
	// not look afterwards; the events may be stored.
	errMaybeStored = errors.New("outcome unknown")
)

// serviceError is an error of one of the kinds above, with its message.
type serviceError struct {
	kind error
	msg  string
}

func (e *serviceError) Error() string { return e.msg }
func (e *serviceError) Unwrap() error { return e.kind }

func invalid(format string, args ...any) error {
	return &serviceError{errInvalid, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &serviceError{errNotFound, fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &serviceError{errConflict, fmt.Sprintf(format, args...)}
}

// observeAttempts adds f to what is told of every attempt; call it before
// the runtime starts.
func (s *service) observeAttempts(f func(dispatch.AttemptReport)) {
	s.attemptObservers = append(s.attemptObservers, f)
}

// attempted is the runtime's Config.OnAttempt.
func (s *service) attempted(a dispatch.AttemptReport) {
	for _, f := range s.attemptObservers {
		f(a)
	}
}

// observeDeliveries adds f to what is told of every delivery attempt; call
// it before the runtime starts.
func (s *service) observeDeliveries(f func(deliveryAttempt)) {
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
func (s *service) deliveryAttempted(a dispatch.AttemptReport) {
	c := a.Call
	if c.Function != s.fns.publishEvent.Name() || a.Snoozed || len(s.deliveryObservers) == 0 {
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

// StoreStats returns the store's counters, if it keeps them.
func (s *service) StoreStats() (dispatch.StoreStats, bool) {
	sr, ok := s.store.(dispatch.StatsReporter)
	if !ok {
		return dispatch.StoreStats{}, false
	}
	return sr.StoreStats(), true
}

// --- ingest ---

// Ingest stores events atomically, each as a handleEvent call, and returns
// their ids in order once they are durable. An event whose idempotency key
// was seen within the dedup window is not stored again: its id is the
// original one. The key is the request's Idempotency-Key (with the event's
// index for a batch, so that a repeated batch is repeated whole), else the
// event's own "id" field.
func (s *service) Ingest(ctx context.Context, events []json.RawMessage, idempotencyKey string) ([]string, error) {
	ids, err := s.ingest(ctx, events, idempotencyKey)
	if err == nil {
		s.accepted.Add(int64(len(ids)))
	}
	return ids, err
}

// ingest is Ingest without counting the events as accepted through the API
// (fanout's operational events come this way).
func (s *service) ingest(ctx context.Context, events []json.RawMessage, idempotencyKey string) (ids []string, err error) {
	var spans *createSpans
	if s.tracing != nil {
		spans = s.tracing.startCreate(ctx, len(events))
		defer func() { spans.end(ids, err) }()
	}
	batch := s.rt.Batch()
	for i, e := range events {
		call, err := s.fns.handleEvent.BuildCall(e)
		if err != nil {
			return nil, err
		}
		f := eventFields(e)
		call.Tag = f.Type // for listings by type
		if spans != nil {
			// The event's trace context, which its deliveries inherit:
			// their attempts join the event's trace, wherever and
			// whenever they run.
			call.Meta = spans.start(i, f.Type)
		}
		switch {
		case idempotencyKey != "" && len(events) == 1:
			call.DedupKey = "key:" + idempotencyKey
		case idempotencyKey != "":
			call.DedupKey = "key:" + idempotencyKey + "#" + strconv.Itoa(i)
		case f.ID != "":
			call.DedupKey = "id:" + f.ID
		}
		batch.Add(call)
	}
	ids, err = batch.Dispatch(ctx)
	switch {
	case errors.Is(err, dispatch.ErrStopped):
		return nil, fmt.Errorf("%w: %w", errShuttingDown, err)
	case errors.Is(err, dispatch.ErrOutcomeUnknown):
		return nil, fmt.Errorf("%w: %w", errMaybeStored, err)
	}
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// --- events and deliveries ---

// eventView is an event and the state of its deliveries.
type eventView struct {
	ID         string          `json:"id"`
	State      string          `json:"state"`
	ReceivedAt time.Time       `json:"received_at"`
	Error      string          `json:"error,omitempty"`
	Event      json.RawMessage `json:"event"`
	Deliveries []deliveryView  `json:"deliveries"`
}

// deliveryView is one delivery: an event for a destination.
type deliveryView struct {
	ID            string        `json:"id"`
	EventID       string        `json:"event_id"`
	DestinationID string        `json:"destination_id"`
	URL           string        `json:"url,omitempty"`
	State         string        `json:"state"`
	Attempts      int           `json:"attempts"`
	LastStatus    int           `json:"last_status,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	NextAttemptAt *time.Time    `json:"next_attempt_at,omitempty"`
	DeliveredAt   *time.Time    `json:"delivered_at,omitempty"`
	CreatedAt     time.Time     `json:"created_at"`
	UpdatedAt     time.Time     `json:"updated_at"`
	History       []attemptView `json:"attempt_history,omitempty"`
	// Replay is the replay job that created the delivery, if one did.
	Replay string `json:"replay,omitempty"`
}

// attemptView is one attempt of a delivery.
type attemptView struct {
	Attempt    int             `json:"attempt"`
	StartedAt  time.Time       `json:"started_at"`
	DurationMS float64         `json:"duration_ms"`
	Status     int             `json:"status,omitempty"`
	Error      string          `json:"error,omitempty"`
	Detail     json.RawMessage `json:"detail,omitempty"`
}

// eventStates and deliveryStates name the runtime's states in fanout's
// words: an event is pending until it is fanned out, delivering while it
// waits for its deliveries; a delivery is delivering while it runs.
var (
	eventStates    = map[dispatch.State]string{dispatch.StateWaiting: "delivering", dispatch.StateDone: "delivered", dispatch.StateFailed: "failed"}
	deliveryStates = map[dispatch.State]string{dispatch.StateRunning: "delivering", dispatch.StateDone: "delivered", dispatch.StateFailed: "failed"}
)

func eventState(s dispatch.State) string { return cmp.Or(eventStates[s], "pending") }

func deliveryState(s dispatch.State) string { return cmp.Or(deliveryStates[s], "pending") }

// parseDeliveryState is the inverse of deliveryState; no state is failed.
func parseDeliveryState(s string) (dispatch.State, error) {
	switch s {
	case "", "failed":
		return dispatch.StateFailed, nil
	case "pending":
		return dispatch.StatePending, nil
	}
	for state, name := range deliveryStates {
		if name == s {
			return state, nil
		}
	}
	return 0, invalid("state must be failed, pending, delivering or delivered, not %q", s)
}

// deliveryOutput reads what the destination answered to a delivery that
// succeeded.
func deliveryOutput(c *dispatch.Call) (Delivery, bool) {
	var out Delivery
	return out, c.State == dispatch.StateDone && json.Unmarshal(c.Output, &out) == nil
}

func (s *service) deliveryView(c *dispatch.Call) deliveryView {
	v := deliveryView{ID: c.ID, EventID: c.ParentID, DestinationID: c.Key, State: deliveryState(c.State),
		Attempts: c.Attempt, LastError: c.Error, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt}
	if d, ok := s.dests.Get(c.Key); ok {
		v.URL = d.URL
	}
	if job, ok := strings.CutPrefix(c.Tag, "replay:"); ok {
		v.Replay = job
	}
	switch c.State {
	case dispatch.StatePending:
		at := c.RunAfter
		v.NextAttemptAt = &at
	case dispatch.StateDone:
		at := c.UpdatedAt
		v.DeliveredAt = &at
		if out, ok := deliveryOutput(c); ok {
			v.LastStatus = out.StatusCode
		}
	}
	return v
}

// Event returns an event and, per destination, its delivery.
func (s *service) Event(ctx context.Context, id string) (*eventView, error) {
	c, err := s.store.CallGet(ctx, id)
	if errors.Is(err, dispatch.ErrNotFound) || (err == nil && (c.Function != s.fns.handleEvent.Name() || c.ParentID != "")) {
		return nil, notFound("no event with id %q (delivered events are deleted after --retention)", id)
	}
	if err != nil {
		return nil, err
	}
	children, err := s.store.CallListChildren(ctx, id)
	if err != nil {
		return nil, err
	}
	v := &eventView{ID: c.ID, State: eventState(c.State), ReceivedAt: c.CreatedAt, Event: json.RawMessage(c.Input),
		Deliveries: make([]deliveryView, 0, len(children))}
	if c.State == dispatch.StateFailed {
		v.Error = c.Error
	}
	for _, child := range children {
		v.Deliveries = append(v.Deliveries, s.deliveryView(child))
	}
	return v, nil
}

// deliveryFilter selects deliveries: the query of GET /v1/deliveries and
// the body of POST /v1/deliveries/retry.
type deliveryFilter struct {
	State       string `json:"state"`
	Destination string `json:"destination"`
	Since       string `json:"since"`
	Until       string `json:"until"`
}

func (s *service) listParams(f deliveryFilter) (*dispatch.CallListParams, error) {
	state, err := parseDeliveryState(f.State)
	if err != nil {
		return nil, err
	}
	p := &dispatch.CallListParams{Function: s.fns.publishEvent.Name(), State: state}
	if f.Destination != "" {
		p.Key = &f.Destination
	}
	for _, b := range []struct {
		name  string
		value string
		dst   *time.Time
	}{{"since", f.Since, &p.CreatedAfter}, {"until", f.Until, &p.CreatedBefore}} {
		if b.value == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, b.value)
		if err != nil {
			return nil, invalid("%s must be an RFC 3339 time like 2026-11-28T10:00:00Z, not %q", b.name, b.value)
		}
		*b.dst = t
	}
	return p, nil
}

// Deliveries returns a page of the deliveries f selects, in id order after
// cursor, and the cursor of the next page ("" on the last).
func (s *service) Deliveries(ctx context.Context, f deliveryFilter, cursor string, limit int) ([]deliveryView, string, error) {
	p, err := s.listParams(f)
	if err != nil {
		return nil, "", err
	}
	p.After, p.Limit = cursor, limit
	calls, err := s.store.CallList(ctx, p)
	if err != nil {
		return nil, "", err
	}
	out := make([]deliveryView, 0, len(calls))
	for _, c := range calls {
		out = append(out, s.deliveryView(c))
	}
	next := ""
	if len(calls) == limit {
		next = calls[len(calls)-1].ID
	}
	return out, next, nil
}

// delivery returns a delivery's call.
func (s *service) delivery(ctx context.Context, id string) (*dispatch.Call, error) {
	c, err := s.store.CallGet(ctx, id)
	if errors.Is(err, dispatch.ErrNotFound) || (err == nil && c.Function != s.fns.publishEvent.Name()) {
		return nil, notFound("no delivery with id %q", id)
	}
	return c, err
}

// Delivery returns a delivery with the history of its attempts.
func (s *service) Delivery(ctx context.Context, id string) (*deliveryView, error) {
	c, err := s.delivery(ctx, id)
	if err != nil {
		return nil, err
	}
	attempts, err := s.store.CallAttempts(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	v := s.deliveryView(c)
	for _, a := range attempts {
		av := attemptView{Attempt: a.Attempt, StartedAt: a.Started, DurationMS: float64(a.Duration.Microseconds()) / 1000,
			Error: a.Error, Detail: a.Detail}
		if d, ok := webhook.ParseAttemptDetail(a.Detail); ok {
			av.Status = d.StatusCode
		}
		v.History = append(v.History, av)
	}
	if len(v.History) > 0 && c.State != dispatch.StateDone {
		v.LastStatus = v.History[len(v.History)-1].Status
	}
	// A success is recorded in the call itself, not as an attempt.
	if out, ok := deliveryOutput(c); ok {
		detail, _ := json.Marshal(webhook.AttemptDetail{StatusCode: out.StatusCode, Excerpt: out.Excerpt})
		v.History = append(v.History, attemptView{Attempt: c.Attempt, StartedAt: c.UpdatedAt.Add(-out.Duration),
			DurationMS: float64(out.Duration.Microseconds()) / 1000, Status: out.StatusCode, Detail: detail})
	}
	return &v, nil
}

// RetryDelivery re-drives one failed delivery and returns its id.
func (s *service) RetryDelivery(ctx context.Context, id string) ([]string, error) {
	c, err := s.delivery(ctx, id)
	if err != nil {
		return nil, err
	}
	if c.State != dispatch.StateFailed {
		return nil, conflict("delivery %s is %s; only failed deliveries can be retried", c.ID, deliveryState(c.State))
	}
	done, err := s.rt.Redrive(ctx, []string{c.ID})
	if err != nil {
		return nil, err
	}
	if len(done) == 0 {
		return nil, conflict("delivery %s cannot be retried now: its event is finishing; try again in a moment", c.ID)
	}
	return done, nil
}

// maxRedrive bounds one bulk re-drive request; the answer says if more are left.
const maxRedrive = 100000

// RetryDeliveries re-drives the failed deliveries f selects, page by page,
// up to maxRedrive; more says that some are left.
func (s *service) RetryDeliveries(ctx context.Context, f deliveryFilter) (retried int, more bool, err error) {
	if f.State != "" && f.State != "failed" {
		return 0, false, invalid("only failed deliveries can be retried")
	}
	p, err := s.listParams(f)
	if err != nil {
		return 0, false, err
	}
	p.Limit = 1000
	for {
		calls, err := s.store.CallList(ctx, p)
		if err != nil {
			return retried, false, err
		}
		if len(calls) == 0 {
			return retried, false, nil
		}
		ids := make([]string, len(calls))
		for i, c := range calls {
			ids[i] = c.ID
		}
		done, err := s.rt.Redrive(ctx, ids)
		if err != nil {
			return retried, false, err
		}
		retried += len(done)
		p.After = calls[len(calls)-1].ID
		if len(calls) < p.Limit {
			return retried, false, nil
		}
		if retried >= maxRedrive {
			return retried, true, nil
		}
	}
}

// --- destinations ---

// destinationInput is a change to a destination, as POST and PATCH
// /v1/destinations send it: a field that is absent is left as it is (or
// defaulted, on creation).
type destinationInput struct {
	URL            *string                    `json:"url"`
	Description    *string                    `json:"description"`
	Enabled        *bool                      `json:"enabled"`
	Filter         *[]string                  `json:"filter"`
	Secret         *string                    `json:"secret"`
	MaxConcurrency *int                       `json:"max_concurrency"`
	RateLimit      *float64                   `json:"rate_limit"`
	Headers        *map[string]string         `json:"headers"`
	Retry          *destination.RetrySettings `json:"retry"`
	Paused         *bool                      `json:"paused"`
}

// check refuses what apply would read wrong: a zero max_concurrency is
// not "the default" (leave it out for that), and the destination's own
// validation would take it for absent.
func (in *destinationInput) check() error {
	if in.MaxConcurrency != nil && *in.MaxConcurrency < 1 {
		return invalid("max_concurrency must be between 1 and %d; leave it out for the default (%d)",
			destination.MaxConcurrency, destination.DefaultConcurrency)
	}
	return nil
}

func (in *destinationInput) apply(d *destination.Destination) {
	set(&d.URL, in.URL)
	set(&d.Description, in.Description)
	if in.Enabled != nil && *in.Enabled != d.Enabled {
		// Enabled again: why it was disabled no longer holds. Disabled
		// by a person: the reason fanout had (a breaker's) is not theirs.
		d.Reason = ""
	}
	set(&d.Enabled, in.Enabled)
	set(&d.Filter, in.Filter)
	set(&d.Secret, in.Secret)
	set(&d.MaxConcurrency, in.MaxConcurrency)
	set(&d.RateLimit, in.RateLimit)
	set(&d.Headers, in.Headers)
	if in.Retry != nil {
		d.Retry = in.Retry
		if *in.Retry == (destination.RetrySettings{}) {
			d.Retry = nil // {} goes back to the default policy
		}
	}
	set(&d.Paused, in.Paused)
	if in.Paused != nil && !d.Paused {
		d.CircuitOpenUntil, d.Reason = nil, ""
	}
}

// set sets *dst to *v when v is given.
func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// destinationError says a registry error in the service's words.
func destinationError(id string, err error) error {
	var de *destination.Error
	switch {
	case errors.As(err, &de):
		return invalid("%s", de.Error())
	case errors.Is(err, destination.ErrNotFound):
		return notFound("no destination with id %q", id)
	case errors.Is(err, destination.ErrExists):
		return conflict("a destination with this id exists")
	}
	return err
}

// Destinations returns every destination, ordered by id.
func (s *service) Destinations() []*destination.Destination {
	list := s.dests.List()
	if list == nil {
		list = []*destination.Destination{}
	}
	return list
}

// Destination returns one destination.
func (s *service) Destination(id string) (*destination.Destination, error) {
	d, ok := s.dests.Get(id)
	if !ok {
		return nil, destinationError(id, destination.ErrNotFound)
	}
	return d, nil
}

// CreateDestination creates a destination, enabled unless in says otherwise.
func (s *service) CreateDestination(ctx context.Context, in *destinationInput) (*destination.Destination, error) {
	if in.URL == nil {
		return nil, invalid("url is required")
	}
	if err := in.check(); err != nil {
		return nil, err
	}
	d := &destination.Destination{Enabled: true}
	in.apply(d)
	if err := s.dests.Create(ctx, d); err != nil {
		return nil, destinationError(d.ID, err)
	}
	return d, nil
}

// UpdateDestination applies a change to a destination.
func (s *service) UpdateDestination(ctx context.Context, id string, in *destinationInput) (*destination.Destination, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	d, err := s.dests.Update(ctx, id, func(d *destination.Destination) error {
		in.apply(d)
		return nil
	})
	return d, destinationError(id, err)
}

// DeleteDestination deletes a destination; its pending deliveries fail for
// good when they next run.
func (s *service) DeleteDestination(ctx context.Context, id string) error {
	return destinationError(id, s.dests.Delete(ctx, id))
}

// ResumeDestination lifts a pause, by a person or by the breaker: the same
// as PATCH {"paused": false}.
func (s *service) ResumeDestination(ctx context.Context, id string) (*destination.Destination, error) {
	unpause := false
	return s.UpdateDestination(ctx, id, &destinationInput{Paused: &unpause})
}

// RotateSecret gives a destination a new secret; the old one keeps signing
// for the grace period.
func (s *service) RotateSecret(ctx context.Context, id string) (*destination.Destination, error) {
	d, err := s.dests.Update(ctx, id, func(d *destination.Destination) error {
		d.Secret = webhook.GenerateSecret()
		return nil
	})
	return d, destinationError(id, err)
}
