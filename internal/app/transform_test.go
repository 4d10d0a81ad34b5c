package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/internal/httpapi"
	"fanout/internal/service"
	"fanout/webhook"
)

// seenRequest is what a receiver got, and whether its signature held.
type seenRequest struct {
	method, path, query string
	header              http.Header
	body                string
	signed              bool
}

// requestReceiver records every request whole, and checks its signature
// with the secret it is given.
type requestReceiver struct {
	*httptest.Server
	mu   sync.Mutex
	key  []byte
	seen []seenRequest
}

func newRequestReceiver(t *testing.T) *requestReceiver {
	r := &requestReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		ts, _ := strconv.ParseInt(req.Header.Get("webhook-timestamp"), 10, 64)
		r.mu.Lock()
		defer r.mu.Unlock()
		ok := r.key != nil && webhook.Verify(r.key, req.Header.Get("webhook-id"), ts, body, req.Header.Get("webhook-signature"))
		r.seen = append(r.seen, seenRequest{req.Method, req.URL.Path, req.URL.RawQuery, req.Header.Clone(), string(body), ok})
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *requestReceiver) setSecret(t *testing.T, secret string) {
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.key = key
	r.mu.Unlock()
}

// got returns the requests carrying webhook-id id.
func (r *requestReceiver) got(id string) []seenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seenRequest
	for _, s := range r.seen {
		if s.header.Get("webhook-id") == id {
			out = append(out, s)
		}
	}
	return out
}

const exampleTransform = `function handler(webhook) {
  if (webhook.payload.type === "order.test") {
    webhook.cancel = "test orders are not sent";
    return webhook;
  }
  webhook.method = "PUT";
  webhook.path = webhook.path + "/orders/" + encodeURIComponent(webhook.payload.data.id);
  webhook.query = "source=fanout&type=" + encodeURIComponent(webhook.event.type);
  webhook.headers["X-Order-Total"] = String(webhook.payload.data.amount / 100);
  webhook.payload = {text: "Order " + webhook.payload.data.id + " paid", event: webhook.event.id};
  return webhook;
}`

