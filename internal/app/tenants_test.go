package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/httpapi"
	"fanout/internal/service"
)

// tenantFixture is run() with an operator token, two tenants (acme and
// globex) with a destination each, an event of acme delivered, and scoped
// tokens of several kinds.
type tenantFixture struct {
	base, operator string
	recvA, recvG   *receiver
	destA, destG   string
	eventA         string
	deliveryA      string
	replayA        string
	// tokens by name: acmeAll (every right over acme), acmeIngest,
	// acmeRead, globexAll (every right over globex), readAll (read over
	// every tenant).
	tokens   map[string]string
	tokenIDs map[string]string
	// secrets of acme that no other tenant may see.
	secretA, headerA string
	// audit is the operator's destination of every tenant's events,
	// which no tenant may see.
	audit     *receiver
	auditDest string
}

// as makes a request with token and returns the status and the body.
func (f *tenantFixture) as(t testing.TB, token, method, path string, body any) (int, string) {
	t.Helper()
	var header []string
	if token != "" {
		header = []string{"Authorization", "Bearer " + token}
	}
	status, b, _ := rawCall(t, method, f.base+path, body, header...)
	return status, string(b)
}

// must is as, failing the test unless the status is want.
func (f *tenantFixture) must(t testing.TB, want int, token, method, path string, body any, out any) {
	t.Helper()
	status, b := f.as(t, token, method, path, body)
	if status != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, status, b, want)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(b), out); err != nil {
			t.Fatalf("%s %s: %q: %v", method, path, b, err)
		}
	}
}

func newTenantFixture(t *testing.T, args ...string) *tenantFixture {
	t.Helper()
	const operator = "operator-token-0123456789"
	base, _ := startRun(t, append([]string{"--data", t.TempDir(), "--api-token", operator}, args...), nil)
	f := &tenantFixture{base: base, operator: operator, recvA: newReceiver(t), recvG: newReceiver(t),
		tokens: map[string]string{}, tokenIDs: map[string]string{}}
	for _, id := range []string{"acme", "globex"} {
		f.must(t, 201, operator, "PUT", "/v1/tenants/"+id, map[string]any{"name": id + " Inc."}, nil)
	}
	var d struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	f.headerA = "Bearer acme-receiver-credential-42"
	f.must(t, 201, operator, "POST", "/v1/tenants/acme/destinations",
		map[string]any{"url": f.recvA.URL, "headers": map[string]string{"Authorization": f.headerA}}, &d)
	f.destA, f.secretA = d.ID, d.Secret
	f.must(t, 201, operator, "POST", "/v1/tenants/globex/destinations", map[string]any{"url": f.recvG.URL}, &d)
	f.destG = d.ID
	f.audit = newReceiver(t)
	f.must(t, 201, operator, "POST", "/v1/destinations", map[string]any{"url": f.audit.URL, "all_tenants": true}, &d)
	f.auditDest = d.ID
	for _, tk := range []struct {
		name   string
		rights []string
		tenant string
	}{
		{"acmeAll", []string{"ingest", "read", "manage", "view_secret"}, "acme"},
		{"acmeIngest", []string{"ingest"}, "acme"},
		{"acmeRead", []string{"read"}, "acme"},
		{"globexAll", []string{"ingest", "read", "manage", "view_secret"}, "globex"},
		{"readAll", []string{"read"}, ""},
	} {
		in := map[string]any{"name": tk.name, "rights": tk.rights, "expires_in": "1h"}
		if tk.tenant == "" {
			in["all_tenants"] = true
		} else {
			in["tenant"] = tk.tenant
		}
		var out struct{ ID, Token string }
		f.must(t, 201, operator, "POST", "/v1/tokens", in, &out)
		f.tokens[tk.name], f.tokenIDs[tk.name] = out.Token, out.ID
	}
	// An event of acme, sent with acme's ingest token on the route
	// without a tenant: the token's tenant is the event's.
	var e struct{ ID string }
	f.must(t, 202, f.tokens["acmeIngest"], "POST", "/v1/event", `{"type":"order.paid","secret_of_acme":"acme-payload-marker"}`, &e)
	f.eventA = e.ID
	eventually(t, "acme's event delivered", 10*time.Second, func() bool { _, ok := f.recvA.has(e.ID); return ok })
	var ev service.EventView
	eventually(t, "acme's delivery listed as delivered", 10*time.Second, func() bool {
		f.must(t, 200, operator, "GET", "/v1/events/"+f.eventA, nil, &ev)
		return len(ev.Deliveries) == 2 && ev.Deliveries[0].State == "delivered" && ev.Deliveries[1].State == "delivered"
	})
	for _, d := range ev.Deliveries {
		if d.DestinationID == f.destA {
			f.deliveryA = d.ID
		}
	}
	var r struct{ ID string }
	f.must(t, 202, f.tokens["acmeAll"], "POST", "/v1/destinations/"+f.destA+"/replay",
		map[string]any{"since": time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)}, &r)
	f.replayA = r.ID
	return f
}

