package transform

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// slow is a time limit no correct program of these tests reaches, even on
// a busy machine; the tests of the limit itself set their own.
var slow = Limits{Timeout: 5 * time.Second}

var order = Request{URL: "https://receiver.example:8443/hooks?v=1", Headers: map[string]string{"X-Static": "s"},
	Body: []byte(`{"type":"order.paid","data":{"id":"o_1","amount":1250}}`)}

func TestRun(t *testing.T) {
	t.Parallel()
	ev := Event{ID: "evt_1", Type: "order.paid", Tenant: "acme"}
	for _, tc := range []struct {
		name, src string
		want      Outcome
		err       string // a RunError naming this
	}{
		{name: "unchanged", src: "function handler(w) { return w }",
			want: Outcome{Request: Request{Method: "POST", URL: order.URL, Headers: order.Headers, Body: order.Body}}},
		{name: "nothing returned keeps the changes", src: "function handler(w) { w.method = 'patch'; w.headers['X-A'] = w.event.tenant }",
			want: Outcome{Request: Request{Method: "PATCH", URL: order.URL, Headers: map[string]string{"X-Static": "s", "X-A": "acme"}, Body: order.Body}}},
		{name: "a new object", src: "function handler(w) { return {method: 'PUT', path: '/x', query: '', headers: {}, payload: [1, 2]} }",
			want: Outcome{Request: Request{Method: "PUT", URL: "https://receiver.example:8443/x", Headers: map[string]string{}, Body: []byte("[1,2]")}}},
		{name: "path escaped", src: "function handler(w) { w.path = '/a b/%C3%A9'; w.query = '?q=1' }",
			want: Outcome{Request: Request{Method: "POST", URL: "https://receiver.example:8443/a%20b/%C3%A9?q=1", Headers: order.Headers, Body: order.Body}}},
		{name: "payload removed", src: "function handler(w) { w.method = 'DELETE'; delete w.payload }",
			want: Outcome{Request: Request{Method: "DELETE", URL: order.URL, Headers: order.Headers}}},
		{name: "event read-only", src: "function handler(w) { w.event.id = 'forged'; w.payload = w.event }",
			want: Outcome{Request: Request{Method: "POST", URL: order.URL, Headers: order.Headers, Body: []byte(`{"id":"evt_1","type":"order.paid","tenant":"acme"}`)}}},
		{name: "cancel true", src: "function handler(w) { w.cancel = true }", want: Outcome{Cancelled: true}},
		{name: "cancel with a reason", src: "function handler(w) { w.cancel = 'not for them'; w.method = 'GET' }",
			want: Outcome{Cancelled: true, Reason: "not for them"}},
		{name: "null", src: "function handler(w) { return null }", err: "not null"},
		{name: "throws", src: "function handler(w) { throw new Error('boom') }", err: "boom"},
		{name: "GET", src: "function handler(w) { w.method = 'GET' }", err: `method "GET"`},
		{name: "signature header", src: "function handler(w) { w.headers['Webhook-Signature'] = 'v1,x' }", err: "Webhook-Signature"},
		{name: "host header", src: "function handler(w) { w.headers.Host = 'evil.example' }", err: "Host"},
		{name: "content-length", src: "function handler(w) { w.headers['content-length'] = '1' }", err: "content-length"},
		{name: "header twice", src: "function handler(w) { w.headers['x-static'] = 't' }", err: "twice"},
		{name: "bad header value", src: "function handler(w) { w.headers['X-A'] = 'a\\r\\nInjected: 1' }", err: "control character"},
		{name: "header not a string", src: "function handler(w) { w.headers['X-A'] = 1 }", err: "must be a string"},
		{name: "authority path", src: "function handler(w) { w.path = '//evil.example/x' }", err: "single /"},
		{name: "relative path", src: "function handler(w) { w.path = 'evil.example' }", err: "single /"},
		{name: "query in path", src: "function handler(w) { w.path = '/x?y=1' }", err: "query"},
		{name: "fragment in query", src: "function handler(w) { w.query = 'a=1#frag' }", err: "query"},
		{name: "no require", src: "function handler(w) { require('fs') }", err: "require is not defined"},
		{name: "no eval", src: "function handler(w) { eval('1') }", err: "eval is not defined"},
		{name: "no Function", src: "function handler(w) { (function(){}).constructor('return 1')() }", err: "TypeError"},
		{name: "no timers", src: "function handler(w) { setTimeout(function(){}, 1) }", err: "setTimeout is not defined"},
		{name: "recursion", src: "function handler(w) { function f() { return f() + 1 } return f() }", err: "nest deeper"},
		{name: "too large", src: "function handler(w) { w.payload = 'x'.repeat(2 << 20) }", err: "over the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := Compile(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			got, err := NewEngine(slow).Run(context.Background(), p, ev, order)
			if tc.err != "" {
				var re *RunError
				if !errors.As(err, &re) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %+v, %v; want a RunError naming %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gb, wb := got.Request.Body, tc.want.Request.Body
			got.Request.Body, tc.want.Request.Body = nil, nil
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(tc.want)
			if string(g) != string(w) || string(gb) != string(wb) {
				t.Errorf("got  %s %s\nwant %s %s", g, gb, w, wb)
			}
		})
	}
}

