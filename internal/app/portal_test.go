package app

import (
	"net/http"
	"net/url"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"fanout/internal/httpapi"
	"fanout/internal/service"
)

// portalLink mints a portal of tenant with the operator's token.
func (f *tenantFixture) portalLink(t *testing.T, tenant string, in map[string]any) (link service.PortalLink, token string) {
	t.Helper()
	f.must(t, 201, f.operator, "POST", "/v1/tenants/"+tenant+"/portal", in, &link)
	u, err := url.Parse(link.URL)
	if err != nil {
		t.Fatal(err)
	}
	frag, err := url.ParseQuery(u.Fragment)
	if err != nil {
		t.Fatalf("fragment of %s: %v", link.URL, err)
	}
	return link, frag.Get("token")
}

// TestRun_PortalLink: only an operator mints a portal; its URL carries the
// token in its fragment alone; the token is the tenant's, with read (and
// manage) but never view_secret, and expires.
func TestRun_PortalLink(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)

	// Operator only: a tenant's token, even with every right, and a token
	// of every tenant are refused; no token is 401.
	for _, name := range []string{"acmeAll", "readAll", "globexAll"} {
		if status, body := f.as(t, f.tokens[name], "POST", "/v1/tenants/acme/portal", nil); status != 403 {
			t.Fatalf("POST /v1/tenants/acme/portal with %s: %d %s, want 403", name, status, body)
		}
	}
	if status, _ := f.as(t, "", "POST", "/v1/tenants/acme/portal", nil); status != 401 {
		t.Fatalf("POST /v1/tenants/acme/portal without a token: %d, want 401", status)
	}
	if status, _ := f.as(t, f.operator, "POST", "/v1/tenants/nobody/portal", nil); status != 404 {
		t.Fatalf("a portal of a tenant that does not exist: %d, want 404", status)
	}
	for _, bad := range []map[string]any{{"access": "admin"}, {"expires_in": "25h"}, {"expires_in": "-1h"}} {
		if status, _ := f.as(t, f.operator, "POST", "/v1/tenants/acme/portal", bad); status != 400 {
			t.Fatalf("portal %v: %d, want 400", bad, status)
		}
	}

	before := time.Now()
	link, token := f.portalLink(t, "acme", nil)
	u, _ := url.Parse(link.URL)
	if dir, key := path.Split(strings.TrimSuffix(u.Path, "/")); dir != "/portal/acme/" || !strings.HasPrefix(key, "pk_") ||
		!strings.HasSuffix(u.Path, "/") || u.RawQuery != "" || !strings.HasPrefix(u.Fragment, "token=") {
		t.Fatalf("portal URL %s: want /portal/acme/<page key>/ with the token in the fragment only", link.URL)
	}
	// Neither the token nor its secret is in what is sent to a server.
	if token == "" || len(token) < 30 || strings.Contains(strings.Split(link.URL, "#")[0], token[len("fo_")+17:]) || !strings.HasPrefix(link.URL, f.base+"/") {
		t.Fatalf("portal URL %s (base %s): the token must be in the fragment only", link.URL, f.base)
	}
	if d := link.ExpiresAt.Sub(before); d < 59*time.Minute || d > 61*time.Minute {
		t.Fatalf("a portal link lives 1h by default; this one %s", d)
	}

	// The token is acme's: its portal answers, with read and manage, and
	// sees acme's destination only.
	var info service.PortalInfo
	f.must(t, 200, token, "GET", "/v1/portal", nil, &info)
	if info.Tenant.ID != "acme" || info.Tenant.Name != "acme Inc." || !slices.Equal(info.Rights, []service.Right{"read", "manage"}) ||
		info.ExpiresAt == nil || !info.ExpiresAt.Equal(link.ExpiresAt) {
		t.Fatalf("GET /v1/portal: %+v", info)
	}
	var list struct{ Destinations []struct{ ID string } }
	f.must(t, 200, token, "GET", "/v1/destinations", nil, &list)
	if len(list.Destinations) != 1 || list.Destinations[0].ID != f.destA {
		t.Fatalf("a portal of acme lists %+v, want acme's %s only", list.Destinations, f.destA)
	}
	for _, path := range []string{"/v1/destinations/" + f.destG, "/v1/tenants/globex/destinations", "/v1/events/" + f.eventA + "x"} {
		if status, _ := f.as(t, token, "GET", path, nil); status != 404 {
			t.Fatalf("GET %s with acme's portal: %d, want 404", path, status)
		}
	}
	// Never view_secret: a portal sees a secret once, when it is made.
	if status, body := f.as(t, token, "GET", "/v1/destinations/"+f.destA+"/secret", nil); status != 403 || strings.Contains(body, f.secretA) {
		t.Fatalf("GET the secret with a portal's token: %d %s, want 403", status, body)
	}
	// GET /v1/portal is one tenant's: an operator or a token of every
	// tenant has none.
	for _, tok := range []string{f.operator, f.tokens["readAll"]} {
		if status, _ := f.as(t, tok, "GET", "/v1/portal", nil); status != 403 {
			t.Fatalf("GET /v1/portal without a tenant's token: %d, want 403", status)
		}
	}

	// A read portal reads and changes nothing.
	_, readToken := f.portalLink(t, "acme", map[string]any{"access": "read"})
	f.must(t, 200, readToken, "GET", "/v1/portal", nil, &info)
	if !slices.Equal(info.Rights, []service.Right{"read"}) {
		t.Fatalf("a read portal has %v", info.Rights)
	}
	if status, _ := f.as(t, readToken, "POST", "/v1/destinations", map[string]any{"url": "https://example.com/h"}); status != 403 {
		t.Fatalf("a read portal created a destination: %d", status)
	}
	if status, _ := f.as(t, readToken, "POST", "/v1/destinations/"+f.destA+"/test", nil); status != 403 {
		t.Fatalf("a read portal test-sent: %d", status)
	}

	// It expires.
	_, short := f.portalLink(t, "acme", map[string]any{"expires_in": "1s"})
	f.must(t, 200, short, "GET", "/v1/portal", nil, nil)
	time.Sleep(1100 * time.Millisecond)
	if status, _ := f.as(t, short, "GET", "/v1/portal", nil); status != 401 {
		t.Fatalf("an expired portal token: %d, want 401", status)
	}
}

