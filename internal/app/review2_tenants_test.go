package app

import (
	"strings"
	"testing"
	"time"

	"fanout/internal/service"
)

// TestRun_TenantNewRoutes: the routes of ordering, transformations and
// event types, tried across tenants and without their right. Another
// tenant's thing is missing (404), never shown; a right the token lacks is
// 403. Each row has a control with the owner's token, so that a 404 is the
// wall and not a wrong path.
func TestRun_TenantNewRoutes(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	// globex: an ordered destination and a delivery to it, with an order
	// key that only globex may learn.
	const globexKey = "globex-customer-marker-77"
	f.must(t, 200, f.operator, "PATCH", "/v1/destinations/"+f.destG, map[string]any{"ordering": map[string]any{"key": "customer"}}, nil)
	var e struct{ ID string }
	f.must(t, 202, f.tokens["globexAll"], "POST", "/v1/event", `{"type":"order.paid","customer":"`+globexKey+`"}`, &e)
	var ev service.EventView
	var deliveryG string
	eventually(t, "globex's delivery listed", 10*time.Second, func() bool {
		f.must(t, 200, f.operator, "GET", "/v1/events/"+e.ID, nil, &ev)
		for _, d := range ev.Deliveries {
			if d.DestinationID == f.destG {
				deliveryG = d.ID
			}
		}
		return deliveryG != ""
	})
	var transformTok struct{ Token string }
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "acme transform", "rights": []string{"read", "manage", "transform"},
		"tenant": "acme", "expires_in": "1h"}, &transformTok)
	var globexTransform struct{ Token string }
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "globex transform", "rights": []string{"transform"},
		"tenant": "globex", "expires_in": "1h"}, &globexTransform)
	preview := func(dest string) map[string]any {
		return map[string]any{"transform": "function handler(w) { w.headers['X-Url'] = w.path }", "event": map[string]any{"type": "x"}, "destination": dest}
	}
	for _, tc := range []struct {
		name         string
		token        string
		method, path string
		body         any
		want         int
		owner        string // a token of the thing's tenant, which gets ownerWant
		ownerWant    int
	}{
		{"ordered keys of another tenant", f.tokens["acmeAll"], "GET", "/v1/destinations/" + f.destG + "/ordered-keys", nil, 404, f.tokens["globexAll"], 200},
		{"ordered keys under another tenant's path", f.tokens["acmeAll"], "GET", "/v1/tenants/globex/destinations/" + f.destG + "/ordered-keys", nil, 404, f.tokens["globexAll"], 200},
		{"ordered keys without read", f.tokens["acmeIngest"], "GET", "/v1/destinations/" + f.destA + "/ordered-keys", nil, 403, f.tokens["acmeAll"], 409},
		{"skip another tenant's delivery", f.tokens["acmeAll"], "POST", "/v1/deliveries/" + deliveryG + "/skip", nil, 404, f.tokens["globexAll"], 409},
		{"skip under another tenant's path", f.tokens["acmeAll"], "POST", "/v1/tenants/globex/deliveries/" + deliveryG + "/skip", nil, 404, f.tokens["globexAll"], 409},
		{"skip with read alone", f.tokens["acmeRead"], "POST", "/v1/deliveries/" + f.deliveryA + "/skip", nil, 403, f.tokens["acmeAll"], 409},
		{"preview with another tenant's destination", transformTok.Token, "POST", "/v1/transform", preview(f.destG), 404, globexTransform.Token, 200},
		{"preview under another tenant's path", transformTok.Token, "POST", "/v1/tenants/globex/transform", preview(f.destG), 404, globexTransform.Token, 200},
		{"preview with the all-tenants destination", transformTok.Token, "POST", "/v1/transform", preview(f.auditDest), 404, f.operator, 200},
		{"preview without transform", f.tokens["acmeAll"], "POST", "/v1/transform", preview(f.destA), 403, transformTok.Token, 200},
		{"event types of another tenant", f.tokens["acmeAll"], "GET", "/v1/tenants/globex/event-types", nil, 404, f.tokens["globexAll"], 200},
		{"another tenant's event", f.tokens["acmeAll"], "GET", "/v1/events/" + e.ID, nil, 404, f.tokens["globexAll"], 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, b := f.as(t, tc.token, tc.method, tc.path, tc.body)
			if st != tc.want || strings.Contains(b, globexKey) || strings.Contains(b, f.recvG.URL) {
				t.Errorf("%s %s: %d %s, want %d and nothing of globex", tc.method, tc.path, st, b, tc.want)
			}
			if st, b := f.as(t, tc.owner, tc.method, tc.path, tc.body); st != tc.ownerWant {
				t.Errorf("control, with the owner's token: %d %s, want %d", st, b, tc.ownerWant)
			}
		})
	}
}
