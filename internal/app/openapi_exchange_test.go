package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fanout/internal/service"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// loadOpenAPI loads docs/openapi.yaml and validates it as OpenAPI.
func loadOpenAPI(t testing.TB) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatalf("load docs/openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("docs/openapi.yaml is not valid OpenAPI: %v", err)
	}
	return doc
}

// TestOpenAPI_Valid checks the document with a real validator, and that
// every operation but the probes' declares its 401.
func TestOpenAPI_Valid(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if path == "/healthz" || path == "/readyz" || path == "/metrics" { // open to probes and scrapers
				continue
			}
			if op.Responses.Status(http.StatusUnauthorized) == nil {
				t.Errorf("%s %s does not declare its 401", method, path)
			}
		}
	}
}

// openAPIClient makes requests and checks each, and its answer, against the
// document with openapi3filter, counting the operations it saw.
type openAPIClient struct {
	t      *testing.T
	router routers.Router
	base   string
	token  string

	mu   sync.Mutex
	seen map[string]bool // "METHOD /path" of the operations answered
	// contentType is the requests' when set, else application/json.
	contentType string
}

// do sends a request (body is JSON-encoded unless a string) and decodes the
// answer into out. A request the test means to be wrong (bad) is not held
// to the document; its answer always is.
func (c *openAPIClient) do(method, path string, body, out any, bad bool) int {
	c.t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			c.t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(b))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		ct := "application/json"
		if c.contentType != "" {
			ct = c.contentType
		}
		req.Header.Set("Content-Type", ct)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		c.t.Fatalf("%s %s: not in docs/openapi.yaml: %v", method, path, err)
	}
	ctx := context.Background()
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, SkipSettingDefaults: true,
		MultiError: true}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	if !bad {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			c.t.Fatalf("%s %s: the request does not match docs/openapi.yaml: %v", method, path, err)
		}
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b)) // ValidateRequest read it
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	err = openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{RequestValidationInput: in,
		Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(answer)), Options: opts})
	if err != nil {
		c.t.Fatalf("%s %s: answer %d %s does not match docs/openapi.yaml: %v", method, path, resp.StatusCode, answer, err)
	}
	if out != nil && len(answer) > 0 {
		if err := json.Unmarshal(answer, out); err != nil {
			c.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	if c.token != "" {
		// Only the exchanges with a token count: the 401s of the loop
		// without one reach every operation, and would hide one never
		// exercised for real.
		c.mu.Lock()
		c.seen[strings.ToUpper(route.Method)+" "+route.Path] = true
		c.mu.Unlock()
	}
	return resp.StatusCode
}

// TestOpenAPI_Exchanges sends real requests to run() with tokens, every
// operation of the document at least once, and checks each request and each
// answer (successes, 4xx, 401) against the document.
func TestOpenAPI_Exchanges(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	recv := newReceiver(t)
	const token = "openapi-test-token-0123456789"
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--api-token", token, "--retry-initial", "10ms"}, nil)
	doc.Servers = openapi3.Servers{{URL: base}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	c := &openAPIClient{t: t, router: router, base: base, token: token, seen: map[string]bool{}}

	var dst struct{ ID string }
	if code := c.do("POST", "/v1/destinations", map[string]any{"url": recv.URL + "/hook", "filter": []string{"order.*"}}, &dst, false); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	var ev struct{ ID string }
	if code := c.do("POST", "/v1/event", `{"type":"order.paid","n":1}`, &ev, false); code != 202 {
		t.Fatalf("event: %d", code)
	}
	if code := c.do("POST", "/v1/batch", `[{"type":"order.paid","n":2},{"type":"user.created"}]`, nil, false); code != 202 {
		t.Fatalf("batch: %d", code)
	}
	c.do("POST", "/v1/event", `[1]`, nil, true)
	eventually(t, "the delivery", 10*time.Second, func() bool { _, ok := recv.has(ev.ID); return ok })
	since := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)

	var page service.EventPage
	if code := c.do("GET", "/v1/events?limit=2", nil, &page, false); code != 200 || len(page.Events) != 2 || page.NextCursor == "" {
		t.Fatalf("events: %d %+v", code, page)
	}
	c.do("GET", "/v1/events?cursor="+page.NextCursor+"&limit=2", nil, nil, false)
	c.do("GET", "/v1/events?type=order.*&state=delivered&destination="+dst.ID+"&q=paid&since="+since, nil, nil, false)
	c.do("GET", "/v1/events?state=lost", nil, nil, true)
	var one service.EventView
	if code := c.do("GET", "/v1/events/"+ev.ID, nil, &one, false); code != 200 || len(one.Deliveries) != 1 {
		t.Fatalf("event: %d %+v", code, one)
	}
	c.do("GET", "/v1/events/nope", nil, nil, false)
	// A raw event (raw=true): in as XML, shown with its raw body.
	c.contentType = "application/xml"
	var rawEv struct{ ID string }
	if code := c.do("POST", "/v1/event?raw=true&type=note.raw", `<order id="1"/>`, &rawEv, false); code != 202 {
		t.Fatalf("raw event: %d", code)
	}
	c.do("POST", "/v1/event?raw=true&type=fanout.x", `<order/>`, nil, true)
	c.contentType = ""
	if code := c.do("GET", "/v1/events/"+rawEv.ID, nil, &one, false); code != 200 || one.Raw == nil || one.Raw.Text != `<order id="1"/>` {
		t.Fatalf("raw event: %d %+v", code, one.Raw)
	}
	c.do("POST", "/v1/match", map[string]any{"match": map[string]any{"a": 1}, "content_type": "application/xml", "type": "note.raw"}, nil, false)

	c.do("GET", "/v1/destinations", nil, nil, false)
	c.do("GET", "/v1/destinations/"+dst.ID, nil, nil, false)
	c.do("GET", "/v1/destinations/nope", nil, nil, false)
	c.do("PATCH", "/v1/destinations/"+dst.ID, map[string]any{"description": "orders", "paused": true}, nil, false)
	if code := c.do("PATCH", "/v1/destinations/"+dst.ID, map[string]any{"max_concurrency": 0}, nil, true); code != 400 {
		t.Fatalf("max_concurrency 0: %d, want 400", code)
	}
	c.do("POST", "/v1/destinations/"+dst.ID+"/resume", nil, nil, false)
	c.do("POST", "/v1/destinations/"+dst.ID+"/rotate-secret", nil, nil, false)
	var secrets struct{ Secret string }
	if code := c.do("GET", "/v1/destinations/"+dst.ID+"/secret", nil, &secrets, false); code != 200 || secrets.Secret == "" {
		t.Fatalf("secret: %d %+v", code, secrets)
	}
	c.do("GET", "/v1/destinations/nope/secret", nil, nil, false)

	var count service.ReplayCount
	if code := c.do("POST", "/v1/destinations/"+dst.ID+"/replay", map[string]any{"since": since, "dry_run": true}, &count, false); code != 200 || count.Events != 2 {
		t.Fatalf("dry run: %d %+v, want the 2 order events", code, count)
	}
	var job service.ReplayView
	if code := c.do("POST", "/v1/destinations/"+dst.ID+"/replay", map[string]any{"since": since, "force": true}, &job, false); code != 202 {
		t.Fatalf("replay: %d", code)
	}
	c.do("POST", "/v1/destinations/"+dst.ID+"/replay", map[string]any{"until": since}, nil, true)
	eventually(t, "the replay done", 10*time.Second, func() bool {
		c.do("GET", "/v1/replays/"+job.ID, nil, &job, false)
		return job.State == "done"
	})
	c.do("GET", "/v1/replays?destination="+dst.ID, nil, nil, false)
	c.do("GET", "/v1/replays/nope", nil, nil, false)

	var dl struct{ Deliveries []service.DeliveryView }
	c.do("GET", "/v1/deliveries?state=delivered", nil, &dl, false)
	if len(dl.Deliveries) == 0 {
		t.Fatal("no delivered delivery listed")
	}
	c.do("GET", "/v1/deliveries/"+dl.Deliveries[0].ID, nil, nil, false)
	c.do("POST", "/v1/deliveries/"+dl.Deliveries[0].ID+"/retry", nil, nil, false) // 409: not failed
	c.do("POST", "/v1/deliveries/retry", map[string]any{"destination": dst.ID}, nil, false)
	c.do("POST", "/v1/deliveries/"+dl.Deliveries[0].ID+"/skip", nil, nil, false) // 409: in no ordered key
	c.do("GET", "/v1/destinations/"+dst.ID+"/ordered-keys", nil, nil, false)     // 409: no ordering yet
	c.do("PATCH", "/v1/destinations/"+dst.ID, map[string]any{"ordering": map[string]any{"key": "customer.id"}}, nil, false)
	c.do("GET", "/v1/destinations/"+dst.ID+"/ordered-keys?blocked=true&limit=10", nil, nil, false)
	c.do("PATCH", "/v1/destinations/"+dst.ID, map[string]any{"ordering": map[string]any{}}, nil, false)
	c.do("GET", "/v1/stats", nil, nil, false)
	c.do("GET", "/healthz", nil, nil, false)
	c.do("GET", "/readyz", nil, nil, false)
	c.do("GET", "/metrics", nil, nil, false)
	c.do("DELETE", "/v1/destinations/"+dst.ID, nil, nil, false)

	c.do("POST", "/v1/match", map[string]any{"filter": []string{"order.*"}, "match": map[string]any{"data.n": map[string]any{"$gte": 2}},
		"event": map[string]any{"type": "order.paid", "data": map[string]any{"n": 1}}}, nil, false)
	c.do("POST", "/v1/match", map[string]any{"match": map[string]any{"$bad": 1}, "event": map[string]any{}}, nil, false)
	c.do("POST", "/v1/transform", map[string]any{"transform": "function handler(w) { w.method = 'PUT' }",
		"event": map[string]any{"type": "order.paid"}}, nil, false)
	c.do("POST", "/v1/transform", map[string]any{"transform": "function handler(w) {", "event": map[string]any{}}, nil, false)
	var filtered struct{ ID string }
	c.do("POST", "/v1/destinations", map[string]any{"url": recv.URL + "/filtered", "match": map[string]any{"n": map[string]any{"$gt": 1}}}, &filtered, false)
	c.do("PATCH", "/v1/destinations/"+filtered.ID, map[string]any{"match": map[string]any{}}, nil, false)
	c.do("DELETE", "/v1/destinations/"+filtered.ID, nil, nil, false)

	// Tenants, tokens, and every route on one tenant.
	if code := c.do("PUT", "/v1/tenants/acme", map[string]any{"name": "Acme", "metadata": map[string]string{"plan": "pro"}}, nil, false); code != 201 {
		t.Fatalf("put tenant: %d", code)
	}
	c.do("PUT", "/v1/tenants/acme", map[string]any{"ingest_rate": 1000}, nil, false)
	c.do("PUT", "/v1/tenants/bad%20id", map[string]any{}, nil, true)
	c.do("GET", "/v1/tenants?limit=10", nil, nil, false)
	c.do("GET", "/v1/tenants/acme", nil, nil, false)
	c.do("GET", "/v1/tenants/nobody", nil, nil, false)
	var tok service.Token
	if code := c.do("POST", "/v1/tokens", map[string]any{"name": "acme reader", "rights": []string{"read", "ingest"}, "tenant": "acme", "expires_in": "1h"}, &tok, false); code != 201 {
		t.Fatalf("mint: %d", code)
	}
	c.do("POST", "/v1/tokens", map[string]any{"name": "x", "rights": []string{"all"}, "tenant": "acme"}, nil, true)
	c.do("GET", "/v1/tokens", nil, nil, false)
	c.do("GET", "/v1/tokens/"+tok.ID, nil, nil, false)
	var audit struct{ ID string }
	if code := c.do("POST", "/v1/destinations", map[string]any{"url": recv.URL + "/audit", "all_tenants": true}, &audit, false); code != 201 {
		t.Fatalf("all_tenants destination: %d", code)
	}
	var tdst struct{ ID string }
	if code := c.do("POST", "/v1/tenants/acme/destinations", map[string]any{"url": recv.URL + "/acme"}, &tdst, false); code != 201 {
		t.Fatalf("tenant destination: %d", code)
	}
	var tev struct{ ID string }
	if code := c.do("POST", "/v1/tenants/acme/event", `{"type":"invoice.paid"}`, &tev, false); code != 202 {
		t.Fatalf("tenant event: %d", code)
	}
	c.do("POST", "/v1/tenants/acme/batch", `[{"type":"invoice.paid"}]`, nil, false)
	c.do("POST", "/v1/tenants/nobody/event", `{"type":"x"}`, nil, false) // 404
	eventually(t, "the tenant's delivery", 10*time.Second, func() bool { _, ok := recv.has(tev.ID); return ok })
	c.do("GET", "/v1/tenants/acme/events", nil, nil, false)
	var tone service.EventView
	c.do("GET", "/v1/tenants/acme/events/"+tev.ID, nil, &tone, false)
	c.do("GET", "/v1/tenants/acme/events/"+ev.ID, nil, nil, false) // the default tenant's: 404
	c.do("POST", "/v1/tenants/acme/transform", map[string]any{"transform": "function handler(w) { w.cancel = true }",
		"event": map[string]any{}, "destination": tdst.ID}, nil, false)
	c.do("POST", "/v1/tenants/acme/match", map[string]any{"match": map[string]any{"$tenant": "acme"}, "event": map[string]any{}}, nil, false)
	c.do("GET", "/v1/tenants/acme/destinations", nil, nil, false)
	c.do("GET", "/v1/tenants/acme/destinations/"+tdst.ID, nil, nil, false)
	c.do("PATCH", "/v1/tenants/acme/destinations/"+tdst.ID, map[string]any{"description": "acme"}, nil, false)
	c.do("POST", "/v1/tenants/acme/destinations/"+tdst.ID+"/resume", nil, nil, false)
	c.do("POST", "/v1/tenants/acme/destinations/"+tdst.ID+"/rotate-secret", nil, nil, false)
	c.do("GET", "/v1/tenants/acme/destinations/"+tdst.ID+"/secret", nil, nil, false)
	var tjob service.ReplayView
	c.do("POST", "/v1/tenants/acme/destinations/"+tdst.ID+"/replay", map[string]any{"since": since}, &tjob, false)
	c.do("GET", "/v1/tenants/acme/replays", nil, nil, false)
	c.do("GET", "/v1/tenants/acme/replays/"+tjob.ID, nil, nil, false)
	var tdl struct{ Deliveries []service.DeliveryView }
	eventually(t, "the tenant's delivery listed", 10*time.Second, func() bool {
		c.do("GET", "/v1/tenants/acme/deliveries?state=delivered", nil, &tdl, false)
		return len(tdl.Deliveries) > 0
	})
	c.do("GET", "/v1/tenants/acme/deliveries/"+tdl.Deliveries[0].ID, nil, nil, false)
	c.do("POST", "/v1/tenants/acme/deliveries/"+tdl.Deliveries[0].ID+"/retry", nil, nil, false)
	c.do("POST", "/v1/tenants/acme/deliveries/retry", map[string]any{"destination": tdst.ID}, nil, false)
	c.do("POST", "/v1/tenants/acme/deliveries/"+tdl.Deliveries[0].ID+"/skip", nil, nil, false)
	c.do("GET", "/v1/tenants/acme/destinations/"+tdst.ID+"/ordered-keys", nil, nil, false)
	// The portal: a link, what its page reads, the event types, test-sends.
	c.do("PUT", "/v1/tenants/acme", map[string]any{"portal_frame_ancestors": []string{"https://app.acme.example"}}, nil, false)
	var link service.PortalLink
	if code := c.do("POST", "/v1/tenants/acme/portal", map[string]any{"access": "manage", "expires_in": "2h"}, &link, false); code != 201 {
		t.Fatalf("portal: %d", code)
	}
	c.do("POST", "/v1/tenants/acme/portal", nil, nil, false)                              // the defaults
	c.do("POST", "/v1/tenants/acme/portal", map[string]any{"access": "admin"}, nil, true) // 400
	c.do("GET", "/v1/portal", nil, nil, false)                                            // 403: an operator has no portal
	c.do("GET", "/v1/event-types", nil, nil, false)
	c.do("GET", "/v1/tenants/acme/event-types", nil, nil, false)
	c.do("POST", "/v1/destinations/nope/test", nil, nil, false) // 404
	c.do("POST", "/v1/tenants/acme/destinations/"+tdst.ID+"/test", map[string]any{"type": "invoice.paid", "payload": map[string]any{"n": 1}}, nil, false)
	admin := c.token
	c.token = link.URL[strings.Index(link.URL, "#token=")+len("#token="):]
	c.do("GET", "/v1/portal", nil, nil, false)
	c.do("POST", "/v1/destinations/"+tdst.ID+"/test", nil, nil, false)
	c.token = admin
	// The scoped token: its own tenant's, 403 without the right.
	operator := c.token
	c.token = tok.Token
	c.do("GET", "/v1/events", nil, nil, false)
	c.do("GET", "/v1/tokens", nil, nil, false)                       // 403: an operator's
	c.do("DELETE", "/v1/destinations/"+tdst.ID, nil, nil, false)     // 403: no manage
	c.do("GET", "/v1/tenants/default/destinations", nil, nil, false) // 404: not its tenant
	c.do("POST", "/v1/tenants/acme/event", `{"type":"from.the.token"}`, nil, false)
	c.token = operator
	c.do("PUT", "/v1/tenants/acme", map[string]any{"ingest_rate": 0.001, "ingest_burst": 1}, nil, false)
	c.do("POST", "/v1/tenants/acme/event", `{"type":"x"}`, nil, false)
	if code := c.do("POST", "/v1/tenants/acme/event", `{"type":"x"}`, nil, false); code != 429 {
		t.Fatalf("over the tenant's rate: %d, want 429", code)
	}
	c.do("DELETE", "/v1/tenants/acme/destinations/"+tdst.ID, nil, nil, false)
	c.do("DELETE", "/v1/tokens/"+tok.ID, nil, nil, false)
	c.do("DELETE", "/v1/tokens/"+tok.ID, nil, nil, false) // 404
	c.do("DELETE", "/v1/tenants/acme", nil, nil, false)
	c.do("DELETE", "/v1/tenants/default", nil, nil, false) // 409

	// Without the token, every operation but the probes answers 401, as
	// documented.
	c.token = ""
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if path == "/healthz" || path == "/readyz" || path == "/metrics" { // open to probes and scrapers
				continue
			}
			p := strings.ReplaceAll(strings.ReplaceAll(path, "{id}", "x"), "{tenant}", "acme")
			var body any
			if method == "POST" || method == "PATCH" {
				body = "{}"
			}
			if code := c.do(method, p, body, nil, true); code != 401 {
				t.Errorf("%s %s without a token: %d, want 401", method, p, code)
			}
		}
	}

	var missing []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !c.seen[method+" "+path] {
				missing = append(missing, method+" "+path)
			}
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("operations never exercised: %v", missing)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
