package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/webhook"
)

// Limits bound what one request may carry. A request over a limit is refused
// whole with 413, naming the limit and the flag that sets it.
type Limits struct {
	MaxEventBytes  int64
	MaxBatchBytes  int64
	MaxBatchEvents int
	// IngestTimeout bounds how long a request waits for the store to take
	// its events; past it the answer is 503 and nothing is stored.
	IngestTimeout time.Duration
}

// route is one entry of the API.
type route struct {
	pattern string // "METHOD /path"
	handler http.Handler
}

// routes is the whole API surface.
func routes(log *slog.Logger, svc *service, limits Limits) []route {
	return []route{
		{"POST /v1/event", handleEventPost(log, svc, limits)},
		{"POST /v1/batch", handleBatchPost(log, svc, limits)},
		{"GET /v1/events/{id}", handleEventGet(log, svc)},
		{"POST /v1/destinations", handleDestinationCreate(log, svc)},
		{"GET /v1/destinations", handleDestinationList(log, svc)},
		{"GET /v1/destinations/{id}", handleDestinationGet(log, svc)},
		{"PATCH /v1/destinations/{id}", handleDestinationPatch(log, svc)},
		{"DELETE /v1/destinations/{id}", handleDestinationDelete(log, svc)},
		{"POST /v1/destinations/{id}/resume", handleDestinationResume(log, svc)},
		{"POST /v1/destinations/{id}/rotate-secret", handleDestinationRotate(log, svc)},
		{"GET /v1/deliveries", handleDeliveryList(log, svc)},
		{"GET /v1/deliveries/{id}", handleDeliveryGet(log, svc)},
		{"POST /v1/deliveries/{id}/retry", handleDeliveryRetry(log, svc)},
		{"POST /v1/deliveries/retry", handleDeliveryRetryMany(log, svc)},
		{"GET /healthz", handleHealthz()},
		{"GET /metrics", handleMetrics(svc)},
	}
}

// newHandler returns the HTTP API; with tokens, only for requests that
// carry one of them.
func newHandler(log *slog.Logger, svc *service, limits Limits, tokens []string) http.Handler {
	rs := routes(log, svc, limits)
	svc.requests = newRequestStats(rs)
	svc.backlog = newBacklogCache(svc.store)
	mux := http.NewServeMux()
	addRoutes(mux, rs)
	return svc.requests.count(recoverPanics(log, requireToken(log, tokens, mux)))
}

// requestStats counts the API's answers by route and status class, for
// /metrics.
type requestStats struct {
	patterns []string                    // the routes' patterns, then "other"
	answers  map[string]*[5]atomic.Int64 // by pattern, by status class 1xx-5xx
	events   atomic.Int64                // events in 2xx answers of /v1/event and /v1/batch
}

func newRequestStats(rs []route) *requestStats {
	s := &requestStats{answers: make(map[string]*[5]atomic.Int64, len(rs)+1)}
	for _, rt := range rs {
		s.patterns = append(s.patterns, rt.pattern)
	}
	s.patterns = append(s.patterns, "other")
	for _, p := range s.patterns {
		s.answers[p] = new([5]atomic.Int64)
	}
	return s
}

// count counts next's answers under the pattern the mux matched, which it
// leaves in r.Pattern; a request no route took (404, 405, 401) is "other".
// The map is read-only once built: no lock on the request path.
func (s *requestStats) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		counts := s.answers[r.Pattern]
		if counts == nil {
			counts = s.answers["other"]
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		if c := status/100 - 1; c >= 0 && c < 5 {
			counts[c].Add(1)
		}
	})
}

// backlogCache holds the last count of pending deliveries by destination.
// Counting reads the whole index of pending calls (76 ns per waiting call on
// SQLite), so it runs at most every maxAge, in the background, one at a
// time, and a scrape serves the last count with its age. Only the first
// scrape waits for a count, and not longer than firstWait.
type backlogCache struct {
	store     dispatch.Store
	maxAge    time.Duration
	firstWait time.Duration

	mu      sync.Mutex
	counts  map[string]int64
	at      time.Time     // when counts were read; zero before the first count
	err     error         // the last count's error
	running chan struct{} // closed when the count under way ends; nil if none
}

