package service

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"fanout/dispatch"
	"fanout/webhook"
)

// EventView is an event and the state of its deliveries.
type EventView struct {
	ID         string    `json:"id"`
	State      string    `json:"state"`
	ReceivedAt time.Time `json:"received_at"`
	Error      string    `json:"error,omitempty"`
	// Type is the type the event was routed by; Raw is the body of a raw
	// event (rawbody.go), whose Event is null. Both come before Event: the
	// console finds a JSON event's own text between "event" and
	// "deliveries" when it is too deep for the browser's JSON.stringify.
	Type       string          `json:"type,omitempty"`
	Raw        *RawBody        `json:"raw,omitempty"`
	Event      json.RawMessage `json:"event"`
	Deliveries []DeliveryView  `json:"deliveries"`
}

// DeliveryView is one delivery: an event for a destination.
type DeliveryView struct {
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
	// OrderKey is the delivery's key, when its destination has an
	// ordering (see BlockedKeyView.Key); Queued says that it waits for the
	// deliveries before it of that key; OutOfOrder that it is sent outside
	// that order (re-driven or replayed).
	OrderKey   json.RawMessage `json:"order_key,omitempty"`
	Queued     bool            `json:"queued,omitempty"`
	OutOfOrder bool            `json:"out_of_order,omitempty"`
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
	return 0, Invalid("state must be failed, pending, delivering or delivered, not %q", s)
}

// deliveryOutput reads what the destination answered to a delivery that
// succeeded.
func deliveryOutput(c *dispatch.Call) (Delivery, bool) {
	var out Delivery
	return out, c.State == dispatch.StateDone && json.Unmarshal(c.Output, &out) == nil
}

func (s *Service) deliveryView(c *dispatch.Call) DeliveryView {
	v := DeliveryView{ID: c.ID, EventID: c.ParentID, DestinationID: c.Key, State: deliveryState(c.State),
		Attempts: c.Attempt, LastError: c.Error, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt}
	if d, ok := s.Dests.Get(c.Key); ok {
		v.URL = d.Address()
	}
	if job, ok := strings.CutPrefix(c.Tag, "replay:"); ok {
		v.Replay = job
	}
	v.OrderKey, v.Queued, v.OutOfOrder = orderKeyJSON(c.OrderKey), c.Queued(), c.OutOfOrder
	switch c.State {
	case dispatch.StatePending:
		if v.Queued {
			break // no time of its own: when the deliveries before it are done
		}
		at := c.RunAfter
		v.NextAttemptAt = &at
	case dispatch.StateDone:
		at := c.UpdatedAt
		v.DeliveredAt = &at
		if out, ok := deliveryOutput(c); ok {
			v.LastStatus = out.StatusCode
			if out.Cancelled != "" {
				// Its transformation cancelled it: done, nothing sent.
				v.State, v.LastError, v.DeliveredAt = "cancelled", out.Cancelled, nil
			}
		}
	}
	return v
}

// Event returns an event and, per destination, its delivery.
func (s *Service) Event(ctx context.Context, scope Scope, id string) (*EventView, error) {
	c, err := s.store.CallGet(ctx, id)
	if errors.Is(err, dispatch.ErrNotFound) || (err == nil && (c.Function != s.fns.HandleEvent.Name() || c.ParentID != "")) {
		return nil, NotFound("no event with id %q (delivered events are deleted after --retention)", id)
	}
	if err != nil {
		return nil, err
	}
	if !scope.All() {
		tenant, ok, err := s.tenants.ofKey(ctx, c.Key)
		if err != nil {
			return nil, err
		}
		if !ok || !scope.Allows(tenant) {
			return nil, NotFound("no event with id %q (delivered events are deleted after --retention)", id)
		}
	}
	children, err := s.store.CallListChildren(ctx, id)
	if err != nil {
		return nil, err
	}
	v := &EventView{ID: c.ID, State: eventState(c.State), ReceivedAt: c.CreatedAt, Event: json.RawMessage(c.Input),
		Type: c.Tag, Deliveries: make([]DeliveryView, 0, len(children))}
	if raw := rawView(c.Input); raw != nil {
		v.Event, v.Raw = nil, raw
	}
	if c.State == dispatch.StateFailed {
		v.Error = c.Error
	}
	var n DeliveryCounts
	for _, child := range children {
		if s.destinationInScope(scope, child.Key) {
			dv := s.deliveryView(child)
			v.Deliveries = append(v.Deliveries, dv)
			switch dv.State {
			case "failed":
				n.Failed++
			case "delivered", "cancelled":
				n.Delivered++
			default:
				n.Pending++
			}
		}
	}
	if !scope.All() {
		// A tenant's view: its own deliveries make the state, and the
		// error (which may name another destination) is theirs to show.
		v.State, v.Error = scopedState(v.State, n), ""
	}
	return v, nil
}

// DeliveryFilter selects deliveries: the query of GET /v1/deliveries and
// the body of POST /v1/deliveries/retry.
type DeliveryFilter struct {
	State       string `json:"state"`
	Destination string `json:"destination"`
	Since       string `json:"since"`
	Until       string `json:"until"`
}

func (s *Service) listParams(scope Scope, f DeliveryFilter) (*dispatch.CallListParams, error) {
	state, err := parseDeliveryState(f.State)
	if err != nil {
		return nil, err
	}
	p := &dispatch.CallListParams{Function: s.fns.PublishEvent.Name(), State: state}
	if f.Destination != "" {
		if _, err := s.Destination(scope, f.Destination); err != nil && !scope.All() {
			return nil, err
		}
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
		t, err := parseTime(b.name, b.value)
		if err != nil {
			return nil, err
		}
		*b.dst = t
	}
	return p, nil
}

