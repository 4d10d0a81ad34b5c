package service

import (
	"fanout/destination"
	"fanout/destination/match"
	"testing"
)

// TestRouted: replays route events as fan-outs do: by the destination's
// filter, and an operational event only to a destination that named such
// events and that it is not about.
func TestRouted(t *testing.T) {
	t.Parallel()
	about := func(id string) func() ([]byte, bool) {
		return func() ([]byte, bool) { return []byte(`{"data":{"destination_id":"` + id + `"}}`), true }
	}
	unreadable := func() ([]byte, bool) { return nil, false }
	tests := []struct {
		name    string
		filter  []string
		typ     string
		payload func() ([]byte, bool)
		want    bool
	}{
		{"PlainEvent", nil, "order.paid", about(""), true},
		{"FilteredOut", []string{"user.*"}, "order.paid", about(""), false},
		{"NoticeToCatchAll", nil, "fanout.destination.paused", about("dst_b"), false},
		{"NoticeToStar", []string{"*"}, "fanout.destination.paused", about("dst_b"), false},
		{"NoticeByName", []string{"fanout.*"}, "fanout.destination.paused", about("dst_b"), true},
		{"NoticeAboutItself", []string{"fanout.*"}, "fanout.destination.paused", about("dst_a"), false},
		{"NoticeUnreadable", []string{"fanout.*"}, "fanout.destination.paused", unreadable, false},
	}
	for _, tc := range tests {
		d := &destination.Destination{ID: "dst_a", Filter: tc.filter}
		if got := routed(d, tc.typ, match.Envelope{}, tc.payload); got != tc.want {
			t.Errorf("%s: routed = %v, want %v", tc.name, got, tc.want)
		}
	}
}