const backlogMaxAge = 10 * time.Second

func newBacklogCache(store dispatch.Store) *backlogCache {
	return &backlogCache{store: store, maxAge: backlogMaxAge, firstWait: 2 * time.Second}
}

// get returns the last counts, when they were read, and the last count's
// error, starting a new count if they are older than maxAge.
func (c *backlogCache) get(now time.Time) (map[string]int64, time.Time, error) {
	c.mu.Lock()
	if c.running == nil && now.Sub(c.at) >= c.maxAge {
		c.running = make(chan struct{})
		go c.refresh(c.running)
	}
	running, first := c.running, c.at.IsZero()
	c.mu.Unlock()
	if first && running != nil {
		select {
		case <-running:
		case <-time.After(c.firstWait):
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts, c.at, c.err
}

func (c *backlogCache) refresh(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	backlog, err := c.store.CallBacklog(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	if err == nil {
		c.counts = make(map[string]int64, len(backlog))
		for _, k := range backlog {
			c.counts[k.Key] = k.N
		}
		c.at = time.Now()
	}
	c.running = nil
	close(done)
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

// requireToken answers 401 to a request that does not carry one of tokens
// as its bearer token, but for /healthz and /metrics, left open to probes
// and scrapers. Several tokens let an operator rotate one without downtime.
// They are compared as SHA-256 digests in constant time, so that timing
// tells neither a token's bytes nor its length.
func requireToken(log *slog.Logger, tokens []string, next http.Handler) http.Handler {
	if len(tokens) == 0 {
		return next
	}
	sums := make([][sha256.Size]byte, len(tokens))
	for i, t := range tokens {
		sums[i] = sha256.Sum256([]byte(t))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
			next.ServeHTTP(w, r)
			return
		}
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized,
				Message: "this API needs a token: send the header Authorization: Bearer <token>, with one of fanout's --api-token"})
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		match := 0
		for i := range sums {
			match |= subtle.ConstantTimeCompare(sum[:], sums[i][:])
		}
		if match != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout", error="invalid_token"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized,
				Message: "the bearer token is not one of fanout's --api-token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// addRoutes mounts the routes, and answers in JSON, like every other
// answer, 405 naming the allowed methods on a known path and 404 elsewhere.
// The paths without their methods go on a mux of their own, consulted only
// for what no route took: on the main mux they would clash with the routes
// ("/v1/deliveries/retry" against "GET /v1/deliveries/{id}").
func addRoutes(mux *http.ServeMux, rs []route) {
	methods := map[string][]string{}
	var paths []string
	for _, rt := range rs {
		mux.Handle(rt.pattern, rt.handler)
		method, path, _ := strings.Cut(rt.pattern, " ")
		if _, ok := methods[path]; !ok {
			paths = append(paths, path)
		}
		methods[path] = append(methods[path], method)
	}
	known := http.NewServeMux()
	for _, path := range paths {
		known.Handle(path, methodNotAllowed(strings.Join(methods[path], ", ")))
	}
	notFound := handleNotFound()
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := known.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		notFound.ServeHTTP(w, r)
	}))
}

// handleEventPost accepts one event: a JSON object.
func handleEventPost(log *slog.Logger, svc *service, limits Limits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := idempotencyKey(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		body, err := readBody(w, r, limits.MaxEventBytes, "--max-event-bytes")
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if err := validateEvent(body); err != nil {
			writeError(w, r, log, badRequest("request body: %v", err))
			return
		}
		// The event is the JSON value, byte for byte; white space around
		// it is not part of it (and a batch element has none).
		body = bytes.Trim(body, " \t\r\n")
		ids, err := ingestWithTimeout(r, svc, limits, []json.RawMessage{body}, key)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		svc.requests.events.Add(1)
		// Ids are UUIDs: nothing to escape. This is the hot path.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"id":"`+ids[0]+`"}`+"\n")
	})
}