// TestRun_TenantRouting: an event reaches its tenant's destinations and the
// operator's destinations of every tenant, never another tenant's; the same
// event id in two tenants is two events.
func TestRun_TenantRouting(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	audit := f.audit
	// A tenant cannot make itself such a destination.
	f.must(t, 403, f.tokens["acmeAll"], "POST", "/v1/destinations", map[string]any{"url": audit.URL, "all_tenants": true}, nil)

	var a, g, def struct{ ID string }
	f.must(t, 202, f.tokens["acmeAll"], "POST", "/v1/event", `{"id":"same-1","type":"t"}`, &a)
	f.must(t, 202, f.operator, "POST", "/v1/tenants/globex/event", `{"id":"same-1","type":"t"}`, &g)
	f.must(t, 202, f.operator, "POST", "/v1/event", `{"id":"same-1","type":"t"}`, &def)
	if a.ID == g.ID || a.ID == def.ID || g.ID == def.ID {
		t.Fatalf("one event id in three tenants was taken for a repeat: %s %s %s", a.ID, g.ID, def.ID)
	}
	eventually(t, "deliveries", 10*time.Second, func() bool {
		_, okA := f.recvA.has(a.ID)
		_, okG := f.recvG.has(g.ID)
		_, auditA := audit.has(a.ID)
		_, auditG := audit.has(g.ID)
		_, auditD := audit.has(def.ID)
		return okA && okG && auditA && auditG && auditD
	})
	time.Sleep(200 * time.Millisecond) // what would go astray has had its time
	for _, c := range []struct {
		r    *receiver
		id   string
		name string
	}{{f.recvA, g.ID, "acme got globex's event"}, {f.recvA, def.ID, "acme got the default tenant's event"},
		{f.recvG, a.ID, "globex got acme's event"}, {f.recvG, f.eventA, "globex got acme's first event"}} {
		if _, ok := c.r.has(c.id); ok {
			t.Error(c.name)
		}
	}
	// A repeat within a tenant is one.
	var again struct{ ID string }
	f.must(t, 202, f.tokens["acmeAll"], "POST", "/v1/tenants/acme/event", `{"id":"same-1","type":"t"}`, &again)
	if again.ID != a.ID {
		t.Fatalf("a repeat within acme got a new id %s, want %s", again.ID, a.ID)
	}
}