// TestRun_Transformations: a destination's transformation changes the
// method, path, query, headers and body that its receiver gets, signed
// over the body as sent; a cancelled delivery is done with its reason and
// nothing sent; a program that loops is stopped, and its delivery fails
// its attempt with the reason recorded; a program that does not compile
// is refused with a 400 naming the line.
func TestRun_Transformations(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	recv := newRequestReceiver(t)

	for _, bad := range []struct{ src, want string }{
		{"function handler(webhook) {\n  return webhook.\n}", "line 3"},
		{"var notAHandler = 1;", "handler"},
		{"function handler(w) {}\nthrow new Error('at the top')", "at the top"},
		{strings.Repeat(" ", 40<<10) + "function handler(w) {}", "over the limit"},
	} {
		var e httpapi.ErrorBody
		if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL, "transform": bad.src}, &e); code != 400 ||
			!strings.Contains(e.Error, "transform") || !strings.Contains(e.Error, bad.want) {
			t.Errorf("create with transform %.40q: %d %q, want 400 naming %q", bad.src, code, e.Error, bad.want)
		}
	}
	var d struct {
		ID, Secret, Transform string
	}
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL + "/hooks?v=1", "transform": exampleTransform,
		"headers": map[string]string{"X-Static": "kept"}}, &d); code != 201 || d.Transform != exampleTransform {
		t.Fatalf("create: %d %+v", code, d)
	}
	recv.setSecret(t, d.Secret)

	paid := postEvent(t, base, `{"type":"order.paid","data":{"id":"o 42","amount":1250}}`)
	test := postEvent(t, base, `{"type":"order.test","data":{"id":"o_43","amount":1}}`)
	eventually(t, "the transformed delivery", 10*time.Second, func() bool { return len(recv.got(paid)) > 0 })
	got := recv.got(paid)[0]
	for _, c := range []struct{ what, got, want string }{
		{"method", got.method, "PUT"},
		{"path", got.path, "/hooks/orders/o 42"},
		{"query", got.query, "source=fanout&type=order.paid"},
		{"X-Order-Total", got.header.Get("X-Order-Total"), "12.5"},
		{"X-Static", got.header.Get("X-Static"), "kept"},
		{"Content-Type", got.header.Get("Content-Type"), "application/json"},
		{"body", got.body, `{"text":"Order o 42 paid","event":"` + paid + `"}`},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.what, c.got, c.want)
		}
	}
	if !got.signed {
		t.Errorf("the signature does not cover the transformed body %q", got.body)
	}

	// Cancelled: done, with the reason, and nothing sent.
	var ev service.EventView
	eventually(t, "the cancelled delivery done", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+test, nil, &ev)
		return ev.State == "delivered" && len(ev.Deliveries) == 1 && ev.Deliveries[0].State == "cancelled"
	})
	var dv service.DeliveryView
	call(t, "GET", base+"/v1/deliveries/"+ev.Deliveries[0].ID, nil, &dv)
	if !strings.Contains(dv.LastError, "test orders are not sent") || dv.Attempts != 1 || len(dv.History) != 1 ||
		!strings.Contains(dv.History[0].Error, "test orders are not sent") {
		t.Errorf("cancelled delivery: %+v, want one attempt recording the handler's reason", dv)
	}
	if n := len(recv.got(test)); n != 0 {
		t.Errorf("the receiver got the cancelled event %d times", n)
	}

	// A program that loops: stopped at its time limit, the attempt fails
	// with the reason; the service goes on (the next event, elsewhere).
	loop := newRequestReceiver(t)
	var ld struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": loop.URL, "filter": []string{"loop.*"},
		"transform": "function handler(webhook) { if (webhook.payload.spin) { for (;;) {} } return webhook; }",
		"retry":     map[string]any{"max_attempts": 2, "initial": "10ms", "max": "10ms"}}, &ld); code != 201 {
		t.Fatalf("create the looping destination: %d", code)
	}
	spin := postEvent(t, base, `{"type":"loop.spin","spin":true}`)
	eventually(t, "the looping delivery failed", 20*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+spin, nil, &ev)
		for _, d := range ev.Deliveries {
			if d.DestinationID == ld.ID && d.State == "failed" {
				call(t, "GET", base+"/v1/deliveries/"+d.ID, nil, &dv)
				return true
			}
		}
		return false
	})
	if dv.State != "failed" || len(dv.History) != 2 {
		t.Fatalf("looping delivery: %+v, want failed after its 2 attempts", dv)
	}
	for _, a := range dv.History {
		if !strings.Contains(a.Error, "transformation: the program ran longer than 50ms") {
			t.Errorf("attempt %d: error %q, want the time limit named", a.Attempt, a.Error)
		}
	}
	if n := len(loop.got(spin)); n != 0 {
		t.Errorf("the receiver got the event whose transformation failed %d times", n)
	}
	calm := postEvent(t, base, `{"type":"loop.calm"}`)
	eventually(t, "the same destination's next event", 10*time.Second, func() bool { return len(loop.got(calm)) == 1 })

	// PATCH "" removes the transformation: the event goes as it was sent.
	if code := call(t, "PATCH", base+"/v1/destinations/"+d.ID, map[string]any{"transform": ""}, nil); code != 200 {
		t.Fatalf("PATCH transform \"\": %d", code)
	}
	plain := postEvent(t, base, `{"type":"order.paid","data":{"id":"o_44"}}`)
	eventually(t, "the plain delivery", 10*time.Second, func() bool { return len(recv.got(plain)) == 1 })
	if g := recv.got(plain)[0]; g.method != "POST" || g.path != "/hooks" || g.query != "v=1" || g.body != `{"type":"order.paid","data":{"id":"o_44"}}` || !g.signed {
		t.Errorf("without a transformation: %+v", g)
	}
}

