package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/internal/service"
)

// TestRun_TransformCannotReadHeaderValues: a destination's header values
// are write-only (view_secret), and a transformation is set with manage
// and transform, which a portal link grants without view_secret. A
// handler that read them could put them where a reader sees them: the
// error it throws (the attempt's error, last_error) or its cancellation's
// reason. It reads them masked; a header it keeps (its mask) is sent with
// its stored value.
func TestRun_TransformCannotReadHeaderValues(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	var mu sync.Mutex
	// Authorization|X-Copy of each request, by event: a failed attempt of
	// an earlier case is retried meanwhile, with the program of its time.
	got := map[string][]string{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		id := r.Header.Get("webhook-id")
		got[id] = append(got[id], r.Header.Get("Authorization")+"|"+r.Header.Get("X-Copy"))
		mu.Unlock()
	}))
	t.Cleanup(recv.Close)
	const credential = "Bearer receiver-credential-of-acme-9876"
	var tok struct{ Token string }
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "acme transform", "rights": []string{"ingest", "read", "manage", "transform"},
		"tenant": "acme", "expires_in": "1h"}, &tok)
	var d struct{ ID string }
	f.must(t, 201, f.operator, "POST", "/v1/tenants/acme/destinations", map[string]any{"url": recv.URL, "filter": []string{"probe.*"},
		"headers": map[string]string{"Authorization": credential}}, &d)
	for _, tc := range []struct {
		name, src string
		state     string // of the delivery; "" a failed attempt
		sent      string // Authorization|X-Copy the receiver got, when delivered
	}{
		{"thrown", "function handler(w) { throw new Error('got ' + w.headers.Authorization) }", "", ""},
		{"cancelled with it", "function handler(w) { w.cancel = 'got ' + w.headers['Authorization'] }", "cancelled", ""},
		{"kept, and copied", "function handler(w) { w.headers['X-Copy'] = w.headers.Authorization }", "delivered", credential + "|…9876"},
		{"renamed case", "function handler(w) { var v = w.headers.Authorization; delete w.headers.Authorization; w.headers.authorization = v }", "delivered", credential + "|"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.must(t, 200, tok.Token, "PATCH", "/v1/destinations/"+d.ID, map[string]any{"transform": tc.src}, nil)
			var e struct{ ID string }
			f.must(t, 202, tok.Token, "POST", "/v1/event", `{"type":"probe.x"}`, &e)
			var ev service.EventView
			eventually(t, "the delivery attempted", 10*time.Second, func() bool {
				f.must(t, 200, tok.Token, "GET", "/v1/events/"+e.ID, nil, &ev)
				for _, dv := range ev.Deliveries {
					if dv.DestinationID == d.ID {
						return (tc.state == "" && dv.LastError != "") || (tc.state != "" && dv.State == tc.state)
					}
				}
				return false
			})
			for _, path := range []string{"/v1/events/" + e.ID, "/v1/deliveries?destination=" + d.ID} {
				if _, b := f.as(t, tok.Token, "GET", path, nil); strings.Contains(b, credential) || strings.Contains(b, "credential-of-acme") {
					t.Errorf("GET %s shows the header value to a token without view_secret:\n%s", path, b)
				}
			}
			if tc.sent != "" {
				mu.Lock()
				sent := got[e.ID]
				mu.Unlock()
				if len(sent) != 1 || sent[0] != tc.sent {
					t.Errorf("the receiver got Authorization|X-Copy %q, want [%q]", sent, tc.sent)
				}
			}
		})
	}
}
