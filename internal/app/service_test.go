package app

import (
	"context"
	"encoding/json"
	"testing"

	"fanout/internal/service"
)

// TestService_Ingest: what ingest stores for each event: its bytes, its
// type as the call's tag, and the dedup key that decides a repeat (the
// request's Idempotency-Key, with the event's index in a batch, else the
// event's own id).
func TestService_Ingest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		events  []string
		key     string
		tags    []string
		repeats bool // the same ingest again gives the same ids
	}{
		{"TypedWithID", []string{`{"type":"order.paid","id":"o-1"}`}, "", []string{"order.paid"}, true},
		{"UntypedNoID", []string{`{"n":1}`}, "", []string{""}, false},
		{"NumberTypeIsNoType", []string{`{"type":7}`}, "", []string{""}, false},
		{"KeyedBatch", []string{`{"type":"a"}`, `{"type":"b"}`}, "req-1", []string{"a", "b"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestAPI(t)
			events := make([]json.RawMessage, len(tc.events))
			for i, e := range tc.events {
				events[i] = json.RawMessage(e)
			}
			ids, err := ts.svc.Ingest(context.Background(), service.AllTenants(), service.DefaultTenant, events, tc.key)
			if err != nil || len(ids) != len(events) {
				t.Fatalf("Ingest = %v, %v", ids, err)
			}
			for i, id := range ids {
				c, err := ts.store.CallGet(context.Background(), id)
				if err != nil {
					t.Fatal(err)
				}
				if string(c.Input) != tc.events[i] || c.Tag != tc.tags[i] || c.Function != "handleEvent" {
					t.Fatalf("stored %s tag %q as %s, want %s tag %q", c.Input, c.Tag, c.Function, tc.events[i], tc.tags[i])
				}
			}
			again, err := ts.svc.Ingest(context.Background(), service.AllTenants(), service.DefaultTenant, events, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if same := again[0] == ids[0]; same != tc.repeats {
				t.Fatalf("ingest again gave %v after %v: repeat=%v, want %v", again, ids, same, tc.repeats)
			}
			if got := ts.svc.Accepted.Load(); got != int64(2*len(events)) {
				t.Fatalf("accepted %d, want %d (a dropped repeat counts too)", got, 2*len(events))
			}
		})
	}
}