// handleBatchPost accepts a JSON array of events, atomically: every event is
// stored, or none is.
func handleBatchPost(log *slog.Logger, svc *service, limits Limits) http.Handler {
	type response struct {
		IDs []string `json:"ids"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := idempotencyKey(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		body, err := readBody(w, r, limits.MaxBatchBytes, "--max-batch-bytes")
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		events, err := decodeBatch(body, limits)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		ids, err := ingestWithTimeout(r, svc, limits, events, key)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		svc.requests.events.Add(int64(len(ids)))
		writeJSON(w, http.StatusAccepted, response{IDs: ids})
	})
}

// idempotencyKey returns the request's Idempotency-Key, checked.
func idempotencyKey(r *http.Request) (string, error) {
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 255 || strings.ContainsFunc(key, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
		return "", badRequest("Idempotency-Key must be up to 255 printable ASCII characters without spaces")
	}
	return key, nil
}

// ingestWithTimeout stores events under the ingest timeout. A client that
// hangs up does not cancel a commit under way: its events may be stored,
// which is the at-least-once side of the bargain, never the lossy one.
func ingestWithTimeout(r *http.Request, svc *service, limits Limits, events []json.RawMessage, key string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), limits.IngestTimeout)
	defer cancel()
	return svc.ingest(ctx, events, key)
}

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

func eventState(s dispatch.State) string {
	switch s {
	case dispatch.StateWaiting:
		return "delivering"
	case dispatch.StateDone:
		return "delivered"
	case dispatch.StateFailed:
		return "failed"
	}
	return "pending" // not fanned out yet
}

func deliveryState(s dispatch.State) string {
	switch s {
	case dispatch.StateRunning:
		return "delivering"
	case dispatch.StateDone:
		return "delivered"
	case dispatch.StateFailed:
		return "failed"
	}
	return "pending"
}

// parseDeliveryState is the inverse of deliveryState.
func parseDeliveryState(s string) (dispatch.State, error) {
	switch s {
	case "", "failed":
		return dispatch.StateFailed, nil
	case "pending":
		return dispatch.StatePending, nil
	case "delivering":
		return dispatch.StateRunning, nil
	case "delivered":
		return dispatch.StateDone, nil
	}
	return 0, badRequest("state must be failed, pending, delivering or delivered, not %q", s)
}

func (svc *service) deliveryView(c *dispatch.Call) deliveryView {
	v := deliveryView{ID: c.ID, EventID: c.ParentID, DestinationID: c.Key, State: deliveryState(c.State),
		Attempts: c.Attempt, LastError: c.Error, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt}
	if d, ok := svc.dests.Get(c.Key); ok {
		v.URL = d.URL
	}
	switch c.State {
	case dispatch.StatePending:
		at := c.RunAfter
		v.NextAttemptAt = &at
	case dispatch.StateDone:
		at := c.UpdatedAt
		v.DeliveredAt = &at
		var out Delivery
		if json.Unmarshal(c.Output, &out) == nil {
			v.LastStatus = out.StatusCode
		}
	}
	return v
}

// handleEventGet shows an event and, per destination, its delivery.
func handleEventGet(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		c, err := svc.store.CallGet(r.Context(), id)
		if errors.Is(err, dispatch.ErrNotFound) || (err == nil && (c.Function != svc.fns.handleEvent.Name() || c.ParentID != "")) {
			writeError(w, r, log, notFound("no event with id %q (delivered events are deleted after --retention)", id))
			return
		}
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		children, err := svc.store.CallListChildren(r.Context(), id)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		v := eventView{ID: c.ID, State: eventState(c.State), ReceivedAt: c.CreatedAt, Event: json.RawMessage(c.Input),
			Deliveries: make([]deliveryView, 0, len(children))}
		if c.State == dispatch.StateFailed {
			v.Error = c.Error
		}
		for _, child := range children {
			v.Deliveries = append(v.Deliveries, svc.deliveryView(child))
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// destinationInput is the body of POST and PATCH /v1/destinations: a field
// that is absent is left as it is (or defaulted, on creation).
type destinationInput struct {
	URL            *string                  `json:"url"`
	Description    *string                  `json:"description"`
	Enabled        *bool                    `json:"enabled"`
	Filter         *[]string                `json:"filter"`
	Secret         *string                  `json:"secret"`
	MaxConcurrency *int                     `json:"max_concurrency"`
	RateLimit      *float64                 `json:"rate_limit"`
	Headers        *map[string]string       `json:"headers"`
	Retry          *destination.RetryPolicy `json:"retry"`
	Paused         *bool                    `json:"paused"`
}

func (in *destinationInput) apply(d *destination.Destination) {
	if in.URL != nil {
		d.URL = *in.URL
	}
	if in.Description != nil {
		d.Description = *in.Description
	}
	if in.Enabled != nil {
		if *in.Enabled && !d.Enabled {
			d.Reason = ""
		}
		d.Enabled = *in.Enabled
	}
	if in.Filter != nil {
		d.Filter = *in.Filter
	}
	if in.Secret != nil {
		d.Secret = *in.Secret
	}
	if in.MaxConcurrency != nil {
		d.MaxConcurrency = *in.MaxConcurrency
	}
	if in.RateLimit != nil {
		d.RateLimit = *in.RateLimit
	}
	if in.Headers != nil {
		d.Headers = *in.Headers
	}
	if in.Retry != nil {
		d.Retry = in.Retry
		if *in.Retry == (destination.RetryPolicy{}) {
			d.Retry = nil // {} goes back to the default policy
		}
	}
	if in.Paused != nil {
		d.Paused = *in.Paused
		if !d.Paused {
			d.CircuitOpenUntil, d.Reason = nil, ""
		}
	}
}

// decodeInput reads a JSON object body of at most 64 KiB into v, refusing
// unknown fields by name.
func decodeInput(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r, 64<<10, "a fixed limit")
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %s", jsonError(err))
	}
	if dec.More() {
		return badRequest("request body: unexpected data after the JSON object")
	}
	return nil
}

func handleDestinationCreate(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in destinationInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		if in.URL == nil {
			writeError(w, r, log, badRequest("url is required"))
			return
		}
		d := &destination.Destination{Enabled: true}
		in.apply(d)
		if err := svc.dests.Create(r.Context(), d); err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", "/v1/destinations/"+d.ID)
		writeJSON(w, http.StatusCreated, d)
	})
}

func handleDestinationList(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		list := svc.dests.List()
		if list == nil {
			list = []*destination.Destination{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"destinations": list})
	})
}

func handleDestinationGet(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, ok := svc.dests.Get(r.PathValue("id"))
		if !ok {
			writeError(w, r, log, destination.ErrNotFound)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

func handleDestinationPatch(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in destinationInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		d, err := svc.dests.Update(r.Context(), r.PathValue("id"), func(d *destination.Destination) error {
			in.apply(d)
			return nil
		})
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

func handleDestinationDelete(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := svc.dests.Delete(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// handleDestinationResume lifts a pause, by a person or by the breaker.
func handleDestinationResume(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		unpause := false
		d, err := svc.dests.Update(r.Context(), r.PathValue("id"), func(d *destination.Destination) error {
			(&destinationInput{Paused: &unpause}).apply(d) // the same as PATCH {"paused": false}
			return nil
		})
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

// handleDestinationRotate gives a destination a new secret; the old one
// keeps signing for the grace period.
func handleDestinationRotate(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := svc.dests.Update(r.Context(), r.PathValue("id"), func(d *destination.Destination) error {
			d.Secret = webhook.GenerateSecret()
			return nil
		})
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

// deliveryFilter is the query of GET /v1/deliveries and the body of POST
// /v1/deliveries/retry.
type deliveryFilter struct {
	State       string `json:"state"`
	Destination string `json:"destination"`
	Since       string `json:"since"`
	Until       string `json:"until"`
}

func (f *deliveryFilter) params(svc *service) (*dispatch.CallListParams, error) {
	state, err := parseDeliveryState(f.State)
	if err != nil {
		return nil, err
	}
	p := &dispatch.CallListParams{Function: svc.fns.publishEvent.Name(), State: state}
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
			return nil, badRequest("%s must be an RFC 3339 time like 2026-11-28T10:00:00Z, not %q", b.name, b.value)
		}
		*b.dst = t
	}
	return p, nil
}

// handleDeliveryList lists deliveries, the failed ones (the dead letters) by
// default, page by page.
func handleDeliveryList(log *slog.Logger, svc *service) http.Handler {
	type response struct {
		Deliveries []deliveryView `json:"deliveries"`
		NextCursor string         `json:"next_cursor,omitempty"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := deliveryFilter{State: q.Get("state"), Destination: q.Get("destination"), Since: q.Get("since"), Until: q.Get("until")}
		p, err := f.params(svc)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		p.Limit = 100
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 1000 {
				writeError(w, r, log, badRequest("limit must be a number from 1 to 1000"))
				return
			}
			p.Limit = n
		}
		p.After = q.Get("cursor")
		calls, err := svc.store.CallList(r.Context(), p)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		resp := response{Deliveries: make([]deliveryView, 0, len(calls))}
		for _, c := range calls {
			resp.Deliveries = append(resp.Deliveries, svc.deliveryView(c))
		}
		if len(calls) == p.Limit {
			resp.NextCursor = calls[len(calls)-1].ID
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// getDelivery returns a delivery call, or a 404.
func (svc *service) getDelivery(ctx context.Context, id string) (*dispatch.Call, error) {
	c, err := svc.store.CallGet(ctx, id)
	if errors.Is(err, dispatch.ErrNotFound) || (err == nil && c.Function != svc.fns.publishEvent.Name()) {
		return nil, notFound("no delivery with id %q", id)
	}
	return c, err
}

// handleDeliveryGet shows a delivery and every failed attempt.
func handleDeliveryGet(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := svc.getDelivery(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		attempts, err := svc.store.CallAttempts(r.Context(), c.ID)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		v := svc.deliveryView(c)
		for _, a := range attempts {
			av := attemptView{Attempt: a.Attempt, StartedAt: a.Started, DurationMS: float64(a.Duration.Microseconds()) / 1000,
				Error: a.Error, Detail: a.Detail}
			var detail struct {
				StatusCode int `json:"status_code"`
			}
			if json.Unmarshal(a.Detail, &detail) == nil {
				av.Status = detail.StatusCode
			}
			v.History = append(v.History, av)
		}
		if len(v.History) > 0 && c.State != dispatch.StateDone {
			v.LastStatus = v.History[len(v.History)-1].Status
		}
		if c.State == dispatch.StateDone {
			var out Delivery
			if json.Unmarshal(c.Output, &out) == nil {
				v.History = append(v.History, attemptView{Attempt: c.Attempt, StartedAt: c.UpdatedAt.Add(-out.Duration),
					DurationMS: float64(out.Duration.Microseconds()) / 1000, Status: out.StatusCode})
			}
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// handleDeliveryRetry re-drives one failed delivery.
func handleDeliveryRetry(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := svc.getDelivery(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if c.State != dispatch.StateFailed {
			writeError(w, r, log, &apiError{Status: http.StatusConflict,
				Message: fmt.Sprintf("delivery %s is %s; only failed deliveries can be retried", c.ID, deliveryState(c.State))})
			return
		}
		done, err := svc.rt.Redrive(r.Context(), []string{c.ID})
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if len(done) == 0 {
			writeError(w, r, log, &apiError{Status: http.StatusConflict,
				Message: fmt.Sprintf("delivery %s cannot be retried now: its event is finishing; try again in a moment", c.ID)})
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"retried": done})
	})
}

// maxRedrive bounds one bulk re-drive request; the answer says if more are left.
const maxRedrive = 100000

// handleDeliveryRetryMany re-drives the failed deliveries of a destination
// (or of all) created in a time range.
func handleDeliveryRetryMany(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var f deliveryFilter
		if err := decodeInput(w, r, &f); err != nil {
			writeError(w, r, log, err)
			return
		}
		if f.State != "" && f.State != "failed" {
			writeError(w, r, log, badRequest("only failed deliveries can be retried"))
			return
		}
		p, err := f.params(svc)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		p.Limit = 1000
		retried, more := 0, false
		for {
			calls, err := svc.store.CallList(r.Context(), p)
			if err != nil {
				writeError(w, r, log, err)
				return
			}
			if len(calls) == 0 {
				break
			}
			ids := make([]string, len(calls))
			for i, c := range calls {
				ids[i] = c.ID
			}
			done, err := svc.rt.Redrive(r.Context(), ids)
			if err != nil {
				writeError(w, r, log, err)
				return
			}
			retried += len(done)
			p.After = calls[len(calls)-1].ID
			if len(calls) < p.Limit {
				break
			}
			if retried >= maxRedrive {
				more = true
				break
			}
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"retried": retried, "more": more})
	})
}