// TestRun_PortalNeedsOperatorToken: without an operator token, no portal is
// minted; with --public-url, a link is built on it.
func TestRun_PortalNeedsOperatorToken(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	var e httpapi.ErrorBody
	if status := call(t, "POST", base+"/v1/tenants/default/portal", nil, &e); status != 403 || !strings.Contains(e.Error, "--api-token") {
		t.Fatalf("POST a portal without an operator token: %d %q, want 403 naming --api-token", status, e.Error)
	}

	const op = "operator-token-0123456789"
	base, _ = startRun(t, []string{"--data", t.TempDir(), "--api-token", op, "--public-url", "https://hooks.example.com/fanout"}, nil)
	auth := []string{"Authorization", "Bearer " + op}
	var link service.PortalLink
	if status := call(t, "POST", base+"/v1/tenants/default/portal", map[string]any{"access": "read"}, &link, auth...); status != 201 {
		t.Fatalf("POST a portal: %d", status)
	}
	if !strings.HasPrefix(link.URL, "https://hooks.example.com/fanout/portal/default/pk_") || !strings.Contains(link.URL, "/#token=fo_") {
		t.Fatalf("portal URL %s: want it on --public-url", link.URL)
	}
}

// TestRun_PortalEventTypes: a tenant's event types are those of its own
// events, never another tenant's.
func TestRun_PortalEventTypes(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	f.must(t, 202, f.tokens["globexAll"], "POST", "/v1/event", `{"type":"globex.private.merger"}`, nil)
	f.must(t, 202, f.operator, "POST", "/v1/tenants/acme/batch", `[{"type":"invoice.created"},{"type":"order.paid"},{"no":"type"}]`, nil)
	f.must(t, 202, f.operator, "POST", "/v1/event", `{"type":"default.only"}`, nil)
	_, token := f.portalLink(t, "acme", nil)
	want := []string{"invoice.created", "order.paid"}
	for _, c := range []struct{ token, path string }{
		{token, "/v1/event-types"},
		{f.tokens["acmeRead"], "/v1/event-types"},
		{f.operator, "/v1/tenants/acme/event-types"},
	} {
		var got struct{ Types []string }
		f.must(t, 200, c.token, "GET", c.path, nil, &got)
		if !slices.Equal(got.Types, want) {
			t.Fatalf("GET %s: %v, want acme's own %v", c.path, got.Types, want)
		}
	}
	var got struct{ Types []string }
	f.must(t, 200, f.tokens["globexAll"], "GET", "/v1/event-types", nil, &got)
	if !slices.Equal(got.Types, []string{"globex.private.merger"}) {
		t.Fatalf("globex's event types: %v", got.Types)
	}
	if status, _ := f.as(t, token, "GET", "/v1/tenants/globex/event-types", nil); status != 404 {
		t.Fatalf("globex's event types with acme's portal: %d, want 404", status)
	}
	if status, _ := f.as(t, f.tokens["acmeIngest"], "GET", "/v1/event-types", nil); status != 403 {
		t.Fatalf("event types with an ingest token: %d, want 403", status)
	}
}