func TestCompile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		src          string
		line, column int
		want         string
	}{
		{src: "", want: "empty"},
		{src: "function handler(w) {\n  return w.\n}", line: 3, want: "Unexpected"},
		{src: "function handler(w) {", line: 1, want: "Unexpected end of input"},
		{src: "var handler = 1", want: "does not define function handler"},
		{src: "function other(w) {}", want: "does not define function handler"},
		{src: "function handler(w) {}\nfor (;;) {}", want: "ran longer than"},
		{src: "import fs from 'fs'\nfunction handler(w) {}", line: 1, want: "reserved word"},
		{src: strings.Repeat("//", MaxSourceBytes), want: "over the limit"},
	} {
		_, err := Compile(tc.src)
		var se *SyntaxError
		if !errors.As(err, &se) || se.Line != tc.line || (tc.column > 0 && se.Column != tc.column) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compile(%.40q): %v (%+v), want a SyntaxError at line %d naming %q", tc.src, err, se, tc.line, tc.want)
		}
	}
	if _, err := Compile("const handler = (w) => w"); err != nil {
		t.Errorf("an arrow function as handler: %v", err)
	}
}

// TestTimeout: a program that loops is stopped at the limit, a fast one
// is not; an interrupted runtime is not reused.
func TestTimeout(t *testing.T) {
	t.Parallel()
	p, err := Compile("function handler(w) { if (w.payload.spin) { for (;;) {} } return w }")
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(Limits{Timeout: 100 * time.Millisecond})
	start := time.Now()
	_, err = e.Run(context.Background(), p, Event{}, Request{URL: "http://h/", Body: []byte(`{"spin":true}`)})
	var re *RunError
	if !errors.As(err, &re) || !re.Timeout || !strings.Contains(err.Error(), "100ms") {
		t.Fatalf("a loop: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 3*time.Second {
		t.Errorf("the loop was stopped after %v, want soon after 100ms", d)
	}
	for range 20 {
		if _, err := NewEngine(slow).Run(context.Background(), p, Event{}, Request{URL: "http://h/", Body: []byte(`{}`)}); err != nil {
			t.Fatalf("after a timeout: %v", err)
		}
	}
	// The context ends a run too.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = NewEngine(slow).Run(ctx, p, Event{}, Request{URL: "http://h/", Body: []byte(`{"spin":true}`)})
	if !errors.As(err, &re) || re.Timeout || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("a cancelled context: %v", err)
	}
}

// TestInputBound: an event over MaxInputBytes is refused without running.
func TestInputBound(t *testing.T) {
	t.Parallel()
	p, err := Compile("function handler(w) {}")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"a":"` + strings.Repeat("x", MaxInputBytes) + `"}`)
	if _, err := NewEngine(slow).Run(context.Background(), p, Event{}, Request{URL: "http://h/", Body: body}); err == nil || !strings.Contains(err.Error(), "over the") {
		t.Errorf("a large event: %v", err)
	}
	// Not JSON (a raw body): the payload is null.
	p, _ = Compile("function handler(w) { w.payload = {was: w.payload} }")
	out, err := NewEngine(slow).Run(context.Background(), p, Event{}, Request{URL: "http://h/", Body: []byte("a,b\n1,2")})
	if err != nil || string(out.Request.Body) != `{"was":null}` {
		t.Errorf("a body that is not JSON: %+v %v", out, err)
	}
}

// TestEngineCache: a program is compiled once per key and source.
func TestEngineCache(t *testing.T) {
	t.Parallel()
	e := NewEngine(slow)
	a, err := e.Program("dst_1", "function handler(w) {}")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := e.Program("dst_1", "function handler(w) {}")
	c, _ := e.Program("dst_1", "function handler(w) { w.method = 'PUT' }")
	if a != b || c == a {
		t.Errorf("cache: same source %v, new source %v", a == b, c != a)
	}
	if _, err := e.Program("dst_2", "function ("); err == nil {
		t.Error("a program that does not compile was cached")
	}
}

func TestDecodeResult(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, err string
		want    Result
	}{
		{in: `{"method":"post","path":"/","query":"a=1","headers":{"X":"y"},"payload":{"k":1}}`,
			want: Result{Method: "POST", Path: "/", Query: "a=1", Headers: map[string]string{"X": "y"}, Payload: []byte(`{"k":1}`)}},
		{in: `{"cancel":true,"method":1}`, want: Result{Cancel: true}},
		{in: `{"cancel":"why","method":1}`, want: Result{Cancel: true, Reason: "why"}},
		{in: `{"cancel":false,"method":"PUT","path":"/p"}`, want: Result{Method: "PUT", Path: "/p"}},
		{in: `{"cancel":1}`, err: "cancel"},
		{in: `[]`, err: "not a JSON object"},
		{in: `{"method":"POST"}`, err: "path must be a string"},
		{in: `{"method":"TRACE","path":"/"}`, err: "TRACE"},
		{in: `{"method":"POST","path":"/","headers":[]}`, err: "headers must be an object"},
		{in: `{"method":"POST","path":"/","query":"a b"}`, err: "query"},
		{in: `{"method":"POST","path":"/\\\\evil"}`, err: "backslash"},
		{in: `{"method":"POST","path":"/","headers":{"Transfer-Encoding":"chunked"}}`, err: "Transfer-Encoding"},
		{in: `{"method":"POST","path":"/","headers":{"bad name":"x"}}`, err: "valid HTTP field name"},
	} {
		got, err := DecodeResult([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %+v %v, want an error naming %q", tc.in, got, err, tc.err)
			}
			continue
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(&tc.want)
		if err != nil || string(g) != string(w) {
			t.Errorf("%s: %s %v, want %s", tc.in, g, err, w)
		}
	}
}