// handleMetrics writes the runtime's counters and each destination's state in
// the Prometheus text format. They are read from memory, but for the
// backlog, which a backlogCache counts in the background.
func handleMetrics(svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		metric := func(name, kind, help string) {
			fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
		}
		metric("fanout_http_requests_total", "counter", "Answers of the API by route and status class (route \"other\": no route took the request).")
		for _, p := range svc.requests.patterns {
			for c := range svc.requests.answers[p] {
				// 1xx and 3xx only once they happened (a redirect
				// to a cleaned path): the API answers neither.
				if n := svc.requests.answers[p][c].Load(); n > 0 || c == 1 || c >= 3 {
					fmt.Fprintf(&b, "fanout_http_requests_total{route=%q,code=\"%dxx\"} %d\n", p, c+1, n)
				}
			}
		}
		metric("fanout_events_accepted_total", "counter", "Events in 2xx answers of /v1/event and /v1/batch (a repeat that was dropped counts too).")
		fmt.Fprintf(&b, "fanout_events_accepted_total %d\n", svc.requests.events.Load())
		st := svc.rt.Stats()
		metric("fanout_attempts_total", "counter", "Attempts of calls (fan-outs and deliveries) by outcome.")
		fmt.Fprintf(&b, "fanout_attempts_total{outcome=\"done\"} %d\n", st.Done)
		fmt.Fprintf(&b, "fanout_attempts_total{outcome=\"retried\"} %d\n", st.Retried)
		fmt.Fprintf(&b, "fanout_attempts_total{outcome=\"failed\"} %d\n", st.Failed)
		metric("fanout_claimed_total", "counter", "Calls claimed from the store's backlog.")
		fmt.Fprintf(&b, "fanout_claimed_total %d\n", st.Claimed)
		metric("fanout_leased_on_create_total", "counter", "Calls run without a claim: leased as they were stored.")
		fmt.Fprintf(&b, "fanout_leased_on_create_total %d\n", st.LeasedOnCreate)
		commits, ops := int64(-1), int64(0)
		if sr, ok := svc.store.(dispatch.StatsReporter); ok {
			st := sr.StoreStats()
			commits, ops = st.Commits, st.Ops
			if _, pg := svc.store.(dispatch.Notifier); pg {
				metric("fanout_store_connection_waits_total", "counter", "PostgreSQL connections a caller had to wait for.")
				fmt.Fprintf(&b, "fanout_store_connection_waits_total %d\n", st.ConnWaits)
			}
		}
		if commits >= 0 {
			metric("fanout_store_commits_total", "counter", "Group commits of the store's writer.")
			fmt.Fprintf(&b, "fanout_store_commits_total %d\n", commits)
			metric("fanout_store_operations_total", "counter", "Operations those commits carried.")
			fmt.Fprintf(&b, "fanout_store_operations_total %d\n", ops)
		}
		metric("fanout_results_from_memory_total", "counter", "Resumed events that found their deliveries' results in memory (the rest read the store).")
		fmt.Fprintf(&b, "fanout_results_from_memory_total %d\n", st.ResultsFromMemory)
		dests := svc.dests.List()
		now := time.Now()
		// The backlog comes from the store, shared by every replica, and is
		// read at most every backlogMaxAge, in the background: a scrape
		// never waits on a slow count, and many scrapes cost one count.
		pending, at, err := svc.backlog.get(now)
		metric("fanout_store_up", "gauge", "1 if the last count of the backlog could read the store, else 0.")
		if err != nil || at.IsZero() {
			b.WriteString("fanout_store_up 0\n")
		} else {
			b.WriteString("fanout_store_up 1\n")
		}
		if !at.IsZero() {
			metric("fanout_destination_backlog", "gauge", "Deliveries to a destination waiting in the store (new ones and retries waiting for their time), over all replicas, as of fanout_backlog_age_seconds ago.")
			for _, d := range dests {
				fmt.Fprintf(&b, "fanout_destination_backlog{destination=%q} %d\n", d.ID, pending[d.ID])
			}
			metric("fanout_backlog_age_seconds", "gauge", "How old fanout_destination_backlog is: it grows when the store cannot be read or the count is slow.")
			fmt.Fprintf(&b, "fanout_backlog_age_seconds %.3f\n", time.Since(at).Seconds())
		}
		metric("fanout_destination_in_flight", "gauge", "Deliveries in flight to a destination in this process.")
		for _, d := range dests {
			fmt.Fprintf(&b, "fanout_destination_in_flight{destination=%q} %d\n", d.ID, svc.rt.KeyStatus(d.ID).InFlight)
		}
		metric("fanout_destination_concurrency_limit", "gauge", "The adaptive limit of deliveries in flight to a destination.")
		for _, d := range dests {
			fmt.Fprintf(&b, "fanout_destination_concurrency_limit{destination=%q} %g\n", d.ID, svc.rt.KeyStatus(d.ID).Limit)
		}
		metric("fanout_destination_failures_in_a_row", "gauge", "Failed attempts in a row to a destination (the circuit breaker's count).")
		for _, d := range dests {
			fmt.Fprintf(&b, "fanout_destination_failures_in_a_row{destination=%q} %d\n", d.ID, svc.rt.KeyStatus(d.ID).Failures)
		}
		metric("fanout_destination_paused", "gauge", "1 if a destination's deliveries are held back (disabled, paused, or its breaker open).")
		for _, d := range dests {
			paused := 0
			if d.PausedAt(now) {
				paused = 1
			}
			fmt.Fprintf(&b, "fanout_destination_paused{destination=%q} %d\n", d.ID, paused)
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, b.String())
	})
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{
			Error: fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, allow),
		})
	})
}

func handleNotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{
			Error: fmt.Sprintf("no route for %s %s; the API is described in openapi.yaml", r.Method, r.URL.Path),
		})
	})
}

// readBody reads the whole request body, refusing with 413 one over limit.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, flag string) ([]byte, error) {
	tooLarge := &apiError{Status: http.StatusRequestEntityTooLarge,
		Message: fmt.Sprintf("request body is larger than the limit of %d bytes (%s)", limit, flag)}
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		return readGzip(w, r, limit, tooLarge)
	default:
		return nil, &apiError{Status: http.StatusUnsupportedMediaType,
			Message: fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed or gzip", enc)}
	}
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	var b []byte
	var err error
	if r.ContentLength > 0 {
		// The common case: read exactly the announced length, in one
		// allocation, then make sure nothing follows.
		b = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, b)
		if err == nil {
			var extra [1]byte
			if n, _ := body.Read(extra[:]); n > 0 {
				err = errors.New("body longer than its Content-Length")
			}
		}
	} else {
		b, err = io.ReadAll(body)
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge
	case err != nil:
		return nil, badRequest("could not read the request body: %v", err)
	case len(b) == 0:
		return nil, badRequest("request body is empty")
	}
	return b, nil
}

// readGzip reads a gzip request body. The limit holds for the body as sent
// and again for it decompressed, so that a small bomb cannot fill memory;
// what is stored and delivered is the decompressed JSON.
func readGzip(w http.ResponseWriter, r *http.Request, limit int64, tooLarge *apiError) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	zr, err := gzip.NewReader(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, tooLarge
	}
	if err != nil {
		return nil, badRequest("request body is not valid gzip: %v", err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, limit+1))
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge
	case err != nil:
		return nil, badRequest("request body is not valid gzip: %v", err)
	case int64(len(b)) > limit:
		return nil, &apiError{Status: http.StatusRequestEntityTooLarge,
			Message: "decompressed " + tooLarge.Message}
	case len(b) == 0:
		return nil, badRequest("request body is empty")
	}
	return b, nil
}