// TestRun_TenantMatrix tries every route with every kind of token, on what
// is its own and on what is another tenant's: a token without the route's
// right is refused (403), another tenant's things are not found (404, as
// what does not exist), a list shows none of them, and the token's own
// things answer.
func TestRun_TenantMatrix(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	// What no one but acme (and the operator) may see.
	acmeOnly := []string{f.destA, f.eventA, f.deliveryA, f.replayA, f.recvA.URL, f.secretA, f.headerA, "acme-payload-marker"}
	// What no tenant may see: the operator's destination of every tenant.
	operatorOnly := []string{f.auditDest, f.audit.URL}
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	bodies := map[string]any{
		"POST /v1/event":                    `{"type":"matrix"}`,
		"POST /v1/batch":                    `[{"type":"matrix"}]`,
		"POST /v1/destinations":             map[string]any{"url": f.recvG.URL + "/other"},
		"PATCH /v1/destinations/{id}":       map[string]any{"description": "changed"},
		"POST /v1/destinations/{id}/replay": map[string]any{"since": since, "dry_run": true},
		"POST /v1/deliveries/retry":         map[string]any{"destination": f.destA},
		"PUT /v1/tenants/{tenant}":          map[string]any{"name": "x"},
		"POST /v1/match":                    map[string]any{"match": map[string]any{"$type": "x"}, "event": map[string]any{"type": "x"}},
		"POST /v1/tokens":                   map[string]any{"name": "x", "rights": []string{"read"}, "tenant": "acme"},
	}
	// idFor is acme's thing that a route's {id} names.
	idFor := func(path string) string {
		switch {
		case strings.Contains(path, "/destinations/"):
			return f.destA
		case strings.Contains(path, "/events/"):
			return f.eventA
		case strings.Contains(path, "/deliveries/"):
			return f.deliveryA
		case strings.Contains(path, "/replays/"):
			return f.replayA
		case strings.Contains(path, "/tokens/"):
			return "tok_0000000000000000"
		}
		return ""
	}
	type principal struct {
		name   string
		token  string
		rights []service.Right
		tenant string // "" for every tenant
	}
	all := []service.Right{service.RightIngest, service.RightRead, service.RightManage, service.RightViewSecret}
	principals := []principal{
		{"acmeAll", f.tokens["acmeAll"], all, "acme"},
		{"acmeIngest", f.tokens["acmeIngest"], []service.Right{service.RightIngest}, "acme"},
		{"acmeRead", f.tokens["acmeRead"], []service.Right{service.RightRead}, "acme"},
		{"globexAll", f.tokens["globexAll"], all, "globex"},
		{"readAll", f.tokens["readAll"], []service.Right{service.RightRead}, ""},
	}
	routes := httpapi.Routes(nil, nil, testLimits)
	tried := 0
	for _, rt := range routes {
		method, pattern, _ := strings.Cut(rt.Pattern, " ")
		if rt.Right() == "" {
			continue
		}
		for _, p := range principals {
			path := strings.ReplaceAll(pattern, "{tenant}", "acme")
			if rt.Right() == service.RightOperator {
				path = strings.ReplaceAll(pattern, "{tenant}", "nobody")
			}
			path = strings.ReplaceAll(path, "{id}", idFor(pattern))
			body := bodies[method+" "+strings.Replace(pattern, "/v1/tenants/{tenant}", "/v1", 1)]
			if method == "DELETE" && p.tenant == "acme" && rt.Right() != service.RightOperator && slices.Contains(p.rights, rt.Right()) {
				continue // acme deleting its own destination would end the fixture; globex trying is below
			}
			name := fmt.Sprintf("%s %s as %s", method, path, p.name)
			status, got := f.as(t, p.token, method, path, body)
			tried++
			nested := strings.HasPrefix(pattern, "/v1/tenants/{tenant}/")
			hasID := strings.Contains(pattern, "{id}")
			switch {
			case rt.Right() == service.RightOperator:
				if status != 403 {
					t.Errorf("%s: %d %s, want 403 (an operator's route)", name, status, got)
				}
			case !slices.Contains(p.rights, rt.Right()):
				if status != 403 {
					t.Errorf("%s: %d %s, want 403 (the token lacks %s)", name, status, got, rt.Right())
				}
			case p.tenant == "globex" && (nested || hasID):
				if status != 404 {
					t.Errorf("%s: %d %s, want 404 (acme's, and globex's token)", name, status, got)
				}
			case pattern == "/v1/stats" && p.tenant != "":
				if status != 403 {
					t.Errorf("%s: %d %s, want 403 (the stats are every tenant's)", name, status, got)
				}
			case pattern == "/v1/portal" && p.tenant == "":
				if status != 403 {
					t.Errorf("%s: %d %s, want 403 (a portal is one tenant's)", name, status, got)
				}
			case p.tenant == "globex" && method+" "+pattern == "POST /v1/deliveries/retry":
				if status != 404 {
					t.Errorf("%s: %d %s, want 404 (acme's destination)", name, status, got)
				}
			case p.tenant == "globex":
				if status >= 300 {
					t.Errorf("%s: %d %s, want its own answer", name, status, got)
				}
				for _, s := range acmeOnly {
					if strings.Contains(got, s) {
						t.Errorf("%s: the answer shows acme's %q: %s", name, s, got)
					}
				}
			default: // its own, with the right
				if status == 401 || status == 403 || status == 404 || status >= 500 {
					t.Errorf("%s: %d %s, want its own answer", name, status, got)
				}
			}
			if p.tenant != "" {
				for _, s := range operatorOnly {
					if strings.Contains(got, s) {
						t.Errorf("%s: the answer shows the operator's destination %q: %s", name, s, got)
					}
				}
			}
		}
	}
	if tried < 100 {
		t.Fatalf("tried %d requests: the routes were not found", tried)
	}

	// acme's event counts its own delivery, not the operator's.
	var page service.EventPage
	f.must(t, 200, f.tokens["acmeRead"], "GET", "/v1/events", nil, &page)
	for _, e := range page.Events {
		if e.ID == f.eventA && (e.Deliveries.Delivered != 1 || e.Deliveries.Pending+e.Deliveries.Delivering+e.Deliveries.Failed != 0) {
			t.Errorf("acme's event in acme's history counts %+v, want its 1 delivery", e.Deliveries)
		}
	}
	f.must(t, 200, f.operator, "GET", "/v1/events", nil, &page)
	for _, e := range page.Events {
		if e.ID == f.eventA && e.Deliveries.Delivered != 2 {
			t.Errorf("acme's event in the operator's history counts %+v, want 2 delivered", e.Deliveries)
		}
	}

	// Searches and filters that name acme's things, from globex.
	g := f.tokens["globexAll"]
	for _, path := range []string{
		"/v1/events?q=acme-payload-marker", "/v1/events?type=order.paid", "/v1/deliveries?state=delivered",
		"/v1/replays", "/v1/events?state=delivered", "/v1/tenants/globex/events?q=acme",
	} {
		status, got := f.as(t, g, "GET", path, nil)
		for _, s := range acmeOnly {
			if strings.Contains(got, s) {
				t.Errorf("GET %s as globex: %d shows acme's %q", path, status, s)
			}
		}
	}
	for _, path := range []string{"/v1/events?destination=" + f.destA, "/v1/deliveries?destination=" + f.destA,
		"/v1/replays/" + f.replayA, "/v1/tenants/acme", "/v1/tenants/acme/events"} {
		if status, got := f.as(t, g, "GET", path, nil); status != 404 && status != 403 {
			t.Errorf("GET %s as globex: %d %s, want 404", path, status, got)
		}
	}
	// A replay of globex's own destination over acme's time range gives
	// globex none of acme's events.
	var job struct{ ID string }
	f.must(t, 202, g, "POST", "/v1/destinations/"+f.destG+"/replay", map[string]any{"since": since}, &job)
	eventually(t, "globex's replay done", 10*time.Second, func() bool {
		var v service.ReplayView
		f.must(t, 200, g, "GET", "/v1/replays/"+job.ID, nil, &v)
		return v.State == "done"
	})
	if n := len(f.recvG.bodies()); n != 0 {
		for _, b := range f.recvG.bodies() {
			if strings.Contains(b, "acme-payload-marker") {
				t.Fatalf("globex's replay delivered acme's event: %s", b)
			}
		}
	}
	// acme's destination survived globex's DELETE.
	f.must(t, 200, f.tokens["acmeRead"], "GET", "/v1/destinations/"+f.destA, nil, nil)
}