// TestRun_PortalTestSend: a test event reaches the one destination it is
// sent to, not another destination of the tenant that would match it, nor
// the operator's destination of every tenant.
func TestRun_PortalTestSend(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	other := newReceiver(t)
	var d struct{ ID string }
	f.must(t, 201, f.operator, "POST", "/v1/tenants/acme/destinations", map[string]any{"url": other.URL}, &d)
	_, token := f.portalLink(t, "acme", nil)

	var sent service.TestSent
	f.must(t, 202, token, "POST", "/v1/destinations/"+f.destA+"/test", map[string]any{"type": "order.paid", "payload": map[string]any{"n": 1}}, &sent)
	eventually(t, "the test event at its destination", 10*time.Second, func() bool { _, ok := f.recvA.has(sent.EventID); return ok })
	var dv service.DeliveryView
	eventually(t, "its delivery delivered", 10*time.Second, func() bool {
		f.must(t, 200, token, "GET", "/v1/deliveries/"+sent.DeliveryID, nil, &dv)
		return dv.State == "delivered" && len(dv.History) == 1 && dv.History[0].Status == 204
	})
	if dv.DestinationID != f.destA || dv.EventID != sent.EventID {
		t.Fatalf("delivery %+v", dv)
	}
	body, _ := f.recvA.has(sent.EventID)
	if !strings.Contains(string(body), `"type":"order.paid"`) || !strings.Contains(string(body), `"test":true`) || !strings.Contains(string(body), `"n":1`) {
		t.Fatalf("the test event: %s", body)
	}
	// The event is acme's, with one delivery: to that destination.
	var ev service.EventView
	f.must(t, 200, f.operator, "GET", "/v1/events/"+sent.EventID, nil, &ev)
	if len(ev.Deliveries) != 1 || ev.Deliveries[0].DestinationID != f.destA {
		t.Fatalf("the test event's deliveries: %+v, want one to %s", ev.Deliveries, f.destA)
	}
	// An ordinary event of the same type reaches both of acme's
	// destinations and the operator's: the test event was kept from them
	// by its route, not by their filters.
	var e struct{ ID string }
	if status, _ := f.as(t, token, "POST", "/v1/event", `{"type":"order.paid"}`); status != 403 {
		t.Fatalf("a portal's token sent an event: %d, want 403 (it has no ingest right)", status)
	}
	f.must(t, 202, f.operator, "POST", "/v1/tenants/acme/event", `{"type":"order.paid"}`, &e)
	eventually(t, "an ordinary event at the other destination", 10*time.Second, func() bool {
		_, a := other.has(e.ID)
		_, b := f.audit.has(e.ID)
		return a && b
	})
	if _, ok := other.has(sent.EventID); ok {
		t.Fatal("the test event reached the tenant's other destination")
	}
	if _, ok := f.audit.has(sent.EventID); ok {
		t.Fatal("the test event reached the operator's destination of every tenant")
	}
	if _, ok := f.recvG.has(sent.EventID); ok {
		t.Fatal("the test event reached globex")
	}
	// Another tenant's destination is not found; the operator's of every
	// tenant gets no test event.
	if status, _ := f.as(t, token, "POST", "/v1/destinations/"+f.destG+"/test", nil); status != 404 {
		t.Fatalf("a test-send to globex's destination with acme's portal: %d, want 404", status)
	}
	if status, _ := f.as(t, f.operator, "POST", "/v1/destinations/"+f.auditDest+"/test", nil); status != 400 {
		t.Fatalf("a test-send to a destination of every tenant: %d, want 400", status)
	}
}

