package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/tidwall/gjson"

	"fanout/destination"
	"fanout/destination/match"
	"fanout/destination/transform"
	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// An event is one JSON object, kept as the exact bytes the client sent:
// destinations receive those bytes, not a re-encoding of them. Its id is the
// id of the handleEvent call that fans it out.

// Message is the input of publishEvent: one event for one destination.
//
// A delivery stores no copy of its event, nor anything else its call
// already says: the event is its parent's input (the handleEvent call),
// which publishEvent reads with dispatch.ParentInput; the event's id is the
// parent's id; the destination is the call's key (DispatchKey). So a
// delivery's stored input is {}, and each payload is stored once, whatever
// the number of destinations. The fields are read when present: deliveries
// stored before (and replays that carry their own bytes) still work.
type Message struct {
	EventID       string          `json:"event_id,omitempty"`
	DestinationID string          `json:"destination_id,omitempty"`
	Event         json.RawMessage `json:"event,omitempty"`
	// Tenant is the event's tenant, for a broker destination of every
	// tenant only (a tenant's own destination is its events' tenant):
	// the message carries it.
	Tenant string `json:"tenant,omitempty"`
	// OrderKey is the event's key under its destination's ordering
	// (destination.Ordering.OrderKey), "" without one. The runtime keeps
	// it with the call (dispatch.Call.OrderKey), not in its input.
	OrderKey string `json:"-"`
}

// DispatchOrderKey puts a delivery in its destination's sequence of its
// key: the runtime runs the calls of one destination and order key one at
// a time, in the order of their events' ids.
func (m Message) DispatchOrderKey() string { return m.OrderKey }

// OutOfOrderHeader marks a delivery of an ordered destination sent outside
// its key's order: a re-drive or a replay, its key having moved on.
const OutOfOrderHeader = "fanout-out-of-order"

// DispatchKey keys a delivery by its destination: the runtime's limits,
// pauses and breaker apply per destination.
func (m Message) DispatchKey() string { return m.DestinationID }

// MarshalJSON writes the message without reflection, and the event's bytes,
// if any, as they are: encoding/json would compact them and escape <, > and
// &, and the destination would then receive something other than what the
// client sent. The destination is left out: it is the call's key, which
// the runtime stores as such (see Message).
func (m Message) MarshalJSON() ([]byte, error) {
	if m.EventID == "" && len(m.Event) == 0 && m.Tenant == "" {
		return []byte("{}"), nil
	}
	out := make([]byte, 0, len(`{"event_id":"","tenant":"","event":}`)+len(m.EventID)+len(m.Tenant)+len(m.Event)+8)
	out = append(out, '{')
	if m.EventID != "" {
		out = append(out, `"event_id":`...)
		out = appendJSONString(out, m.EventID)
	}
	if m.Tenant != "" {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, `"tenant":`...)
		out = appendJSONString(out, m.Tenant)
	}
	if len(m.Event) > 0 {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, `"event":`...)
		out = append(out, m.Event...)
	}
	return append(out, '}'), nil
}

// UnmarshalJSON reads a message without reflection (the runtime hands it
// bytes it validated when it stored them); the event's bytes are kept as
// they are.
func (m *Message) UnmarshalJSON(b []byte) error {
	if !gjson.ValidBytes(b) {
		return errors.New("message is not valid JSON")
	}
	r := gjson.GetManyBytes(b, "event_id", "destination_id", "event", "tenant")
	*m = Message{EventID: r[0].Str, DestinationID: r[1].Str, Tenant: r[3].Str}
	if r[2].Exists() && r[2].Type != gjson.Null {
		m.Event = json.RawMessage(r[2].Raw)
	}
	return nil
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s) // rare: let encoding/json escape it
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Delivery is the output of publishEvent: what the destination answered.
type Delivery = webhook.Result

// Fanout is the output of handleEvent.
type Fanout struct {
	Destinations int `json:"destinations"`
}

// MarshalJSON writes {"destinations":N} without reflection: every event
// stores one.
func (f Fanout) MarshalJSON() ([]byte, error) {
	return append(strconv.AppendInt([]byte(`{"destinations":`), int64(f.Destinations), 10), '}'), nil
}

// functions are the two durable functions of the seed: handleEvent fans an
// event out with Gather, one publishEvent per destination that wants it, and
// each publishEvent is retried on its own until its destination has the event.
type functions struct {
	HandleEvent  *dispatch.Function[json.RawMessage, Fanout]
	PublishEvent *dispatch.Function[Message, Delivery]
	// tracing, when not nil, traces each request to a destination.
	tracing *Tracing
	// tenantOf is the tenant of an event's key (Service sets it): ok is
	// false for a tenant deleted since.
	tenantOf func(ctx context.Context, key string) (tenant string, ok bool, err error)
	// transforms runs destinations' transformations (transform.go); nil:
	// this process runs none.
	transforms *transform.Engine
	// brokers sends to broker destinations (brokers.go); nil: none.
	brokers *sink.Pool
}