// TestRun_TokenLifecycle: a token is shown once, stored hashed, refused at
// once when revoked or expired, and tokens need an operator token.
func TestRun_TokenLifecycle(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	tok := f.tokens["acmeRead"]
	f.must(t, 200, tok, "GET", "/v1/events", nil, nil)
	var list struct{ Tokens []service.Token }
	f.must(t, 200, f.operator, "GET", "/v1/tokens", nil, &list)
	if len(list.Tokens) != 5 {
		t.Fatalf("%d tokens listed, want 5", len(list.Tokens))
	}
	for _, lt := range list.Tokens {
		if lt.Token != "" || strings.Contains(fmt.Sprint(lt), strings.Split(tok, "_")[2]) {
			t.Fatalf("a listed token shows its secret: %+v", lt)
		}
	}
	// A live token's id with another secret is refused.
	live := f.tokens["acmeAll"]
	forged := live[:len(live)-4] + "AAAA"
	if forged == live {
		forged = live[:len(live)-4] + "BBBB"
	}
	if status, _ := f.as(t, forged, "GET", "/v1/events", nil); status != 401 {
		t.Fatalf("a forged secret: %d, want 401", status)
	}
	f.must(t, 204, f.operator, "DELETE", "/v1/tokens/"+f.tokenIDs["acmeRead"], nil, nil)
	if status, got := f.as(t, tok, "GET", "/v1/events", nil); status != 401 {
		t.Fatalf("a revoked token: %d %s, want 401", status, got)
	}
	// Expired: minted to expire in 3s (time enough for a busy machine to
	// use it once before).
	var out struct {
		Token     string
		ExpiresAt time.Time `json:"expires_at"`
	}
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "brief", "rights": []string{"read"},
		"tenant": "acme", "expires_in": "3s"}, &out)
	f.must(t, 200, out.Token, "GET", "/v1/events", nil, nil)
	time.Sleep(time.Until(out.ExpiresAt) + 50*time.Millisecond)
	if status, _ := f.as(t, out.Token, "GET", "/v1/events", nil); status != 401 {
		t.Fatalf("an expired token: %d, want 401", status)
	}
	for _, bad := range []map[string]any{
		{"name": "x", "rights": []string{"everything"}, "tenant": "acme"},
		{"name": "x", "rights": []string{"read"}},
		{"name": "x", "rights": []string{"read"}, "tenant": "no-such-tenant"},
		{"name": "x", "rights": []string{"read"}, "tenant": "acme", "all_tenants": true},
		{"name": "", "rights": []string{"read"}, "tenant": "acme"},
		{"name": "x", "rights": []string{"read"}, "tenant": "acme", "expires_in": "-1h"},
	} {
		if status, got := f.as(t, f.operator, "POST", "/v1/tokens", bad); status != 400 && status != 404 {
			t.Errorf("POST /v1/tokens %v: %d %s, want 400", bad, status, got)
		}
	}
}

