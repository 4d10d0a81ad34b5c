package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/gjson"
	"golang.org/x/time/rate"

	"fanout/destination"
	"fanout/destination/match"
	"fanout/dispatch"
	"fanout/webhook"
)

// Operational events: fanout tells of its own trouble by ingesting events
// of its own, which destinations that ask for them (a filter entry such as
// "fanout.*") receive like any other event: signed, retried, visible. Their
// schema is in docs/openapi.yaml (webhooks).
//
//   - fanout.destination.paused: paused by the circuit breaker or a person;
//   - fanout.destination.disabled: disabled after a 410 Gone, or by a person;
//   - fanout.destination.recovered: a paused or disabled destination that
//     was announced is delivering again (resumed, re-enabled, or its first
//     delivery after the breaker's cooldown succeeded);
//   - fanout.deliveries.failed: deliveries dead-lettered, one event per
//     destination per --notice-window with their count and the first ids.
//
// They cannot feed on themselves: an event about a destination is never
// delivered to it, and only destinations that name fanout.* types in their
// filter receive them (not those that take everything).
//
// State changes are found by comparing each destination with the state
// last announced for it, which is kept in the store (documents of kind
// noticeDocKind): a change made by any replica is announced by whichever
// sees it, after a crash as well as before, and changes faster than
// announcements (a flapping destination) coalesce. An announcement has a
// deterministic id (the destination, the sequence number of its state
// change, the new state), given as the event's "id": fanout's
// deduplication (--dedup-window) stores it once however many replicas, or
// restarts, announce it. Failure summaries are counted in memory: a crash
// loses the count of the window under way (the dead letters themselves are
// in the store: GET /v1/deliveries?state=failed); a clean stop announces
// what it counted.
//
// Bounds: at most one summary per destination per window and process, and
// at most noticeBurst state announcements per destination, then one a
// minute.
const (
	NoticePaused    = "fanout.destination.paused"
	NoticeDisabled  = "fanout.destination.disabled"
	NoticeRecovered = "fanout.destination.recovered"
	NoticeFailed    = "fanout.deliveries.failed"
)

var NoticeTypes = []string{NoticePaused, NoticeDisabled, NoticeRecovered, NoticeFailed}

// NoticeDocKind is the kind of the documents that hold, per destination,
// the last state announced.
const NoticeDocKind = "destination-notice"

// Bounds of the notices.
const (
	noticeBurst          = 5  // state announcements of a destination in a row, then one a minute
	NoticeFirstIDs       = 10 // dead letters named in a summary
	noticeMaxPending     = 10000
	noticeReasonMaxBytes = 1000
)

// isNotice reports whether an event type is one of fanout's operational
// events.
func isNotice(eventType string) bool { return strings.HasPrefix(eventType, "fanout.") }

// noticeTargets keeps, of the destinations that match an operational
// event's type, those that asked for such events by name (a filter entry
// other than "*"), but the destination the event is about.
func noticeTargets(matching []*destination.Destination, eventType string, event []byte) []*destination.Destination {
	about := gjson.GetBytes(event, "data.destination_id").String()
	var out []*destination.Destination
	for _, d := range matching {
		if d.ID == about {
			continue
		}
		for _, p := range d.Filter {
			if p != "*" && (&destination.Destination{Filter: []string{p}}).Matches(eventType) {
				out = append(out, d)
				break
			}
		}
	}
	return out
}

// routed reports whether destination d gets an event of this type: the
// rule handleEvent applies when it fans an event out (with Matching), and
// replays apply again. payload is read only for an operational event, to
// keep it from the destination it is about (unreadable, it is not routed).
// A destination with a payload filter (Match) is asked it too, with env.
func routed(d *destination.Destination, eventType string, env match.Envelope, payload func() ([]byte, bool)) bool {
	if !d.Matches(eventType) {
		return false
	}
	if !isNotice(eventType) && d.Match == nil {
		return true
	}
	event, ok := payload()
	if !ok {
		return false
	}
	if d.Match != nil {
		env.Type = eventType
		if !d.Match.Match(event, env) {
			return false
		}
	}
	return !isNotice(eventType) || len(noticeTargets([]*destination.Destination{d}, eventType, event)) == 1
}

// NoticeStore keeps the announced states (the document methods of the
// drivers).
type NoticeStore interface {
	DocCreate(ctx context.Context, doc *dispatch.Doc) error
	DocGet(ctx context.Context, kind, id string) (*dispatch.Doc, error)
	DocList(ctx context.Context, kind string) ([]*dispatch.Doc, error)
	DocUpdate(ctx context.Context, doc *dispatch.Doc) error
	DocDelete(ctx context.Context, kind, id string) error
}