// TestRun_TransformPreview: POST /v1/transform answers what a program
// makes of an example event, its cancellation, or its error with the
// line; it never sends anything.
func TestRun_TransformPreview(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	event := map[string]any{"type": "order.paid", "data": map[string]any{"id": "o_1", "amount": 1250}}
	for _, tc := range []struct {
		name, src string
		check     func(p service.TransformPreview) bool
	}{
		{"changed", exampleTransform, func(p service.TransformPreview) bool {
			return p.OK && p.Method == "PUT" && p.URL == "https://receiver.example/webhook/orders/o_1?source=fanout&type=order.paid" &&
				p.Headers["X-Order-Total"] == "12.5" && string(p.Body) == `{"text":"Order o_1 paid","event":"evt_preview"}`
		}},
		{"cancelled", "function handler(w) { w.cancel = true }", func(p service.TransformPreview) bool { return p.OK && p.Cancelled }},
		{"syntax", "function handler(w) {\n\n  w.method = ;\n}", func(p service.TransformPreview) bool {
			return !p.OK && p.Line == 3 && strings.Contains(p.Error, "line 3")
		}},
		{"timeout", "function handler(w) { while (true) {} }", func(p service.TransformPreview) bool { return !p.OK && p.Timeout }},
		{"reserved header", "function handler(w) { w.headers['webhook-signature'] = 'v1,forged' }", func(p service.TransformPreview) bool {
			return !p.OK && strings.Contains(p.Error, "webhook-signature")
		}},
		{"host", "function handler(w) { w.path = '//evil.example/x' }", func(p service.TransformPreview) bool {
			return !p.OK && strings.Contains(p.Error, "path")
		}},
		{"require", "function handler(w) { require('fs') }", func(p service.TransformPreview) bool {
			return !p.OK && strings.Contains(p.Error, "require is not defined")
		}},
	} {
		var p service.TransformPreview
		if code := call(t, "POST", base+"/v1/transform", map[string]any{"transform": tc.src, "event": event}, &p); code != 200 || !tc.check(p) {
			t.Errorf("%s: %d %+v", tc.name, code, p)
		}
	}
	var e httpapi.ErrorBody
	if code := call(t, "POST", base+"/v1/transform", map[string]any{"transform": "function handler(w) {}", "event": []int{1}}, &e); code != 400 || !strings.Contains(e.Error, "event") {
		t.Errorf("an event that is not an object: %d %q", code, e.Error)
	}
}