// TestRun_TenantsNeedOperatorToken: without --api-token, fanout is the
// single user's: tenants and tokens answer 403 saying why, and the rest
// works as before.
func TestRun_TenantsNeedOperatorToken(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	for _, path := range []string{"/v1/tenants", "/v1/tokens"} {
		var e httpapi.ErrorBody
		if status := call(t, "GET", base+path, nil, &e); status != 403 || !strings.Contains(e.Error, "--api-token") {
			t.Fatalf("GET %s without an operator token: %d %q, want 403 naming --api-token", path, status, e.Error)
		}
	}
	if status := call(t, "POST", base+"/v1/event", `{"type":"t"}`, nil); status != 202 {
		t.Fatalf("POST /v1/event: %d, want 202", status)
	}
	if status := call(t, "GET", base+"/v1/tenants/default/events", nil, nil); status != 200 {
		t.Fatalf("GET /v1/tenants/default/events: %d, want 200", status)
	}
}

// TestRun_TenantDelete: deleting a tenant deletes its destinations and
// tokens; one created again under its id sees none of its events.
func TestRun_TenantDelete(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	var del service.TenantDeleted
	f.must(t, 200, f.operator, "DELETE", "/v1/tenants/acme", nil, &del)
	if del.Destinations != 1 || del.Tokens != 3 {
		t.Fatalf("deleted %+v, want 1 destination and 3 tokens", del)
	}
	if status, _ := f.as(t, f.tokens["acmeAll"], "GET", "/v1/events", nil); status != 401 {
		t.Fatalf("acme's token after its tenant was deleted: %d, want 401", status)
	}
	f.must(t, 404, f.operator, "GET", "/v1/tenants/acme", nil, nil)
	f.must(t, 201, f.operator, "PUT", "/v1/tenants/acme", map[string]any{}, nil)
	var page service.EventPage
	f.must(t, 200, f.operator, "GET", "/v1/tenants/acme/events", nil, &page)
	if len(page.Events) != 0 {
		t.Fatalf("a tenant created again sees %d events of the one before", len(page.Events))
	}
	// The operator still has them, until retention.
	f.must(t, 200, f.operator, "GET", "/v1/events/"+f.eventA, nil, nil)
	f.must(t, 409, f.operator, "DELETE", "/v1/tenants/default", nil, nil)
}

