package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"fanout/dispatch"
	"fanout/webhook"
)

// An event is one JSON object, kept as the exact bytes the client sent:
// destinations receive those bytes, not a re-encoding of them. Its id is the
// id of the handleEvent call that fans it out.

// Message is the input of publishEvent: one event for one destination.
type Message struct {
	EventID string          `json:"event_id"`
	URL     string          `json:"url"`
	Event   json.RawMessage `json:"event"`
}

// MarshalJSON writes the event's bytes as they are; encoding/json would
// compact them and escape <, > and &, and the destination would then receive
// something other than what the client sent.
func (m Message) MarshalJSON() ([]byte, error) {
	type plain Message // the same fields without this method
	head, err := json.Marshal(plain{EventID: m.EventID, URL: m.URL})
	if err != nil {
		return nil, err
	}
	event := m.Event
	if len(event) == 0 {
		event = json.RawMessage("null")
	}
	// head is {"event_id":...,"url":...,"event":null}: swap in the bytes.
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

// Destinations says where an event goes.
type Destinations interface {
	// For returns the URLs that must receive the event.
	For(ctx context.Context, event json.RawMessage) ([]string, error)
}

// staticDestinations sends every event to every configured URL.
type staticDestinations []string

func (d staticDestinations) For(context.Context, json.RawMessage) ([]string, error) { return d, nil }

// functions are the two durable functions of the seed: handleEvent fans an
// event out with Gather, one publishEvent per destination, and each
// publishEvent is retried on its own until its destination has the event.
type functions struct {
	handleEvent  *dispatch.Function[json.RawMessage, Fanout]
	publishEvent *dispatch.Function[Message, Delivery]
}

func newFunctions(dests Destinations, client *webhook.Client) *functions {
	publishEvent := dispatch.Func("publishEvent", func(ctx context.Context, m Message) (Delivery, error) {
		res, err := client.Send(ctx, &webhook.Request{URL: m.URL, ID: m.EventID, Body: m.Event})
		if err != nil {
			return Delivery{}, err
		}
		return *res, nil
	})
	handleEvent := dispatch.Func("handleEvent", func(ctx context.Context, event json.RawMessage) (Fanout, error) {
		call, _ := dispatch.CallFromContext(ctx)
		urls, err := dests.For(ctx, event)
		if err != nil {
			return Fanout{}, fmt.Errorf("%w: find destinations: %v", dispatch.ErrTemporary, err)
		}
		messages := make([]Message, len(urls))
		for i, u := range urls {
			messages[i] = Message{EventID: call.ID, URL: u, Event: event}
		}
		deliveries, err := publishEvent.Gather(ctx, messages)
		if err != nil {
			return Fanout{}, err
		}
		return Fanout{Destinations: len(deliveries)}, nil
	}).Eager() // it only reads before its Gather: store it with its deliveries, in one write
	return &functions{handleEvent: handleEvent, publishEvent: publishEvent}
}

// ingest stores events atomically, each as a handleEvent call, and returns
// their ids in order once they are durable.
func (f *functions) ingest(ctx context.Context, rt *dispatch.Runtime, events []json.RawMessage) ([]string, error) {
	batch := rt.Batch()
	for _, e := range events {
		call, err := f.handleEvent.BuildCall(e)
		if err != nil {
			return nil, err
		}
		batch.Add(call)
	}
	return batch.Dispatch(ctx)
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
