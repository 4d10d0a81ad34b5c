package app

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/httpapi"
	"fanout/internal/service"
)

// TestDeliveries_List: the dead letters and other states page by page,
// filtered by destination and time, and every bad query named.
func TestDeliveries_List(t *testing.T) {
	t.Parallel()
	ts := newTestAPI(t)
	srv := httptest.NewServer(ts.handler)
	defer srv.Close()
	// Five failed deliveries of one event, to two destinations, at two times,
	// and one pending.
	t0 := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	calls := []*dispatch.Call{{ID: "evt", Function: "handleEvent", Input: []byte(`{}`), RunAfter: t0, CreatedAt: t0,
		State: dispatch.StateWaiting, Gathers: 1, Waiting: 6}}
	for i := range 6 {
		c := &dispatch.Call{ID: fmt.Sprintf("evt.0.%d", i), Function: "publishEvent", ParentID: "evt", Index: i,
			Key: []string{"dst_a", "dst_b"}[i%2], Input: []byte(`{}`), RunAfter: t0, CreatedAt: t0.Add(time.Duration(i) * time.Hour),
			State: dispatch.StateFailed, Error: "destination answered 500", Status: dispatch.StatusPermanent}
		if i == 5 {
			c.State, c.Error = dispatch.StatePending, ""
		}
		calls = append(calls, c)
	}
	if _, err := ts.store.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	type page struct {
		Deliveries []service.DeliveryView
		NextCursor string `json:"next_cursor"`
	}
	tests := []struct {
		name, query string
		want        []string // delivery ids, in order
		next        bool
	}{
		{"FailedByDefault", "", []string{"evt.0.0", "evt.0.1", "evt.0.2", "evt.0.3", "evt.0.4"}, false},
		{"Destination", "?destination=dst_a", []string{"evt.0.0", "evt.0.2", "evt.0.4"}, false},
		{"Since", "?since=2026-11-28T12:00:00Z", []string{"evt.0.2", "evt.0.3", "evt.0.4"}, false},
		{"Until", "?until=2026-11-28T11:00:00Z", []string{"evt.0.0"}, false},
		{"Pending", "?state=pending", []string{"evt.0.5"}, false},
		{"FirstPage", "?limit=2", []string{"evt.0.0", "evt.0.1"}, true},
		{"NextPage", "?limit=2&cursor=evt.0.1", []string{"evt.0.2", "evt.0.3"}, true},
	}
	for _, tc := range tests {
		var p page
		if code := call(t, "GET", srv.URL+"/v1/deliveries"+tc.query, nil, &p); code != 200 {
			t.Fatalf("%s: %d", tc.name, code)
		}
		var got []string
		for _, d := range p.Deliveries {
			got = append(got, d.ID)
			if d.EventID != "evt" || (d.State == "failed" && d.LastError == "") {
				t.Fatalf("%s: delivery %+v", tc.name, d)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) || (p.NextCursor != "") != tc.next {
			t.Fatalf("%s: got %v (next %q), want %v (next %v)", tc.name, got, p.NextCursor, tc.want, tc.next)
		}
	}
	for _, bad := range []struct{ query, says string }{
		{"?state=lost", "state must be"},
		{"?since=yesterday", "since must be an RFC 3339 time"},
		{"?limit=0", "limit must be a number from 1 to 1000"},
		{"?limit=1001", "limit must be"},
	} {
		var e httpapi.ErrorBody
		if code := call(t, "GET", srv.URL+"/v1/deliveries"+bad.query, nil, &e); code != 400 || !strings.Contains(e.Error, bad.says) {
			t.Errorf("GET /v1/deliveries%s: %d %q, want 400 saying %q", bad.query, code, e.Error, bad.says)
		}
	}
	var e httpapi.ErrorBody
	if code := call(t, "POST", srv.URL+"/v1/deliveries/retry", `{"state":"pending"}`, &e); code != 400 ||
		!strings.Contains(e.Error, "only failed deliveries") {
		t.Errorf("re-drive of pending deliveries: %d %q", code, e.Error)
	}
	if code := call(t, "GET", srv.URL+"/v1/deliveries/nope", nil, &e); code != 404 || !strings.Contains(e.Error, "nope") {
		t.Errorf("unknown delivery: %d %q", code, e.Error)
	}
}