// Deliveries returns a page of the deliveries f selects, in id order after
// cursor, and the cursor of the next page ("" on the last).
func (s *Service) Deliveries(ctx context.Context, scope Scope, f DeliveryFilter, cursor string, limit int) ([]DeliveryView, string, error) {
	p, err := s.listParams(scope, f)
	if err != nil {
		return nil, "", err
	}
	calls, next, err := s.listInScope(ctx, scope, p, cursor, limit)
	if err != nil {
		return nil, "", err
	}
	out := make([]DeliveryView, 0, len(calls))
	for _, c := range calls {
		out = append(out, s.deliveryView(c))
	}
	return out, next, nil
}

// scopedListBudget bounds the deliveries one page of a tenant's list looks
// at when it is not narrowed to one destination: past it, the page is
// answered short, with a cursor to go on.
const scopedListBudget = 20000

// listInScope lists the deliveries p selects, after cursor, limit at most,
// keeping those in scope, and the cursor of the next page ("" on the
// last). Narrowed to one destination (in scope), the store's list is the
// answer; a tenant's list of every destination is the store's filtered,
// page after page, within scopedListBudget.
func (s *Service) listInScope(ctx context.Context, scope Scope, p *dispatch.CallListParams, cursor string, limit int) ([]*dispatch.Call, string, error) {
	p.After, p.Limit = cursor, limit
	if scope.All() || p.Key != nil {
		calls, err := s.store.CallList(ctx, p)
		if err != nil {
			return nil, "", err
		}
		next := ""
		if len(calls) == limit {
			next = calls[len(calls)-1].ID
		}
		return calls, next, nil
	}
	var out []*dispatch.Call
	p.Limit = max(limit, 500)
	for looked := 0; looked < scopedListBudget; {
		calls, err := s.store.CallList(ctx, p)
		if err != nil {
			return nil, "", err
		}
		looked += len(calls)
		for i, c := range calls {
			if s.destinationInScope(scope, c.Key) {
				out = append(out, c)
				if len(out) == limit {
					if i == len(calls)-1 && len(calls) < p.Limit {
						return out, "", nil
					}
					return out, c.ID, nil
				}
			}
		}
		if len(calls) < p.Limit {
			return out, "", nil
		}
		p.After = calls[len(calls)-1].ID
	}
	return out, p.After, nil
}

// delivery returns a delivery's call.
func (s *Service) delivery(ctx context.Context, scope Scope, id string) (*dispatch.Call, error) {
	c, err := s.store.CallGet(ctx, id)
	if errors.Is(err, dispatch.ErrNotFound) || (err == nil && (c.Function != s.fns.PublishEvent.Name() || !s.destinationInScope(scope, c.Key))) {
		return nil, NotFound("no delivery with id %q", id)
	}
	return c, err
}

// Delivery returns a delivery with the history of its attempts.
func (s *Service) Delivery(ctx context.Context, scope Scope, id string) (*DeliveryView, error) {
	c, err := s.delivery(ctx, scope, id)
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
		var detail []byte
		if out.Cancelled == "" {
			detail, _ = json.Marshal(webhook.AttemptDetail{StatusCode: out.StatusCode, Excerpt: out.Excerpt})
		}
		v.History = append(v.History, attemptView{Attempt: c.Attempt, StartedAt: c.UpdatedAt.Add(-out.Duration),
			DurationMS: float64(out.Duration.Microseconds()) / 1000, Status: out.StatusCode, Detail: detail,
			Error: out.Cancelled})
	}
	return &v, nil
}

// RetryDelivery re-drives one failed delivery and returns its id.
func (s *Service) RetryDelivery(ctx context.Context, scope Scope, id string) ([]string, error) {
	c, err := s.delivery(ctx, scope, id)
	if err != nil {
		return nil, err
	}
	if c.State != dispatch.StateFailed {
		return nil, Conflict("delivery %s is %s; only failed deliveries can be retried", c.ID, deliveryState(c.State))
	}
	done, err := s.rt.Redrive(ctx, []string{c.ID})
	if err != nil {
		return nil, err
	}
	if len(done) == 0 {
		return nil, Conflict("delivery %s cannot be retried now: its event is finishing; try again in a moment", c.ID)
	}
	return done, nil
}

// maxRedrive bounds one bulk re-drive request, and maxRedrivePages the
// pages it walks; the answer says if more are left.
const (
	maxRedrive      = 100000
	maxRedrivePages = 200
)

// RetryDeliveries re-drives the failed deliveries f selects, page by page,
// up to maxRedrive; more says that some are left.
func (s *Service) RetryDeliveries(ctx context.Context, scope Scope, f DeliveryFilter) (retried int, more bool, err error) {
	if f.State != "" && f.State != "failed" {
		return 0, false, Invalid("only failed deliveries can be retried")
	}
	p, err := s.listParams(scope, f)
	if err != nil {
		return 0, false, err
	}
	cursor := ""
	for pages := 0; ; pages++ {
		if pages == maxRedrivePages {
			// A tenant's failed deliveries among many of others: the
			// walk is bounded as each page is; more says to ask again.
			return retried, true, nil
		}
		calls, next, err := s.listInScope(ctx, scope, p, cursor, 1000)
		if err != nil {
			return retried, false, err
		}
		if len(calls) == 0 && next == "" {
			return retried, false, nil
		}
		ids := make([]string, len(calls))
		for i, c := range calls {
			ids[i] = c.ID
		}
		if len(ids) == 0 {
			cursor = next
			continue
		}
		done, err := s.rt.Redrive(ctx, ids)
		if err != nil {
			return retried, false, err
		}
		retried += len(done)
		if next == "" {
			return retried, false, nil
		}
		cursor = next
		if retried >= maxRedrive {
			return retried, true, nil
		}
	}
}
