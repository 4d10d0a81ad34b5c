package app

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"fanout/destination"
	"fanout/internal/httpapi"
	"fanout/internal/service"
	"fanout/webhook"
)

func TestDestinations_API(t *testing.T) {
	t.Parallel()
	svc := newTestAPI(t)
	srv := httptest.NewServer(svc.handler)
	defer srv.Close()
	base := srv.URL + "/v1/destinations"

	var d destination.Destination
	if code := call(t, "POST", base, map[string]any{"url": "https://hooks.example.com/a", "filter": []string{"order.*"},
		"headers": map[string]string{"Authorization": "Bearer x"}}, &d); code != 201 {
		t.Fatalf("create: %d", code)
	}
	if !strings.HasPrefix(d.ID, "dst_") || !strings.HasPrefix(d.Secret, "whsec_") || !d.Enabled ||
		d.MaxConcurrency != destination.DefaultConcurrency || d.Version != 1 {
		t.Fatalf("created %+v, want an id, a generated secret, enabled, default concurrency, version 1", d)
	}
	var got destination.Destination
	if code := call(t, "GET", base+"/"+d.ID, nil, &got); code != 200 || got.URL != d.URL || got.Secret != destination.MaskSecret(d.Secret) {
		t.Fatalf("get: %d %+v", code, got)
	}
	var list struct{ Destinations []destination.Destination }
	if code := call(t, "GET", base, nil, &list); code != 200 || len(list.Destinations) != 1 {
		t.Fatalf("list: %d %+v", code, list)
	}
	if code := call(t, "PATCH", base+"/"+d.ID, map[string]any{"enabled": false, "max_concurrency": 3}, &got); code != 200 ||
		got.Enabled || got.MaxConcurrency != 3 || got.URL != d.URL || got.Version != 2 {
		t.Fatalf("patch: %d %+v, want disabled, concurrency 3, the rest kept", code, got)
	}
	if code := call(t, "POST", base+"/"+d.ID+"/rotate-secret", nil, &got); code != 200 || got.Secret == d.Secret ||
		got.PreviousSecret != d.Secret || got.PreviousSecretExpires == nil {
		t.Fatalf("rotate: %d %+v, want a new secret with the old one kept for the grace period", code, got)
	}
	if code := call(t, "PATCH", base+"/"+d.ID, map[string]any{"paused": true}, &got); code != 200 || !got.Paused {
		t.Fatalf("pause: %d %+v", code, got)
	}
	if code := call(t, "POST", base+"/"+d.ID+"/resume", nil, &got); code != 200 || got.Paused {
		t.Fatalf("resume: %d %+v", code, got)
	}
	if code := call(t, "DELETE", base+"/"+d.ID, nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	var e httpapi.ErrorBody
	if code := call(t, "GET", base+"/"+d.ID, nil, &e); code != 404 || !strings.Contains(e.Error, d.ID) {
		t.Fatalf("get after delete: %d %q", code, e.Error)
	}
	if code := call(t, "DELETE", base+"/"+d.ID, nil, &e); code != 404 {
		t.Fatalf("second delete: %d", code)
	}
}

func TestDestinations_Reject(t *testing.T) {
	t.Parallel()
	store := openTestStore(t, t.TempDir())
	svc := newTestService(t, store)
	// The guard of a real run: loopback and private addresses refused.
	svc.svc.Dests = destination.NewRegistry(destination.Config{Store: store, Guard: webhook.NewGuard(nil)})
	srv := httptest.NewServer(httpapi.NewHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), svc.svc, testLimits, nil, nil))
	defer srv.Close()
	tests := []struct {
		name string
		body string
		want string
	}{
		{"NoURL", `{"description":"x"}`, "url is required"},
		{"Scheme", `{"url":"ftp://example.com"}`, "must be http or https"},
		{"Credentials", `{"url":"https://u:p@example.com"}`, "credentials"},
		{"Loopback", `{"url":"http://127.0.0.1:9000/x"}`, "--allow-network 127.0.0.1/32"},
		{"Metadata", `{"url":"http://169.254.169.254/latest"}`, "link-local"},
		{"LongURL", `{"url":"https://example.com/` + strings.Repeat("a", 2100) + `"}`, "longer than 2048"},
		{"BadFilter", `{"url":"https://example.com","filter":["a*b"]}`, "only a trailing *"},
		{"ReservedHeader", `{"url":"https://example.com","headers":{"webhook-id":"x"}}`, "set by fanout"},
		{"BadSecret", `{"url":"https://example.com","secret":"hunter2"}`, "whsec_"},
		{"Concurrency", `{"url":"https://example.com","max_concurrency":5000}`, "max_concurrency"},
		{"ZeroConcurrency", `{"url":"https://example.com","max_concurrency":0}`, "leave it out for the default"},
		{"RetryForever", `{"url":"https://example.com","retry":{"initial":"1s"}}`, "retried forever"},
		{"UnknownField", `{"url":"https://example.com","colour":"red"}`, `unknown field "colour"`},
		{"NotJSON", `{"url":`, "request body"},
		{"BadDuration", `{"url":"https://example.com","retry":{"max_age":"forever"}}`, "duration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e httpapi.ErrorBody
			if code := call(t, "POST", srv.URL+"/v1/destinations", tc.body, &e); code != 400 || !strings.Contains(e.Error, tc.want) {
				t.Fatalf("POST %s: %d %q, want 400 containing %q", tc.body, code, e.Error, tc.want)
			}
		})
	}
	var list struct{ Destinations []destination.Destination }
	call(t, "GET", srv.URL+"/v1/destinations", nil, &list)
	if len(list.Destinations) != 0 {
		t.Fatalf("refused destinations were stored: %+v", list.Destinations)
	}
	var e httpapi.ErrorBody
	if code := call(t, "PATCH", srv.URL+"/v1/destinations/nope", `{"enabled":true}`, &e); code != 404 {
		t.Fatalf("PATCH of an unknown destination: %d %q", code, e.Error)
	}
}