// TestRun_TenantIngestRate: a tenant over its ingest rate gets 429 with
// Retry-After, and nothing of that request is stored; another tenant is
// not held back.
func TestRun_TenantIngestRate(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	f.must(t, 200, f.operator, "PUT", "/v1/tenants/acme", map[string]any{"ingest_rate": 1, "ingest_burst": 2}, nil)
	codes := []int{}
	for range 4 {
		status, _ := f.as(t, f.operator, "POST", "/v1/tenants/acme/event", `{"type":"rate"}`)
		codes = append(codes, status)
	}
	if !slices.Contains(codes, 429) || codes[0] != 202 {
		t.Fatalf("acme at 1/s, burst 2, sending 4 at once: %v, want 202 then 429", codes)
	}
	req, _ := http.NewRequest("POST", f.base+"/v1/tenants/acme/event", strings.NewReader(`{"type":"rate"}`))
	req.Header.Set("Authorization", "Bearer "+f.operator)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the rate: %d Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	for range 10 {
		f.must(t, 202, f.operator, "POST", "/v1/tenants/globex/event", `{"type":"rate"}`, nil)
	}
}

// TestRun_TenantList: tenants page by id with a cursor, the default tenant
// among them; ids that are not path-safe are refused.
func TestRun_TenantList(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	f.must(t, 201, f.operator, "PUT", "/v1/tenants/zeta", map[string]any{"metadata": map[string]string{"plan": "free"}}, nil)
	var ids []string
	cursor := ""
	for range 10 {
		var page service.TenantPage
		f.must(t, 200, f.operator, "GET", "/v1/tenants?limit=2&cursor="+cursor, nil, &page)
		for _, tn := range page.Tenants {
			ids = append(ids, tn.ID)
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if want := []string{"acme", "default", "globex", "zeta"}; !slices.Equal(ids, want) {
		t.Fatalf("paged tenants %v, want %v", ids, want)
	}
	for _, bad := range []string{"-x", "a%2Fb", "a..b%00", strings.Repeat("a", 101)} {
		if status, got := f.as(t, f.operator, "PUT", "/v1/tenants/"+bad, map[string]any{}); status != 400 {
			t.Errorf("PUT /v1/tenants/%s: %d %s, want 400", bad, status, got)
		}
	}
}

// TestRun_StoreFromBeforeTenants: a store written before tenants (a
// destination document without "tenant", events keyed "") is used as it
// is: its destination and events are the default tenant's, for routing and
// for the default tenant's token, and no other tenant sees them.
func TestRun_StoreFromBeforeTenants(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	recv := newReceiver(t)
	old := openTestStore(t, dir)
	now := time.Now().UTC()
	data := `{"id":"dst_old","url":"` + recv.URL + `","enabled":true,"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","max_concurrency":4,"paused":false}`
	if err := old.DocCreate(context.Background(), &dispatch.Doc{Kind: "destination", ID: "dst_old", Data: []byte(data), Version: 1,
		CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	const op = "old-store-operator-token-0123456789"
	base, _ := startRun(t, []string{"--data", dir, "--api-token", op}, nil)
	f := &tenantFixture{base: base, operator: op}
	var d struct{ Tenant string }
	f.must(t, 200, op, "GET", "/v1/tenants/default/destinations/dst_old", nil, &d)
	var e struct{ ID string }
	f.must(t, 202, op, "POST", "/v1/event", `{"type":"t"}`, &e)
	eventually(t, "the old destination gets the default tenant's event", 10*time.Second, func() bool { _, ok := recv.has(e.ID); return ok })
	f.must(t, 201, op, "PUT", "/v1/tenants/acme", map[string]any{}, nil)
	var tok struct{ Token string }
	f.must(t, 201, op, "POST", "/v1/tokens", map[string]any{"name": "d", "rights": []string{"read"}, "tenant": "default"}, &tok)
	f.must(t, 200, tok.Token, "GET", "/v1/destinations/dst_old", nil, nil)
	f.must(t, 200, tok.Token, "GET", "/v1/events/"+e.ID, nil, nil)
	f.must(t, 201, op, "POST", "/v1/tokens", map[string]any{"name": "a", "rights": []string{"read"}, "tenant": "acme"}, &tok)
	f.must(t, 404, tok.Token, "GET", "/v1/destinations/dst_old", nil, nil)
	f.must(t, 404, tok.Token, "GET", "/v1/events/"+e.ID, nil, nil)
	f.must(t, 202, op, "POST", "/v1/tenants/acme/event", `{"type":"t"}`, &e)
	time.Sleep(300 * time.Millisecond)
	if _, ok := recv.has(e.ID); ok {
		t.Fatal("the default tenant's old destination got acme's event")
	}
}

// TestRun_ManageWithoutViewSecret: a token that may manage a destination
// but not read its secrets cannot get them another way: not by pointing
// the destination at its own server with the stored header values, not by
// the previous secret in a rotation's answer; and a test event, which such
// a token may send, is never replayed to anyone.
func TestRun_ManageWithoutViewSecret(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	var tok struct{ Token string }
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "m", "rights": []string{"read", "manage"}, "tenant": "acme"}, &tok)
	m := f.tokens["acmeAll"]
	f.tokens["manage"] = tok.Token
	var d struct {
		URL     string
		Headers map[string]string
	}
	f.must(t, 200, tok.Token, "GET", "/v1/destinations/"+f.destA, nil, &d)
	for _, body := range []map[string]any{
		{"url": "https://attacker.example/hook"},
		{"url": "https://attacker.example/hook", "headers": d.Headers}, // the masks sent back
	} {
		if status, got := f.as(t, tok.Token, "PATCH", "/v1/destinations/"+f.destA, body); status != 403 {
			t.Fatalf("PATCH %v with manage only: %d %s, want 403", body, status, got)
		}
	}
	// Another path on the same host keeps the headers; a new host with the
	// headers given again (here: none) is the token's own doing.
	f.must(t, 200, tok.Token, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"url": f.recvA.URL + "/v2"}, nil)
	f.must(t, 200, m, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"url": "https://elsewhere.example/hook"}, nil) // view_secret may
	f.must(t, 200, tok.Token, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"url": f.recvA.URL, "headers": map[string]string{}}, nil)

	var rot struct {
		Secret         string
		PreviousSecret string `json:"previous_secret"`
	}
	f.must(t, 200, tok.Token, "POST", "/v1/destinations/"+f.destA+"/rotate-secret", nil, &rot)
	if rot.PreviousSecret == f.secretA || !strings.HasPrefix(rot.Secret, "whsec_") || strings.Contains(rot.Secret, "…") {
		t.Fatalf("rotation with manage only: secret %q, previous %q (the original, in full, or the new one masked)", rot.Secret, rot.PreviousSecret)
	}
	var rot2 struct {
		Secret         string
		PreviousSecret string `json:"previous_secret"`
	}
	f.must(t, 200, m, "POST", "/v1/destinations/"+f.destA+"/rotate-secret", nil, &rot2)
	if rot2.PreviousSecret != rot.Secret {
		t.Fatalf("rotation with view_secret: previous %q, want the one before %q", rot2.PreviousSecret, rot.Secret)
	}

	// A test event of any type is listed as fanout.test and never replayed.
	var sent struct {
		EventID string `json:"event_id"`
	}
	f.must(t, 202, tok.Token, "POST", "/v1/destinations/"+f.destA+"/test", map[string]any{"type": "order.paid"}, &sent)
	var ev struct{ Type string }
	eventually(t, "the test event listed", 5*time.Second, func() bool {
		var page struct{ Events []struct{ ID, Type string } }
		f.must(t, 200, tok.Token, "GET", "/v1/events", nil, &page)
		for _, e := range page.Events {
			if e.ID == sent.EventID {
				ev.Type = e.Type
				return true
			}
		}
		return false
	})
	if ev.Type != "fanout.test" {
		t.Fatalf("a test event listed as %q, want fanout.test", ev.Type)
	}
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	var all service.ReplayCount
	f.must(t, 200, f.operator, "POST", "/v1/destinations/"+f.auditDest+"/replay", map[string]any{"since": since, "dry_run": true, "types": []string{"fanout.test"}}, &all)
	if all.Events != 0 {
		t.Fatalf("a replay would send %d test events to the operator's destination", all.Events)
	}
}