// TestRun_PortalFrameAncestors: a tenant's portal may be framed by the
// origins its operator lists, by no one without; the console never. The
// page answers them only to the path of a live link of that tenant (its
// page key): to anyone else, whatever the tenant, existing or not, it
// answers the same page, headers and body, framed by no one.
func TestRun_PortalFrameAncestors(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t, "--portal-logo-url", "https://CDN.logos.example/acme.svg")
	var tn service.Tenant
	f.must(t, 200, f.operator, "PUT", "/v1/tenants/acme", map[string]any{"portal_frame_ancestors": []string{"https://App.Acme.example/", "https://dash.acme.example:8443"}}, &tn)
	if !slices.Equal(tn.PortalFrameAncestors, []string{"https://app.acme.example", "https://dash.acme.example:8443"}) {
		t.Fatalf("portal_frame_ancestors stored as %v", tn.PortalFrameAncestors)
	}
	for _, bad := range []string{"http://acme.example", "https://acme.example/path", "https://a.example; script-src *", "https://a.example;script-src", "https://a.example,https://b.example", "*", "https://user@acme.example", "'self'"} {
		if status, body := f.as(t, f.operator, "PUT", "/v1/tenants/acme", map[string]any{"portal_frame_ancestors": []string{bad}}); status != 400 {
			t.Fatalf("portal_frame_ancestors %q: %d %s, want 400", bad, status, body)
		}
	}
	f.must(t, 200, f.operator, "PUT", "/v1/tenants/globex", map[string]any{"portal_frame_ancestors": []string{"https://app.globex.example"}}, nil)

	type answer struct {
		status int
		header http.Header
		body   string
	}
	get := func(path string) answer {
		t.Helper()
		status, body, h := rawCall(t, "GET", f.base+path, nil) // no token: the portal's files are open
		h.Del("Date")
		return answer{status, h, string(body)}
	}
	pathOf := func(link service.PortalLink) string {
		u, err := url.Parse(link.URL)
		if err != nil {
			t.Fatal(err)
		}
		return u.Path
	}
	keyOf := func(link service.PortalLink) string { return path.Base(pathOf(link)) }
	acme, _ := f.portalLink(t, "acme", nil)
	acmeRead, _ := f.portalLink(t, "acme", map[string]any{"access": "read"})
	globex, _ := f.portalLink(t, "globex", nil)
	revoked, _ := f.portalLink(t, "acme", nil)
	f.must(t, 204, f.operator, "DELETE", "/v1/tokens/"+revoked.TokenID, nil, nil)
	expired, _ := f.portalLink(t, "acme", map[string]any{"expires_in": "1s"})

	// The links: each framed by its own tenant's origins only.
	for _, c := range []struct {
		name string
		link service.PortalLink
		want string
	}{
		{"acme's link", acme, "https://app.acme.example https://dash.acme.example:8443"},
		{"acme's read link", acmeRead, "https://app.acme.example https://dash.acme.example:8443"},
		{"globex's link", globex, "https://app.globex.example"},
	} {
		a := get(pathOf(c.link))
		csp := a.header.Get("Content-Security-Policy")
		if a.status != 200 || !strings.HasSuffix(csp, "; frame-ancestors "+c.want) || !strings.Contains(csp, "script-src 'self';") ||
			!strings.Contains(csp, "; img-src 'self' data: https://cdn.logos.example;") || a.header.Get("X-Frame-Options") != "" ||
			a.header.Get("Referrer-Policy") != "no-referrer" || !strings.Contains(a.body, `<script src="app.js"`) {
			t.Fatalf("%s: %d, CSP %q, X-Frame-Options %q, Referrer-Policy %q", c.name, a.status, csp, a.header.Get("X-Frame-Options"), a.header.Get("Referrer-Policy"))
		}
	}

	// Everything else is one answer: that of a tenant that does not exist.
	for time.Now().Before(expired.ExpiresAt.Add(50 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}
	want := get("/portal/nobody/")
	if csp := want.header.Get("Content-Security-Policy"); want.status != 200 || !strings.HasSuffix(csp, "; frame-ancestors 'none'") ||
		want.header.Get("X-Frame-Options") != "DENY" || !strings.Contains(want.body, `<script src="app.js"`) {
		t.Fatalf("a tenant that does not exist: %d, CSP %q, X-Frame-Options %q", want.status, csp, want.header.Get("X-Frame-Options"))
	}
	keyA, keyG := keyOf(acme), keyOf(globex)
	tampered := keyA[:len(keyA)-1] + map[bool]string{true: "B", false: "A"}[strings.HasSuffix(keyA, "A")]
	for _, c := range []struct{ name, path string }{
		{"acme, which exists, without a key", "/portal/acme/"},
		{"globex without a key", "/portal/globex/"},
		{"the default tenant without a key", "/portal/default/"},
		{"a tenant that does not exist with acme's key", "/portal/nobody/" + keyA + "/"},
		{"acme with globex's key", "/portal/acme/" + keyG + "/"},
		{"globex with acme's key", "/portal/globex/" + keyA + "/"},
		{"acme's key, altered", "/portal/acme/" + tampered + "/"},
		{"acme's key with globex's token id", "/portal/acme/" + keyG[:len("pk_")+16] + keyA[len("pk_")+16:] + "/"},
		{"the key of no token", "/portal/acme/pk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAA/"},
		{"a key of the wrong shape", "/portal/acme/pk_x/"},
		{"a revoked link", pathOf(revoked)},
		{"an expired link", pathOf(expired)},
		{"an id that is no tenant's", "/portal/a%2Fb/"},
	} {
		got := get(c.path)
		if got.status != want.status || !reflect.DeepEqual(got.header, want.header) || got.body != want.body {
			t.Fatalf("%s (%s): %d %v, want the answer of a tenant that does not exist: %d %v", c.name, c.path, got.status, got.header, want.status, want.header)
		}
	}
	// The page's files are framed by no one, with a key or without.
	for _, p := range []string{pathOf(acme) + "app.js", "/portal/acme/app.js", "/console/"} {
		a := get(p)
		if csp := a.header.Get("Content-Security-Policy"); a.status != 200 || !strings.HasSuffix(csp, "; frame-ancestors 'none'") || a.header.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("%s: %d, CSP %q, X-Frame-Options %q: want frame-ancestors 'none' and DENY", p, a.status, csp, a.header.Get("X-Frame-Options"))
		}
	}
	// A key without its slash is sent to the page, the fragment kept.
	if a := get(strings.TrimSuffix(pathOf(acme), "/")); a.status != 200 || a.header.Get("X-Frame-Options") != "" {
		t.Fatalf("acme's link without its last slash: %d, X-Frame-Options %q", a.status, a.header.Get("X-Frame-Options"))
	}

	// Removing them removes them.
	f.must(t, 200, f.operator, "PUT", "/v1/tenants/acme", map[string]any{"portal_frame_ancestors": []string{}}, nil)
	if a := get(pathOf(acme)); a.header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("acme's portal after its origins were removed: X-Frame-Options %q", a.header.Get("X-Frame-Options"))
	}
}