// TestRun_DestinationsEndToEnd routes by type, signs, records, disables a
// gone destination, lists its dead letters and re-drives them.
func TestRun_DestinationsEndToEnd(t *testing.T) {
	t.Parallel()
	orders, all := newSignedReceiver(t), newSignedReceiver(t)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--retry-initial", "20ms", "--retry-max", "100ms"}, nil)
	var dOrders, dAll destination.Destination
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": orders.URL, "filter": []string{"order.*"}}, &dOrders); code != 201 {
		t.Fatalf("create: %d", code)
	}
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": all.URL}, &dAll); code != 201 {
		t.Fatalf("create: %d", code)
	}
	orders.setSecret(t, dOrders.Secret)
	all.setSecret(t, dAll.Secret)

	post := func(body string) string {
		var r struct{ ID string }
		if code := call(t, "POST", base+"/v1/event", body, &r); code != 202 {
			t.Fatalf("ingest %s: %d", body, code)
		}
		return r.ID
	}
	paid, signup, untyped := post(`{"type":"order.paid","n":1}`), post(`{"type":"user.signup"}`), post(`{"n":3}`)
	eventually(t, "deliveries", 10*time.Second, func() bool {
		return orders.has(paid) && all.has(paid) && all.has(signup) && all.has(untyped)
	})
	if orders.has(signup) || orders.has(untyped) || orders.bad+all.bad != 0 {
		t.Fatalf("the order.* destination got other types, or signatures failed (%d, %d)", orders.bad, all.bad)
	}
	var ev service.EventView
	eventually(t, "event delivered", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+paid, nil, &ev)
		return ev.State == "delivered"
	})
	if len(ev.Deliveries) != 2 || ev.Deliveries[0].LastStatus != 204 || ev.Deliveries[0].DeliveredAt == nil ||
		string(ev.Event) != `{"type":"order.paid","n":1}` {
		t.Fatalf("event view %+v", ev)
	}

	// A destination that answers 410 is disabled; its delivery fails for good.
	all.status.Store(http.StatusGone)
	gone := post(`{"type":"user.left"}`)
	eventually(t, "410 disables the destination", 10*time.Second, func() bool {
		var d destination.Destination
		call(t, "GET", base+"/v1/destinations/"+dAll.ID, nil, &d)
		return !d.Enabled && strings.Contains(d.Reason, "410")
	})
	var dead struct {
		Deliveries []service.DeliveryView
		NextCursor string `json:"next_cursor"`
	}
	eventually(t, "the dead letter", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/deliveries?state=failed&destination="+dAll.ID, nil, &dead)
		return len(dead.Deliveries) == 1
	})
	if d := dead.Deliveries[0]; d.EventID != gone || d.State != "failed" || !strings.Contains(d.LastError, "410") {
		t.Fatalf("dead letter %+v", d)
	}
	var one service.DeliveryView
	call(t, "GET", base+"/v1/deliveries/"+dead.Deliveries[0].ID, nil, &one)
	if len(one.History) != 1 || one.History[0].Status != 410 || one.LastStatus != 410 {
		t.Fatalf("delivery %+v, want one recorded attempt with status 410", one)
	}
	var e httpapi.ErrorBody
	if code := call(t, "POST", base+"/v1/deliveries/"+paid+".0.0/retry", nil, &e); code != 409 {
		t.Fatalf("retry of a delivered delivery: %d %q, want 409", code, e.Error)
	}
	if code := call(t, "POST", base+"/v1/deliveries/nope/retry", nil, &e); code != 404 {
		t.Fatalf("retry of an unknown delivery: %d", code)
	}

	// Fixed and enabled again, the dead letter is re-driven and delivered.
	all.status.Store(0)
	call(t, "PATCH", base+"/v1/destinations/"+dAll.ID, map[string]any{"enabled": true}, nil)
	var retried struct {
		Retried int
		More    bool
	}
	if code := call(t, "POST", base+"/v1/deliveries/retry", map[string]any{"destination": dAll.ID}, &retried); code != 202 || retried.Retried != 1 {
		t.Fatalf("bulk retry: %d %+v", code, retried)
	}
	eventually(t, "the re-driven delivery", 10*time.Second, func() bool { return all.has(gone) })
	eventually(t, "the event delivered", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+gone, nil, &ev)
		return ev.State == "delivered"
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