// decodeBatch splits a JSON array into its events, keeping each element's
// bytes exactly, and checks every limit before anything is stored.
func decodeBatch(body []byte, limits Limits) ([]json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, badRequest("request body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return nil, badRequest("request body is not valid JSON: %s", jsonError(err))
	}
	if tok != json.Delim('[') {
		return nil, badRequest("a batch must be a JSON array of event objects, got %s", jsonKind(body))
	}
	events := make([]json.RawMessage, 0, min(limits.MaxBatchEvents, 1024))
	for dec.More() {
		i := len(events)
		if i == limits.MaxBatchEvents {
			return nil, &apiError{Status: http.StatusRequestEntityTooLarge,
				Message: fmt.Sprintf("batch has more than %d events, the limit (--max-batch-events)", limits.MaxBatchEvents)}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, badIndex(i, "event %d is not valid JSON: %s", i, jsonError(err))
		}
		if kind := jsonKind(raw); kind != "an object" {
			return nil, badIndex(i, "event %d must be a JSON object, got %s", i, kind)
		}
		if int64(len(raw)) > limits.MaxEventBytes {
			e := badIndex(i, "event %d is %d bytes, over the limit of %d (--max-event-bytes)", i, len(raw), limits.MaxEventBytes)
			e.Status = http.StatusRequestEntityTooLarge
			return nil, e
		}
		events = append(events, raw)
	}
	if _, err := dec.Token(); err != nil {
		return nil, badRequest("batch array is not valid JSON after event %d: %s", len(events)-1, jsonError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("unexpected data after the batch array")
	}
	if len(events) == 0 {
		return nil, badRequest("batch is empty; send at least one event")
	}
	return events, nil
}

func jsonError(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "unexpected end of input"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// apiError is an error the client caused, with the status that says so.
type apiError struct {
	Status  int
	Message string
	// Index is the position of the offending event in a batch.
	Index *int
}

func (e *apiError) Error() string { return e.Message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Message: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusNotFound, Message: fmt.Sprintf(format, args...)}
}

func badIndex(i int, format string, args ...any) *apiError {
	e := badRequest(format, args...)
	e.Index = &i
	return e
}

type errorBody struct {
	Error string `json:"error"`
	Index *int   `json:"index,omitempty"`
}

// writeError is the one place where errors become HTTP answers. Client
// mistakes keep their status and message. Anything else is the store failing
// or the service stopping: 503 with Retry-After, since nothing was stored and
// the same request will succeed later.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var ae *apiError
	var de *destination.Error
	switch {
	case errors.As(err, &ae):
		if ae.Status == http.StatusRequestEntityTooLarge {
			// The rest of the body is not read: answer now and close the
			// connection. http.MaxBytesReader would have the server do so,
			// but it cannot see the server's writer through statusWriter,
			// and the server would first try to read what is left.
			w.Header().Set("Connection", "close")
		}
		writeJSON(w, ae.Status, errorBody{Error: ae.Message, Index: ae.Index})
		return
	case errors.As(err, &de):
		writeJSON(w, http.StatusBadRequest, errorBody{Error: de.Error()})
		return
	case errors.Is(err, destination.ErrNotFound):
		writeJSON(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("no destination with id %q", r.PathValue("id"))})
		return
	case errors.Is(err, destination.ErrExists):
		writeJSON(w, http.StatusConflict, errorBody{Error: "a destination with this id exists"})
		return
	}
	msg := "storage is unavailable; nothing was stored, retry later"
	switch {
	case r.Method == http.MethodGet:
		msg = "storage is unavailable; retry later"
	case errors.Is(err, dispatch.ErrStopped):
		msg = "fanout is shutting down; nothing was stored, retry later"
	case errors.Is(err, context.DeadlineExceeded):
		msg = "storage did not take the events in time; nothing was stored, retry later"
	}
	log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	// Without HTML escaping: answers are read by programs and by people
	// with curl, not embedded in pages, and "<token>" reads better than
	// "\u003ctoken\u003e".
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// An error may quote the request (a path, a field): no browser should
	// read the answer as anything but JSON.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// recoverPanics answers 500 instead of dropping the connection when a handler
// panics, and logs the stack.
func recoverPanics(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				log.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, errorBody{Error: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}
