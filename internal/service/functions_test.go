package service

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMessage_MarshalJSON(t *testing.T) {
	t.Parallel()
	events := []string{`{"a":1}`, " {\n \"h\" : \"<&>\\u00e9\" , \"n\": 1.50e2 }\t", `{}`}
	for _, e := range events {
		m := Message{EventID: "id-1", DestinationID: "dst_\"<", Event: json.RawMessage(e)}
		b, err := m.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(b) {
			t.Fatalf("MarshalJSON = %s, not valid JSON", b)
		}
		var back Message
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.EventID != m.EventID || back.DestinationID != "" || string(back.Event) != strings.TrimSpace(e) && string(back.Event) != e {
			t.Fatalf("round trip of %q gave %+v", e, back)
		}
		if !bytes.Contains(b, []byte(e)) {
			t.Fatalf("MarshalJSON = %s does not carry the event bytes %q as they are", b, e)
		}
	}
	// A delivery as handleEvent makes it stores nothing its call says
	// already (the destination is its key, the event its parent's input).
	if b, _ := (Message{DestinationID: "dst_1"}).MarshalJSON(); string(b) != "{}" {
		t.Fatalf("MarshalJSON of a delivery = %s, want {}", b)
	}
	// Deliveries stored before carry the event, its id and the destination.
	var old Message
	if err := json.Unmarshal([]byte(`{"event_id":"e1","destination_id":"dst_\u0031","event": {"a":[1]} }`), &old); err != nil ||
		old.EventID != "e1" || old.DestinationID != "dst_1" || string(old.Event) != `{"a":[1]}` {
		t.Fatalf("an old message decoded as %+v, %v", old, err)
	}
}

func TestEventFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		event   string
		typ, id string
	}{
		{`{"type":"user.created","id":"evt_1"}`, "user.created", "evt_1"},
		{`{"id":42,"type":"a"}`, "a", "42"},
		{`{"id":-1.5e3}`, "", "-1.5e3"},
		{`{"type":"caf\u00e9","id":"a\"b"}`, "café", `a"b`},
		{`{"type":1,"id":true}`, "", ""},
		{`{"type":null,"id":{"x":1}}`, "", ""},
		{`{"data":{"type":"nested","id":"nested"}}`, "", ""},
		{`{"TYPE":"upper","Id":"upper"}`, "", ""},
		{`{"type":"first","type":"second"}`, "first", ""},
		{` { "type" : "spaced" } `, "spaced", ""},
		{`{}`, "", ""},
	}
	for _, tt := range tests {
		f := EventFields(json.RawMessage(tt.event))
		if f.Type != tt.typ || f.ID != tt.id {
			t.Errorf("eventFields(%s) = %+v, want type %q id %q", tt.event, f, tt.typ, tt.id)
		}
	}
}

