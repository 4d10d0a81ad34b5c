package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/webhook"
)

// An event is one JSON object, kept as the exact bytes the client sent:
// destinations receive those bytes, not a re-encoding of them. Its id is the
// id of the handleEvent call that fans it out.

// Message is the input of publishEvent: one event for one destination.
type Message struct {
	EventID       string          `json:"event_id"`
	DestinationID string          `json:"destination_id"`
	Event         json.RawMessage `json:"event"`
}

// DispatchKey keys a delivery by its destination: the runtime's limits,
// pauses and breaker apply per destination.
func (m Message) DispatchKey() string { return m.DestinationID }

// MarshalJSON writes the event's bytes as they are; encoding/json would
// compact them and escape <, > and &, and the destination would then receive
// something other than what the client sent.
func (m Message) MarshalJSON() ([]byte, error) {
	type plain Message // the same fields without this method
	head, err := json.Marshal(plain{EventID: m.EventID, DestinationID: m.DestinationID})
	if err != nil {
		return nil, err
	}
	event := m.Event
	if len(event) == 0 {
		event = json.RawMessage("null")
	}
	// head is {...,"event":null}: swap in the bytes.
	head = head[:len(head)-len(`null}`)]
	out := make([]byte, 0, len(head)+len(event)+1)
	out = append(out, head...)
	out = append(out, event...)
	return append(out, '}'), nil
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
	handleEvent  *dispatch.Function[json.RawMessage, Fanout]
	publishEvent *dispatch.Function[Message, Delivery]
	// tracing, when set before the runtime starts, traces each request
	// to a destination.
	tracing *tracing
}

func newFunctions(dests *destination.Registry, client *webhook.Client, now func() time.Time) *functions {
	fns := &functions{}
	publishEvent := dispatch.Func("publishEvent", func(ctx context.Context, m Message) (Delivery, error) {
		d, ok := dests.Get(m.DestinationID)
		if !ok {
			return Delivery{}, fmt.Errorf("%w: destination %s was deleted", dispatch.ErrPermanent, m.DestinationID)
		}
		if d.PausedAt(now()) {
			// Paused since this delivery was leased: the runtime holds
			// the destination's deliveries back until it is resumed.
			return Delivery{}, dispatch.Snooze(time.Second)
		}
		header, traced := d.Header(), func(int, error) {}
		if fns.tracing != nil {
			header, traced = fns.tracing.startSend(ctx, d, header) // the request's span, and its traceparent
		}
		res, err := client.Send(ctx, &webhook.Request{URL: d.URL, ID: m.EventID, Body: m.Event,
			Header: header, Keys: d.Keys(now())})
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
		call, _ := dispatch.CallFromContext(ctx)
		eventType := eventFields(event).Type
		matching := dests.Matching(eventType)
		if isNotice(eventType) {
			matching = noticeTargets(matching, eventType, event) // never to the destination it is about
		}
		messages := make([]Message, len(matching))
		for i, d := range matching {
			messages[i] = Message{EventID: call.ID, DestinationID: d.ID, Event: event}
		}
		deliveries, err := publishEvent.Gather(ctx, messages)
		if err != nil {
			return Fanout{}, err
		}
		return Fanout{Destinations: len(deliveries)}, nil
	}).Eager() // it only reads before its Gather: store it with its deliveries, in one write
	fns.handleEvent, fns.publishEvent = handleEvent, publishEvent
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

// eventFields reads an event's top-level "type" (when it is a string) and
// "id" (a string or a number). Keys match exactly, and when a key appears
// twice the first one counts. It runs on every event, twice (the id at
// ingest, the type when routing), so it scans the already validated bytes
// with gjson instead of decoding them: a full json.Unmarshal here was an
// eighth of the CPU of a single-event request.
func eventFields(event json.RawMessage) fields {
	var f fields
	r := gjson.GetManyBytes(event, "type", "id")
	if r[0].Type == gjson.String {
		f.Type = r[0].Str
	}
	switch r[1].Type {
	case gjson.String:
		f.ID = r[1].Str
	case gjson.Number:
		f.ID = r[1].Raw
	}
	return f
}

// validateEvent checks that b is one JSON object in UTF-8.
func validateEvent(b []byte) error {
	if !utf8.Valid(b) {
		return errors.New("not valid UTF-8")
	}
	if !json.Valid(b) {
		var v any
		err := json.Unmarshal(b, &v)
		if err == nil {
			err = errors.New("invalid JSON")
		}
		return fmt.Errorf("not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if kind := jsonKind(b); kind != "an object" {
		return fmt.Errorf("must be a JSON object, got %s", kind)
	}
	return nil
}

// jsonKind names the kind of the JSON value b starts with.
func jsonKind(b []byte) string {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return "an object"
		case '[':
			return "an array"
		case '"':
			return "a string"
		case 't', 'f':
			return "a boolean"
		case 'n':
			return "null"
		default:
			return "a number"
		}
	}
	return "nothing"
}