// NewFunctions returns the two functions over the destinations and the
// client that sends to them; tracing is nil when traces are off.
func NewFunctions(dests *destination.Registry, client *webhook.Client, now func() time.Time, tracing *Tracing) *functions {
	fns := &functions{tracing: tracing}
	publishEvent := dispatch.Func("publishEvent", func(ctx context.Context, m Message) (Delivery, error) {
		info, _ := dispatch.CallFromContext(ctx)
		if m.DestinationID == "" {
			m.DestinationID = info.Key // see Message
		}
		d, ok := dests.Get(m.DestinationID)
		if !ok {
			return Delivery{}, fmt.Errorf("%w: destination %s was deleted", dispatch.ErrPermanent, m.DestinationID)
		}
		if d.PausedAt(now()) {
			// Paused since this delivery was leased: the runtime holds
			// the destination's deliveries back until it is resumed.
			return Delivery{}, dispatch.Snooze(time.Second)
		}
		id, body := m.EventID, []byte(m.Event)
		if id == "" {
			id = info.ParentID
		}
		if body == nil {
			// The event is the parent's input: from memory when the
			// event was handled here, from the store otherwise.
			in, err := dispatch.ParentInput(ctx)
			if err != nil {
				return Delivery{}, err
			}
			body = bytes.Trim(in, " \t\r\n")
		}
		stored := body
		body, contentType, err := deliveryBody(body) // a raw event's bytes and type (rawbody.go)
		if err != nil {
			return Delivery{}, fmt.Errorf("%w: %v", dispatch.ErrPermanent, err)
		}
		if d.IsBroker() {
			return fns.sendBroker(ctx, d, info, m, id, stored, body, contentType) // brokers.go
		}
		req := &webhook.Request{URL: d.URL, ID: id, Body: body, ContentType: contentType,
			Header: d.Header(), Keys: d.Keys(now())}
		if d.Transform != "" {
			cancelled, err := fns.transform(ctx, d, req, EventFields(stored).Type) // transform.go
			if err != nil {
				return Delivery{}, err // a failed attempt, retried
			}
			if cancelled != nil {
				return *cancelled, nil // done, and nothing sent
			}
		}
		header, traced := req.Header, func(int, error) {}
		if info.OutOfOrder {
			// after the transformation: it cannot take the mark away
			if header == nil {
				header = make(http.Header, 1)
			}
			header.Set(OutOfOrderHeader, "true")
		}
		if fns.tracing != nil {
			header, traced = fns.tracing.startSend(ctx, d, header) // the request's span, and its traceparent
		}
		req.Header = header
		res, err := client.Send(ctx, req)
		traced(answered(res), err)
		if webhook.IsStatus(err, 410) {
			dests.Gone(d.ID, "the destination answered 410 Gone at "+now().UTC().Format(time.RFC3339)+
				"; enable it again with PATCH /v1/destinations/"+d.ID)
		}
		if err != nil {
			return Delivery{}, err
		}
		return *res, nil
	})
	handleEvent := dispatch.Func("handleEvent", func(ctx context.Context, event json.RawMessage) (Fanout, error) {
		eventType := EventFields(event).Type
		// The tenant's destinations and those of every tenant; a tenant
		// deleted since has none of its own left ("" matches none).
		info, _ := dispatch.CallFromContext(ctx)
		tenant, _, err := fns.tenantOf(ctx, info.Key)
		if err != nil {
			return Fanout{}, err // the store failed: try again, never route to fewer
		}
		matching := dests.Matching(tenant, eventType, filterPayload(event), match.Envelope{Type: eventType, Tenant: tenant, Time: info.CreatedAt})
		if only, ok := testTarget(info.Meta); ok {
			matching = testDestination(dests, tenant, only) // a test-send: that one alone (portal.go)
		} else if isNotice(eventType) {
			matching = noticeTargets(matching, eventType, event) // never to the destination it is about
		}
		messages := make([]Message, len(matching))
		for i, d := range matching {
			messages[i] = Message{DestinationID: d.ID} // the event is this call's input: see Message
			if d.AllTenants && d.IsBroker() {
				messages[i].Tenant = tenant // a message says whose event it is
			}
			if d.Ordering != nil {
				messages[i].OrderKey = d.Ordering.OrderKey(event, eventType, tenant)
			}
		}
		deliveries, err := publishEvent.Gather(ctx, messages)
		if err != nil {
			return Fanout{}, err
		}
		return Fanout{Destinations: len(deliveries)}, nil
	}).Eager(). // it only reads before its Gather: store it with its deliveries, in one write
			ResumeInline() // and after it only counts them: stored done with its last delivery
	fns.HandleEvent, fns.PublishEvent = handleEvent, publishEvent
	return fns
}

// answered is the status of a destination's answer, 0 without one.
func answered(res *Delivery) int {
	if res == nil {
		return 0
	}
	return res.StatusCode
}

// fields are the parts of an event fanout reads: its type, for routing, and
// its id, to drop a repeat.
type fields struct {
	Type string
	ID   string
}

// EventFields reads an event's top-level "type" (when it is a string) and
// "id" (a string or a number). Keys match exactly, and when a key appears
// twice the first one counts. It runs on every event, twice (the id at
// ingest, the type when routing), so it scans the already validated bytes
// with gjson instead of decoding them (a full json.Unmarshal here was an
// eighth of the CPU of a single-event request), in one pass over the
// top-level keys that stops once it has both (gjson.GetManyBytes walked the
// object once per key, 3.5x the time for a 200-byte event).
func EventFields(event json.RawMessage) fields {
	var f fields
	if isRaw(event) {
		return fields{Type: rawType(event)} // no id: its Idempotency-Key drops a repeat
	}
	var haveType, haveID bool
	// gjson reads the event in place; what is kept of it is cloned.
	gjson.Parse(unsafe.String(unsafe.SliceData(event), len(event))).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "type":
			if !haveType {
				haveType = true
				if v.Type == gjson.String {
					f.Type = strings.Clone(v.Str)
				}
			}
		case "id":
			if !haveID {
				haveID = true
				switch v.Type {
				case gjson.String:
					f.ID = strings.Clone(v.Str)
				case gjson.Number:
					f.ID = strings.Clone(v.Raw)
				}
			}
		}
		return !haveType || !haveID
	})
	return f
}