// Announced is the state last announced for a destination.
type Announced struct {
	State string    `json:"state"` // "ok", "paused" or "disabled"
	Seq   int64     `json:"seq"`   // state changes announced so far
	Since time.Time `json:"since"`
	// version is the document's, 0 when there is none yet.
	version int64
}

// Notifier announces operational events.
type Notifier struct {
	svc    *Service
	Dests  *destination.Registry
	store  NoticeStore
	log    *slog.Logger
	Window time.Duration
	// Process names this process in its failure summaries' ids: two
	// replicas each announce their own count for a window.
	Process string

	wake chan struct{}

	mu        sync.Mutex
	windows   map[string]*FailureWindow // by destination: the window under way
	pending   []Notice                  // summaries due, or that could not be stored yet
	recovered map[string]bool           // destinations whose breaker pause a delivery ended

	// Owned by the loop (or by stop, after the loop).
	states   map[string]*Announced // by destination; nil until loaded
	limiters map[string]*rate.Limiter
	failing  bool // the last store operation failed (logged once)

	cancel context.CancelFunc
	done   chan struct{}
}

// FailureWindow counts the dead letters of one destination in one window.
type FailureWindow struct {
	start     time.Time
	Count     int
	First     []FailedDelivery
	lastError string
}

type FailedDelivery struct {
	ID       string `json:"id"`
	EventID  string `json:"event_id"`
	Attempts int    `json:"attempts"`
	Status   int    `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Notice is an operational event waiting to be stored.
type Notice struct {
	Type  string
	Event json.RawMessage
}

// NewNotifier returns a notifier; attempted must hear of every delivery
// attempt (service.observeDeliveries), and start starts it.
func NewNotifier(svc *Service, store NoticeStore, window time.Duration, log *slog.Logger) *Notifier {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := &Notifier{svc: svc, Dests: svc.Dests, store: store, log: log, Window: window, Process: hex.EncodeToString(b[:]),
		wake: make(chan struct{}, 1), windows: map[string]*FailureWindow{}, recovered: map[string]bool{},
		limiters: map[string]*rate.Limiter{}}
	return n
}

// poke asks the loop to look at the destinations now (one changed).
func (n *Notifier) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// attempted counts a dead letter, or notes that a delivery ended a
// breaker's pause. It runs on the worker that made the attempt: no store.
func (n *Notifier) attempted(d deliveryAttempt) {
	switch d.Outcome {
	case outcomeDone:
		dst, ok := n.Dests.Get(d.DestinationID)
		if ok && dst.CircuitOpenUntil != nil && !d.Started.Before(*dst.CircuitOpenUntil) {
			n.mu.Lock()
			n.recovered[d.DestinationID] = true
			n.mu.Unlock()
			n.poke()
		}
	case outcomeFailed:
		if _, ok := n.Dests.Get(d.DestinationID); !ok {
			return // deleted: its deliveries fail, as announced by whoever deleted it
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		// The window of now, read under the lock: reports from many
		// workers then see windows in order, and a window, once
		// summed up, never opens again (its summary's id would be
		// taken).
		start := time.Now().Truncate(n.Window)
		w := n.windows[d.DestinationID]
		if w != nil && !start.After(w.start) {
			start = w.start
		}
		if w != nil && !w.start.Equal(start) {
			n.pending = append(n.pending, n.Summary(d.DestinationID, w))
			w = nil
		}
		if w == nil {
			w = &FailureWindow{start: start}
			n.windows[d.DestinationID] = w
		}
		w.Count++
		msg := ""
		if d.Err != nil {
			msg = truncate(d.Err.Error(), noticeReasonMaxBytes)
		}
		w.lastError = msg
		if len(w.First) < NoticeFirstIDs {
			w.First = append(w.First, FailedDelivery{ID: d.ID, EventID: d.EventID, Attempts: d.Attempt,
				Status: d.Status, Error: msg})
		}
	}
}

// start runs the loop until stop.
func (n *Notifier) start(ctx context.Context) {
	ctx, n.cancel = context.WithCancel(ctx)
	n.done = make(chan struct{})
	go func() {
		defer close(n.done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			n.Tick(ctx, false)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-n.wake:
			}
		}
	}()
}

// Stop ends the loop and announces the failures counted so far (the
// runtime must still run: they are ingested), trying for at most until
// ctx ends.
func (n *Notifier) Stop(ctx context.Context) {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	n.cancel = nil
	n.Tick(ctx, true)
}

// Tick clears the breaker pauses deliveries ended, announces the state
// changes of destinations, and the failure summaries that are due (all of
// them when final).
func (n *Notifier) Tick(ctx context.Context, final bool) {
	now := time.Now()
	n.mu.Lock()
	recovered := n.recovered
	n.recovered = map[string]bool{}
	for id, w := range n.windows {
		if final || !now.Before(w.start.Add(n.Window)) {
			n.pending = append(n.pending, n.Summary(id, w))
			delete(n.windows, id)
		}
	}
	if over := len(n.pending) - noticeMaxPending; over > 0 {
		n.log.Error("operational events could not be stored for a long while; dropping the oldest", "dropped", over)
		n.pending = n.pending[over:]
	}
	pending := n.pending
	n.pending = nil
	n.mu.Unlock()

	for id := range recovered {
		n.endBreakerPause(ctx, id)
	}
	n.announceStates(ctx, now)
	for i, nt := range pending {
		if err := n.store1(ctx, nt); err != nil {
			n.mu.Lock()
			n.pending = append(pending[i:], n.pending...)
			n.mu.Unlock()
			return
		}
	}
}

// store1 ingests one operational event.
func (n *Notifier) store1(ctx context.Context, nt Notice) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// To the tenant of the destination it is about (and so to the
	// operator's destinations of every tenant).
	key := ""
	if d, ok := n.svc.Dests.Get(gjson.GetBytes(nt.Event, "data.destination_id").String()); ok && d.Owner() != "" {
		if k, err := n.svc.tenants.key(ctx, d.Owner()); err == nil {
			key = k
		}
	}
	_, err := n.svc.ingest(ctx, key, []json.RawMessage{nt.Event}, "")
	if err != nil {
		if !n.failing {
			n.log.Warn("store an operational event; trying again", "type", nt.Type, "err", err)
		}
		n.failing = true
		return err
	}
	n.failing = false
	n.svc.Metrics.notices.WithLabelValues(nt.Type).Inc()
	return nil
}

var errNoChange = errors.New("no change")

// endBreakerPause clears the breaker's pause of a destination a delivery
// succeeded to after the cooldown: it is healthy again, and the next look
// at it announces that it recovered.
func (n *Notifier) endBreakerPause(ctx context.Context, id string) {
	_, err := n.Dests.Update(ctx, id, func(d *destination.Destination) error {
		if d.CircuitOpenUntil == nil || time.Now().Before(*d.CircuitOpenUntil) {
			return errNoChange // cleared meanwhile, or paused again
		}
		d.CircuitOpenUntil, d.Reason = nil, ""
		return nil
	})
	if err != nil && !errors.Is(err, errNoChange) && !errors.Is(err, destination.ErrNotFound) {
		n.log.Warn("clear a destination's circuit breaker after a delivery succeeded; trying at the next one", "destination", id, "err", err)
	}
}

// health is the state of a destination as operational events tell it,
// what caused it ("automatic": fanout; "manual": a person, through the
// API) and why.
func health(d *destination.Destination) (state, trigger, reason string) {
	switch {
	case !d.Enabled:
		if d.Reason != "" {
			return "disabled", "automatic", d.Reason
		}
		return "disabled", "manual", "disabled through the API"
	case d.CircuitOpenUntil != nil:
		return "paused", "automatic", d.Reason
	case d.Paused:
		return "paused", "manual", "paused through the API"
	}
	return "ok", "", ""
}

// announceStates announces each destination whose state changed since the
// last announcement, and forgets the announcements of deleted ones.
func (n *Notifier) announceStates(ctx context.Context, now time.Time) {
	if n.states == nil {
		docs, err := n.store.DocList(ctx, NoticeDocKind)
		if err != nil {
			if !n.failing {
				n.log.Warn("read the states announced; trying again", "err", err)
			}
			n.failing = true
			return
		}
		n.states = map[string]*Announced{}
		for _, doc := range docs {
			var a Announced
			if json.Unmarshal(doc.Data, &a) == nil {
				a.version = doc.Version
				n.states[doc.ID] = &a
			}
		}
	}
	exists := map[string]bool{}
	for _, d := range n.Dests.List() {
		exists[d.ID] = true
		state, trigger, reason := health(d)
		last := n.states[d.ID]
		if last == nil {
			last = &Announced{State: "ok"}
		}
		if state == last.State {
			continue
		}
		lim := n.limiters[d.ID]
		if lim == nil {
			lim = rate.NewLimiter(rate.Every(time.Minute), noticeBurst)
			n.limiters[d.ID] = lim
		}
		if lim.TokensAt(now) < 1 {
			continue // announced when a token is back, if it still holds
		}
		next := &Announced{State: state, Seq: last.Seq + 1, Since: now.UTC(), version: last.version}
		nt := n.StateNotice(d, last, next, trigger, reason)
		if err := n.store1(ctx, nt); err != nil {
			return
		}
		lim.AllowN(now, 1)
		if err := n.record(ctx, d.ID, next); err != nil {
			if !errors.Is(err, dispatch.ErrDocConflict) && !errors.Is(err, dispatch.ErrDocExists) {
				n.log.Warn("record the state announced", "destination", d.ID, "err", err)
			}
			// Another replica recorded one meanwhile: read it again (its
			// announcement of the same change had the same id).
			n.states = nil
			return
		}
	}
	for id := range n.states {
		if !exists[id] {
			if err := n.store.DocDelete(ctx, NoticeDocKind, id); err == nil || errors.Is(err, dispatch.ErrNotFound) {
				delete(n.states, id)
				delete(n.limiters, id)
			}
		}
	}
}

// record stores the state announced for a destination, unless another
// replica stored one meanwhile.
func (n *Notifier) record(ctx context.Context, id string, a *Announced) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	doc := &dispatch.Doc{Kind: NoticeDocKind, ID: id, Data: data, Version: a.version, CreatedAt: now, UpdatedAt: now}
	if a.version == 0 {
		err = n.store.DocCreate(ctx, doc)
		doc.Version = 1
	} else {
		err = n.store.DocUpdate(ctx, doc)
	}
	if err != nil {
		return err
	}
	a.version = doc.Version
	n.states[id] = a
	return nil
}

// The JSON of operational events: an envelope, and data by type.
type (
	noticeEvent struct {
		Type string    `json:"type"`
		ID   string    `json:"id"`
		Time time.Time `json:"time"`
		Data any       `json:"data"`
	}
	DestinationNotice struct {
		DestinationID string     `json:"destination_id"`
		URL           string     `json:"destination_url"`
		Description   string     `json:"destination_description,omitempty"`
		Trigger       string     `json:"trigger"`
		Reason        string     `json:"reason"`
		PausedUntil   *time.Time `json:"paused_until,omitempty"`
		Since         time.Time  `json:"since"`
	}
	recoveredNotice struct {
		DestinationID string    `json:"destination_id"`
		URL           string    `json:"destination_url"`
		Description   string    `json:"destination_description,omitempty"`
		PreviousState string    `json:"previous_state"`
		DownSince     time.Time `json:"down_since"`
		DownSeconds   float64   `json:"down_seconds"`
	}
	FailedNotice struct {
		DestinationID string           `json:"destination_id"`
		URL           string           `json:"destination_url,omitempty"`
		Description   string           `json:"destination_description,omitempty"`
		Count         int              `json:"count"`
		WindowStart   time.Time        `json:"window_start"`
		WindowEnd     time.Time        `json:"window_end"`
		LastError     string           `json:"last_error,omitempty"`
		First         []FailedDelivery `json:"first_deliveries"`
	}
)

func (n *Notifier) StateNotice(d *destination.Destination, last, next *Announced, trigger, reason string) Notice {
	typ := map[string]string{"paused": NoticePaused, "disabled": NoticeDisabled, "ok": NoticeRecovered}[next.State]
	e := noticeEvent{Type: typ, ID: "fanout:" + d.ID + ":" + strconv.FormatInt(next.Seq, 10) + ":" + next.State,
		Time: next.Since}
	switch next.State {
	case "ok":
		e.Data = recoveredNotice{DestinationID: d.ID, URL: noticeAddress(d), Description: d.Description, PreviousState: last.State,
			DownSince: last.Since, DownSeconds: next.Since.Sub(last.Since).Seconds()}
	default:
		dn := DestinationNotice{DestinationID: d.ID, URL: noticeAddress(d), Description: d.Description, Trigger: trigger,
			Reason: truncate(reason, noticeReasonMaxBytes), Since: next.Since}
		if next.State == "paused" && d.CircuitOpenUntil != nil {
			until := d.CircuitOpenUntil.UTC()
			dn.PausedUntil = &until
		}
		e.Data = dn
	}
	b, _ := json.Marshal(e)
	return Notice{Type: typ, Event: b}
}

// Summary is the fanout.deliveries.failed event of a window; n.mu is held.
func (n *Notifier) Summary(id string, w *FailureWindow) Notice {
	data := FailedNotice{DestinationID: id, Count: w.Count, WindowStart: w.start.UTC(),
		WindowEnd: w.start.Add(n.Window).UTC(), LastError: w.lastError, First: w.First}
	if d, ok := n.Dests.Get(id); ok {
		data.URL, data.Description = noticeAddress(d), d.Description
	}
	e := noticeEvent{Type: NoticeFailed, Time: time.Now().UTC(), Data: data,
		ID: "fanout:" + id + ":failed:" + w.start.UTC().Format("20060102T150405.000Z") + ":" + n.Process}
	b, _ := json.Marshal(e)
	return Notice{Type: NoticeFailed, Event: b}
}

// noticeAddress is where d delivers, as a notice says it: a webhook's URL
// redacted, a broker destination's target (which has no secret).
func noticeAddress(d *destination.Destination) string {
	if d.IsBroker() {
		return d.Target
	}
	return webhook.RedactURL(d.URL)
}