// TestRun_MetricsToken: with --metrics-token, /metrics answers only a
// scrape that carries it (its series name every tenant's destinations).
func TestRun_MetricsToken(t *testing.T) {
	t.Parallel()
	const scrape = "metrics-scrape-token-0123456789"
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--metrics-token", scrape}, nil)
	f := &tenantFixture{base: base}
	for _, tc := range []struct {
		token string
		want  int
	}{{"", 401}, {"wrong-token-0123456789", 401}, {scrape, 200}} {
		if status, _ := f.as(t, tc.token, "GET", "/metrics", nil); status != tc.want {
			t.Errorf("GET /metrics with %q: %d, want %d", tc.token, status, tc.want)
		}
	}
	// The probes stay open.
	if status, _ := f.as(t, "", "GET", "/healthz", nil); status != 200 {
		t.Errorf("GET /healthz: %d", status)
	}
}

// TestRun_TenantEventState: a tenant sees its event's state from its own
// deliveries: one the operator's destination keeps failing is delivered
// for the tenant, delivering for the operator.
func TestRun_TenantEventState(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	f.audit.fail.Store(true)
	var e struct{ ID string }
	f.must(t, 202, f.tokens["acmeAll"], "POST", "/v1/event", `{"type":"order.paid"}`, &e)
	eventually(t, "acme's delivery", 10*time.Second, func() bool { _, ok := f.recvA.has(e.ID); return ok })
	eventually(t, "the operator's delivery refused", 10*time.Second, func() bool { return f.audit.failed.Load() > 0 })
	var op, own service.EventView
	eventually(t, "acme's delivery recorded", 10*time.Second, func() bool {
		f.must(t, 200, f.tokens["acmeRead"], "GET", "/v1/events/"+e.ID, nil, &own)
		return len(own.Deliveries) == 1 && own.Deliveries[0].State == "delivered"
	})
	f.must(t, 200, f.operator, "GET", "/v1/events/"+e.ID, nil, &op)
	if op.State == "delivered" || own.State != "delivered" || own.Error != "" {
		t.Fatalf("operator sees %q, acme sees %q (error %q): want acme's own state, delivered", op.State, own.State, own.Error)
	}
	var page struct{ Events []struct{ ID, State string } }
	f.must(t, 200, f.tokens["acmeRead"], "GET", "/v1/events", nil, &page)
	for _, ev := range page.Events {
		if ev.ID == e.ID && ev.State != "delivered" {
			t.Fatalf("acme's history shows %q, want delivered", ev.State)
		}
	}
	// A state filter selects by the state acme sees: the event is
	// delivered for it, whatever the operator's destination is at.
	for _, c := range []struct {
		state string
		want  bool
	}{{"delivered", true}, {"delivering", false}, {"failed", false}, {"pending", false}} {
		f.must(t, 200, f.tokens["acmeRead"], "GET", "/v1/events?state="+c.state, nil, &page)
		found := false
		for _, ev := range page.Events {
			found = found || ev.ID == e.ID
			if ev.State != c.state {
				t.Errorf("state=%s lists an event acme sees %s", c.state, ev.State)
			}
		}
		if found != c.want {
			t.Errorf("state=%s: acme's history lists the event: %v, want %v", c.state, found, c.want)
		}
	}
}