// TestRun_TransformRight: setting a transformation is an operator's right
// unless granted: a tenant's token with manage but not transform gets a
// 403 naming the right (at creation, by PATCH, and for the preview), and
// may still change the rest of a destination that has one, resending the
// same program; a token granted transform may.
func TestRun_TransformRight(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	var tok struct{ Token string }
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "acme transform", "tenant": "acme",
		"rights": []string{"read", "manage", "transform"}, "expires_in": "1h"}, &tok)
	granted, plain := tok.Token, f.tokens["acmeAll"]
	src := "function handler(w) { w.headers['X-By'] = 'acme' }"

	for _, tc := range []struct{ method, path string }{
		{"POST", "/v1/destinations"},
		{"PATCH", "/v1/destinations/" + f.destA},
		{"POST", "/v1/transform"},
	} {
		body := map[string]any{"url": f.recvA.URL, "transform": src}
		switch {
		case tc.method == "PATCH":
			body = map[string]any{"transform": src}
		case tc.path == "/v1/transform":
			body = map[string]any{"transform": src, "event": map[string]any{}}
		}
		status, got := f.as(t, plain, tc.method, tc.path, body)
		if status != 403 || !strings.Contains(got, `\"transform\"`) {
			t.Errorf("%s %s without the right: %d %s, want 403 naming the right transform", tc.method, tc.path, status, got)
		}
	}
	// Nothing of a program sent without the right runs: its top level,
	// which would throw at the check, is not reached before the 403.
	throws := "throw new Error('the top level ran'); function handler(w) {}"
	for _, tc := range []struct{ method, path string }{{"POST", "/v1/destinations"}, {"PATCH", "/v1/destinations/" + f.destA}} {
		if status, got := f.as(t, plain, tc.method, tc.path, map[string]any{"url": f.recvA.URL + "/3", "transform": throws}); status != 403 {
			t.Errorf("%s %s of a program that throws, without the right: %d %s, want 403 before it runs", tc.method, tc.path, status, got)
		}
	}
	if status, got := f.as(t, granted, "POST", "/v1/destinations", map[string]any{"url": f.recvA.URL + "/3", "transform": throws}); status != 400 ||
		!strings.Contains(got, "the top level ran") {
		t.Errorf("the same program with the right: %d %s, want 400 naming its error", status, got)
	}
	f.must(t, 200, granted, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"transform": src}, nil)
	f.must(t, 201, granted, "POST", "/v1/destinations", map[string]any{"url": f.recvA.URL + "/2", "transform": src}, nil)
	f.must(t, 200, granted, "POST", "/v1/transform", map[string]any{"transform": src, "event": map[string]any{}}, nil)
	// Without the right: the same program sent back is no change.
	f.must(t, 200, plain, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"transform": src, "description": "kept"}, nil)
	if status, got := f.as(t, plain, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"transform": ""}); status != 403 {
		t.Errorf("removing a transformation without the right: %d %s, want 403", status, got)
	}
	// Another tenant's destination stays out of reach, with the right.
	f.must(t, 201, f.operator, "POST", "/v1/tokens", map[string]any{"name": "globex transform", "tenant": "globex",
		"rights": []string{"read", "manage", "transform"}, "expires_in": "1h"}, &tok)
	if status, got := f.as(t, tok.Token, "PATCH", "/v1/destinations/"+f.destA, map[string]any{"transform": src}); status != 404 {
		t.Errorf("globex setting acme's transformation: %d %s, want 404", status, got)
	}
	// Nor does globex get a worker to run its program on acme's account:
	// the 404 comes before any check.
	for _, tc := range []struct{ method, path string }{{"PATCH", "/v1/destinations/" + f.destA}, {"POST", "/v1/tenants/acme/destinations"}} {
		if status, got := f.as(t, tok.Token, tc.method, tc.path, map[string]any{"url": f.recvA.URL + "/4", "transform": throws}); status != 404 {
			t.Errorf("globex %s %s with a program that throws: %d %s, want 404 before it runs", tc.method, tc.path, status, got)
		}
	}
	if status, got := f.as(t, tok.Token, "POST", "/v1/transform", map[string]any{"transform": src, "event": map[string]any{}, "destination": f.destA}); status != 404 {
		t.Errorf("globex previewing with acme's destination: %d %s, want 404", status, got)
	}
}

// TestRun_TransformRawEvent: a raw event's transformation sees its type and
// no payload, and may change the request around the bytes, never the bytes:
// they go out as they came, with their Content-Type, signed.
func TestRun_TransformRawEvent(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	recv := newRequestReceiver(t)
	const program = `function handler(webhook) {
  webhook.headers["X-Saw"] = webhook.event.type + " " + JSON.stringify(webhook.payload);
  webhook.path = "/raw";
  webhook.payload = {"replaced": true};
  return webhook;
}`
	var d struct{ ID, Secret string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL, "transform": program}, &d); code != 201 {
		t.Fatalf("create: %d", code)
	}
	recv.setSecret(t, d.Secret)
	const xml = `<order id="7"/>`
	code, id := sendRaw(t, base, "?raw=true&type=order.created", []byte(xml), "Content-Type", "application/xml")
	if code != 202 {
		t.Fatalf("raw event: %d", code)
	}
	eventually(t, "the raw delivery", 10*time.Second, func() bool { return len(recv.got(id)) > 0 })
	got := recv.got(id)[0]
	for _, c := range []struct{ what, got, want string }{
		{"X-Saw", got.header.Get("X-Saw"), "order.created null"},
		{"path", got.path, "/raw"},
		{"Content-Type", got.header.Get("Content-Type"), "application/xml"},
		{"body", got.body, xml},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.what, c.got, c.want)
		}
	}
	if !got.signed {
		t.Error("the raw body's signature does not verify")
	}
}
