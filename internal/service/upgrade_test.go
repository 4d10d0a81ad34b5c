package service

import (
	"fanout/dispatch"
	"testing"
)

// compactDelivery drops a delivery's copy of its event only when the
// delivery would send the same bytes, under the same id, to the same
// destination without it.
func TestCompactDelivery(t *testing.T) {
	const parent = ` {"type":"a", "x":"<&>"}` + "\n"
	for _, tc := range []struct {
		name, input string
		ok          bool
	}{
		{"OldMessage", `{"event_id":"e1","destination_id":"d1","event":{"type":"a", "x":"<&>"}}`, true},
		{"NoIDs", `{"event":{"type":"a", "x":"<&>"}}`, true},
		{"AlreadyCompact", `{}`, false},
		{"OtherEvent", `{"event_id":"e1","destination_id":"d1","event":{"type":"b"}}`, false},
		{"OtherBytes", `{"event_id":"e1","destination_id":"d1","event":{"type":"a","x":"<&>"}}`, false},
		{"OtherID", `{"event_id":"e2","destination_id":"d1","event":{"type":"a", "x":"<&>"}}`, false},
		{"OtherDestination", `{"event_id":"e1","destination_id":"d2","event":{"type":"a", "x":"<&>"}}`, false},
		{"NotJSON", `{"event":`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &dispatch.Call{ID: "e1.0.0", ParentID: "e1", Key: "d1", Input: []byte(tc.input), ParentInput: []byte(parent)}
			in, ok := compactDelivery(c)
			if ok != tc.ok || (ok && string(in) != "{}") {
				t.Fatalf("compactDelivery(%s) = %s, %v; want %v", tc.input, in, ok, tc.ok)
			}
		})
	}
}