// FuzzEventFields checks eventFields against a reference on encoding/json's
// token stream: the first top-level "type" that is a string, the first
// top-level "id" that is a string (decoded) or a number (as written).
func FuzzEventFields(f *testing.F) {
	for _, s := range []string{`{"type":"a.b","id":"x"}`, `{"id":12}`, `{"type":"\u00e9\n","id":"\"q"}`,
		`{"a":{"type":"n"},"type":"t"}`, `{"type":"1","type":"2"}`, `{"ty\u0070e":"escaped key"}`, `{"id":[1,{"id":2}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, event []byte) {
		if trimmed := bytes.TrimLeft(event, " \t\r\n"); !utf8.Valid(event) || !json.Valid(event) || len(trimmed) == 0 || trimmed[0] != '{' {
			return // not an event: ingest refuses it (httpapi.ValidateEvent)
		}
		got := EventFields(event)
		var want fields
		var haveType, haveID bool
		dec := json.NewDecoder(bytes.NewReader(event))
		dec.UseNumber()
		if _, err := dec.Token(); err != nil { // {
			t.Fatal(err)
		}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			switch k {
			case "type":
				if !haveType {
					haveType = true
					want.Type, _ = v.(string)
				}
			case "id":
				if !haveID {
					haveID = true
					switch v := v.(type) {
					case string:
						want.ID = v
					case json.Number:
						want.ID = v.String()
					}
				}
			}
		}
		if got != want {
			t.Fatalf("eventFields(%q) = %+v, want %+v", event, got, want)
		}
	})
}

// FuzzMessageUnmarshal checks Message.UnmarshalJSON, which reads every
// delivery's stored input with gjson, against a reference on
// encoding/json's token stream: never a panic; an error exactly for what
// is not JSON; for JSON, the first top-level "event_id", "destination_id"
// and "tenant" that are strings (decoded; anything else reads as ""), the
// first top-level "event" as written (null or absent: none), nothing for
// what is not an object; and what it read is written back and read again
// the same by MarshalJSON (the destination, the call's key, is left out).
func FuzzMessageUnmarshal(f *testing.F) {
	for _, s := range []string{`{}`, `{"event_id":"evt_1","destination_id":"dst_1","tenant":"acme","event":{"type":"a","n":1.50e2}}`,
		`{"event":null}`, `{"event": [1, {"x":"<&>"}] , "tenant":7}`, `{"tenant":"a","tenant":"b"}`, `{"event_\u0069d":"escaped key"}`,
		`{"Event_ID":"case","x":{"event_id":"nested"}}`, `["event_id","x"]`, `"event_id"`, `{"tenant":"\ud800\u00e9\n"}`, `{"event":`, ` {"event" : "s" } `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Message
		err := got.UnmarshalJSON(data)
		if !utf8.Valid(data) {
			return // stored inputs are UTF-8: encoding/json and gjson differ on the rest, which nothing stores
		}
		if (err == nil) != json.Valid(data) {
			t.Fatalf("UnmarshalJSON(%q): error %v, but json.Valid says %v", data, err, json.Valid(data))
		}
		if err != nil {
			return
		}
		var want Message
		dec := json.NewDecoder(bytes.NewReader(data))
		if tok, err := dec.Token(); err != nil {
			t.Fatal(err)
		} else if tok == json.Delim('{') {
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					t.Fatal(err)
				}
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					t.Fatal(err)
				}
				key := k.(string)
				if seen[key] {
					continue
				}
				seen[key] = true
				var str string
				_ = json.Unmarshal(raw, &str) // "" for what is not a string
				switch key {
				case "event_id":
					want.EventID = str
				case "destination_id":
					want.DestinationID = str
				case "tenant":
					want.Tenant = str
				case "event":
					if string(raw) != "null" {
						want.Event = raw
					}
				}
			}
		}
		if got.EventID != want.EventID || got.DestinationID != want.DestinationID || got.Tenant != want.Tenant ||
			!bytes.Equal(got.Event, want.Event) || got.OrderKey != "" {
			t.Fatalf("UnmarshalJSON(%q) = %+v (event %q), want %+v (event %q)", data, got, got.Event, want, want.Event)
		}
		b, err := got.MarshalJSON()
		if err != nil || !json.Valid(b) {
			t.Fatalf("MarshalJSON(%+v) = %q, %v: not JSON", got, b, err)
		}
		var back Message
		if err := back.UnmarshalJSON(b); err != nil || back.EventID != got.EventID || back.Tenant != got.Tenant ||
			!bytes.Equal(back.Event, got.Event) || back.DestinationID != "" {
			t.Fatalf("%+v written as %q reads back as %+v (%v)", got, b, back, err)
		}
	})
}

func TestFanout_MarshalJSON(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 2, 1234} {
		b, err := json.Marshal(Fanout{Destinations: n})
		if err != nil {
			t.Fatal(err)
		}
		var back Fanout
		if err := json.Unmarshal(b, &back); err != nil || back.Destinations != n {
			t.Fatalf("Fanout{%d} marshals to %s, which reads back as %+v (%v)", n, b, back, err)
		}
	}
}
