package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/webhook"
)

var testLimits = Limits{MaxEventBytes: 64, MaxBatchBytes: 512, MaxBatchEvents: 4, IngestTimeout: 5 * time.Second}

func openTestStore(t testing.TB, dir string) *dispatchsqlite.Store {
	t.Helper()
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(dir, "fanout.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// testService is the HTTP API over a real SQLite store, with a runtime that
// is not started: the tests see exactly what ingest stored.
type testService struct {
	store   appStore
	svc     *service
	handler http.Handler
}

func newTestService(t testing.TB, store appStore) *testService {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dests := destination.NewRegistry(destination.Config{Store: store, Logger: log})
	if err := dests.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	fns := newFunctions(dests, webhook.NewClient(webhook.Config{}), time.Now)
	rt, err := dispatch.New(&dispatch.Config{Store: store, Keys: dests.KeyConfig, Logger: log}, fns.publishEvent, fns.handleEvent)
	if err != nil {
		t.Fatal(err)
	}
	svc := &service{rt: rt, store: store, fns: fns, dests: dests}
	return &testService{store: store, svc: svc, handler: newHandler(log, svc, testLimits, nil)}
}

func (s *testService) do(t testing.TB, method, path, body string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	s.handler.ServeHTTP(w, req)
	return w
}

// stored returns the events in the store (claiming them, which is fine for
// a store no runtime runs on).
func stored(t testing.TB, s dispatch.Store) []*dispatch.Call {
	t.Helper()
	calls, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{
		Owner: "test", Functions: []string{"handleEvent"}, Limit: 100000,
		Now: time.Now().Add(time.Hour), LeaseUntil: time.Now().Add(2 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	return calls
}

// gz compresses s with gzip.
func gz(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write([]byte(s))
	_ = zw.Close()
	return b.String()
}

func TestHandlers_Accept(t *testing.T) {
	gzipped := []string{"Content-Encoding", "gzip"}
	tests := []struct {
		name   string
		path   string
		body   string
		events []string // the bytes each stored event must have
		header []string
	}{
		{"Event", "/v1/event", `{"user_id": "42"}`, []string{`{"user_id": "42"}`}, nil},
		{"EventKeepsBytes", "/v1/event", "{\"a\" : 1.50, \"h\":\"<&>\" }", []string{"{\"a\" : 1.50, \"h\":\"<&>\" }"}, nil},
		{"EventWithoutOuterSpace", "/v1/event", " \t{\"a\":1}\n", []string{`{"a":1}`}, nil},
		{"Batch", "/v1/batch", `[{"n":1}, {"n":2} ,{"n": 3}]`, []string{`{"n":1}`, `{"n":2}`, `{"n": 3}`}, nil},
		{"BatchAtLimits", "/v1/batch", `[{},{},{},{"x":"` + strings.Repeat("y", 50) + `"}]`,
			[]string{`{}`, `{}`, `{}`, `{"x":"` + strings.Repeat("y", 50) + `"}`}, nil},
		{"EventGzip", "/v1/event", gz(`{"user_id": "42"}`), []string{`{"user_id": "42"}`}, gzipped},
		{"BatchGzip", "/v1/batch", gz(`[{"n":1},{"n":2}]`), []string{`{"n":1}`, `{"n":2}`}, []string{"Content-Encoding", "X-GZIP"}},
		{"EventIdentity", "/v1/event", `{"a":1}`, []string{`{"a":1}`}, []string{"Content-Encoding", "identity"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := newTestService(t, openTestStore(t, t.TempDir()))
			w := svc.do(t, "POST", tc.path, tc.body, tc.header...)
			if w.Code != http.StatusAccepted {
				t.Fatalf("status %d (%s), want 202", w.Code, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			var resp struct {
				ID  string   `json:"id"`
				IDs []string `json:"ids"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			ids := resp.IDs
			if tc.path == "/v1/event" {
				ids = []string{resp.ID}
			}
			if len(ids) != len(tc.events) {
				t.Fatalf("got %d ids, want %d", len(ids), len(tc.events))
			}
			for i, id := range ids {
				c, err := svc.store.CallGet(context.Background(), id)
				if err != nil {
					t.Fatalf("event %d (%s) not stored: %v", i, id, err)
				}
				if string(c.Input) != tc.events[i] || c.Function != "handleEvent" {
					t.Fatalf("event %d stored as %s %q, want handleEvent %q", i, c.Function, c.Input, tc.events[i])
				}
				if i > 0 && ids[i-1] >= id {
					t.Fatalf("ids %s, %s are not in order", ids[i-1], id)
				}
			}
			if got := len(stored(t, svc.store)); got != len(tc.events) {
				t.Fatalf("store holds %d events, want %d", got, len(tc.events))
			}
		})
	}
}

func TestHandlers_Reject(t *testing.T) {
	idx := func(i int) *int { return &i }
	tests := []struct {
		name    string
		method  string
		path    string
		body    string
		header  []string
		status  int
		message string
		index   *int
	}{
		{"EventNotJSON", "POST", "/v1/event", `{"user_id":`, nil, 400, "not valid JSON", nil},
		{"EventArray", "POST", "/v1/event", `[{"a":1}]`, nil, 400, "must be a JSON object, got an array", nil},
		{"EventString", "POST", "/v1/event", `"hello"`, nil, 400, "got a string", nil},
		{"EventNull", "POST", "/v1/event", `null`, nil, 400, "got null", nil},
		{"EventEmpty", "POST", "/v1/event", ``, nil, 400, "empty", nil},
		{"EventTwoObjects", "POST", "/v1/event", `{}{}`, nil, 400, "not valid JSON", nil},
		{"EventTrailingData", "POST", "/v1/event", `{"a":1} x`, nil, 400, "not valid JSON", nil},
		{"EventBadUTF8", "POST", "/v1/event", "{\"a\":\"\xff\"}", nil, 400, "UTF-8", nil},
		{"EventTooLarge", "POST", "/v1/event", `{"a":"` + strings.Repeat("x", 80) + `"}`, nil, 413, "limit of 64 bytes (--max-event-bytes)", nil},
		{"EventBrotli", "POST", "/v1/event", `{}`, []string{"Content-Encoding", "br"}, 415, `"br" is not supported; send the body uncompressed or gzip`, nil},
		{"EventNotGzip", "POST", "/v1/event", `{}`, []string{"Content-Encoding", "gzip"}, 400, "not valid gzip", nil},
		{"EventGzipTruncated", "POST", "/v1/event", gz(`{"a":1}`)[:15], []string{"Content-Encoding", "gzip"}, 400, "not valid gzip", nil},
		{"EventGzipTrailingJunk", "POST", "/v1/event", gz(`{"a":1}`) + "junk", []string{"Content-Encoding", "gzip"}, 400, "not valid gzip", nil},
		{"EventGzipBomb", "POST", "/v1/event", gz(`{"a":"` + strings.Repeat("x", 10000) + `"}`), []string{"Content-Encoding", "gzip"}, 413, "decompressed request body is larger than the limit of 64 bytes", nil},
		{"EventGzipNotJSON", "POST", "/v1/event", gz(`{"a":`), []string{"Content-Encoding", "gzip"}, 400, "not valid JSON", nil},
		{"EventGzipEmpty", "POST", "/v1/event", gz(``), []string{"Content-Encoding", "gzip"}, 400, "empty", nil},
		{"BatchGzipBadElement", "POST", "/v1/batch", gz(`[{}, 3]`), []string{"Content-Encoding", "gzip"}, 400, "event 1 must be a JSON object", idx(1)},
		{"BatchObject", "POST", "/v1/batch", `{"a":1}`, nil, 400, "must be a JSON array of event objects, got an object", nil},
		{"BatchEmpty", "POST", "/v1/batch", `[]`, nil, 400, "batch is empty", nil},
		{"BatchEmptyBody", "POST", "/v1/batch", ``, nil, 400, "empty", nil},
		{"BatchNotJSON", "POST", "/v1/batch", `nope`, nil, 400, "not valid JSON", nil},
		{"BatchElementNumber", "POST", "/v1/batch", `[{}, 3]`, nil, 400, "event 1 must be a JSON object, got a number", idx(1)},
		{"BatchElementArray", "POST", "/v1/batch", `[{}, {}, []]`, nil, 400, "event 2 must be a JSON object, got an array", idx(2)},
		{"BatchElementInvalid", "POST", "/v1/batch", `[{}, {"a":}]`, nil, 400, "event 1 is not valid JSON", idx(1)},
		{"BatchUnterminated", "POST", "/v1/batch", `[{}, {}`, nil, 400, "not valid JSON", nil},
		{"BatchTrailingData", "POST", "/v1/batch", `[{}] {}`, nil, 400, "unexpected data after the batch", nil},
		{"BatchTooManyEvents", "POST", "/v1/batch", `[{},{},{},{},{}]`, nil, 413, "more than 4 events", nil},
		{"BatchEventTooLarge", "POST", "/v1/batch", `[{}, {"a":"` + strings.Repeat("x", 80) + `"}]`, nil, 413, "event 1 is 88 bytes, over the limit of 64", idx(1)},
		{"BatchTooLarge", "POST", "/v1/batch", `[` + strings.Repeat(`{"a":"`+strings.Repeat("x", 40)+`"},`, 12) + `{}]`, nil, 413, "limit of 512 bytes (--max-batch-bytes)", nil},
		{"BatchBadUTF8", "POST", "/v1/batch", "[{\"a\":\"\xc3\x28\"}]", nil, 400, "UTF-8", nil},
		{"GetEvent", "GET", "/v1/event", ``, nil, 405, "use POST", nil},
		{"PutBatch", "PUT", "/v1/batch", `[{}]`, nil, 405, "use POST", nil},
		{"UnknownRoute", "POST", "/v1/events", `{}`, nil, 404, "no route for POST /v1/events", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := newTestService(t, openTestStore(t, t.TempDir()))
			w := svc.do(t, tc.method, tc.path, tc.body, tc.header...)
			if w.Code != tc.status {
				t.Fatalf("status %d (%s), want %d", w.Code, w.Body, tc.status)
			}
			var resp errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatalf("error body %q is not JSON: %v", w.Body, err)
			}
			if !strings.Contains(resp.Error, tc.message) {
				t.Fatalf("error %q, want it to contain %q", resp.Error, tc.message)
			}
			if (resp.Index == nil) != (tc.index == nil) || (resp.Index != nil && *resp.Index != *tc.index) {
				t.Fatalf("index %v, want %v", resp.Index, tc.index)
			}
			if got := len(stored(t, svc.store)); got != 0 {
				t.Fatalf("a rejected request stored %d events", got)
			}
		})
	}
}

// poisonStore makes a real SQLite transaction fail part-way: it gives the
// middle call of a batch the id of a call that exists, so the insert hits a
// constraint after half the rows went in.
type poisonStore struct {
	appStore
	poison atomic.Bool
}

func (p *poisonStore) CallInsertMany(ctx context.Context, params *dispatch.CallInsertParams) ([]string, error) {
	if calls := params.Calls; p.poison.Load() && len(calls) > 1 {
		calls[len(calls)/2].ID = "existing"
	}
	return p.appStore.CallInsertMany(ctx, params)
}

// TestHandlers_TooLargeOverTheWire sends a body over the limit that the
// client has not finished sending: the 413 must come at once, not after the
// server has tried to read the rest.
func TestHandlers_TooLargeOverTheWire(t *testing.T) {
	ts := newTestService(t, openTestStore(t, t.TempDir()))
	srv := httptest.NewServer(ts.handler)
	defer srv.Close()
	for _, tc := range []struct {
		name     string
		encoding string
	}{{"Plain", ""}, {"Gzip", "gzip"}} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			go func() {
				// 100 KB of an event, chunked, then the client stalls.
				chunk := []byte(`{"a":"` + strings.Repeat("x", 100_000))
				if tc.encoding == "gzip" {
					chunk = []byte(gz(string(chunk)))
				}
				_, _ = pw.Write(chunk)
			}()
			req, _ := http.NewRequest("POST", srv.URL+"/v1/event", pr)
			if tc.encoding != "" {
				req.Header.Set("Content-Encoding", tc.encoding)
			}
			done := make(chan *http.Response, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Errorf("POST: %v", err)
				}
				done <- resp
			}()
			select {
			case resp := <-done:
				if resp == nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestEntityTooLarge {
					t.Fatalf("status %d, want 413", resp.StatusCode)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no answer within 5s to a body over the limit that the client is still sending")
			}
		})
	}
}

func TestHandlers_StorageFailure(t *testing.T) {
	ctx := context.Background()
	real := openTestStore(t, t.TempDir())
	if _, err := real.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{{ID: "existing",
		Function: "other", Input: []byte(`{}`), RunAfter: time.Now(), CreatedAt: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	store := &poisonStore{appStore: real}
	svc := newTestService(t, store)

	store.poison.Store(true)
	w := svc.do(t, "POST", "/v1/batch", `[{"n":1},{"n":2},{"n":3},{"n":4}]`)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q (%s), want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if !strings.Contains(w.Body.String(), "nothing was stored") {
		t.Fatalf("body %s, want it to say nothing was stored", w.Body)
	}
	if got := len(stored(t, store)); got != 0 {
		t.Fatalf("a failed batch left %d of its events in the store", got)
	}

	// Ingest recovers with the store.
	store.poison.Store(false)
	if w := svc.do(t, "POST", "/v1/batch", `[{"n":1},{"n":2}]`); w.Code != http.StatusAccepted {
		t.Fatalf("after recovery: status %d (%s)", w.Code, w.Body)
	}

	// A closed store answers 503 too.
	if err := real.Close(); err != nil {
		t.Fatal(err)
	}
	if w := svc.do(t, "POST", "/v1/event", `{}`); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("closed store: status %d (%s), want 503", w.Code, w.Body)
	}
}

func TestMessage_MarshalJSON(t *testing.T) {
	events := []string{`{"a":1}`, " {\n \"h\" : \"<&>\\u00e9\" , \"n\": 1.50e2 }\t", `{}`}
	for _, e := range events {
		m := Message{EventID: "id-1", DestinationID: "dst_\"<", Event: json.RawMessage(e)}
		b, err := m.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(b) {
			t.Fatalf("MarshalJSON = %s, not valid JSON", b)
		}
		var back Message
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.EventID != m.EventID || back.DestinationID != m.DestinationID || string(back.Event) != strings.TrimSpace(e) && string(back.Event) != e {
			t.Fatalf("round trip of %q gave %+v", e, back)
		}
		if !bytes.Contains(b, []byte(e)) {
			t.Fatalf("MarshalJSON = %s does not carry the event bytes %q as they are", b, e)
		}
	}
}

// FuzzDecodeBatch checks that the batch decoder never panics, and that what
// it accepts is what encoding/json reads as an array of objects, each within
// the limits and kept byte for byte.
func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{`[{"a":1}]`, `[{}, {"b":[1,2,{"c":null}]}]`, `[]`, `[{}, 3]`, `{"a":1}`, ` [ {} , {} ] `,
		`[{"a":"\u00e9\ud83d\ude00"}]`, `[{}]]`, `[{"a":1e999}]`, "[{\"a\":\"\xff\"}]"} {
		f.Add([]byte(s))
	}
	limits := Limits{MaxEventBytes: 256, MaxBatchBytes: 4096, MaxBatchEvents: 16}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := decodeBatch(body, limits)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status < 400 || ae.Status > 499 || ae.Message == "" {
				t.Fatalf("decodeBatch error %v is not a 4xx with a message", err)
			}
			return
		}
		var want []json.RawMessage
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("decodeBatch accepted %q, which encoding/json rejects: %v", body, err)
		}
		if len(events) != len(want) || len(events) == 0 || len(events) > limits.MaxBatchEvents {
			t.Fatalf("decodeBatch gave %d events, encoding/json %d", len(events), len(want))
		}
		for i, e := range events {
			if err := validateEvent(e); err != nil {
				t.Fatalf("event %d %q accepted but invalid: %v", i, e, err)
			}
			if int64(len(e)) > limits.MaxEventBytes || !bytes.Contains(body, e) {
				t.Fatalf("event %d %q is over the limit or not the request's own bytes", i, e)
			}
		}
	})
}

// FuzzValidateEvent checks that an accepted event is a JSON object that
// encoding/json reads, and that a refusal never panics.
func FuzzValidateEvent(f *testing.F) {
	for _, s := range []string{`{"user_id":"42"}`, `[]`, `"x"`, `{`, ``, ` {} `, `{"a":1}{}`, "{\"\xff\":1}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if err := validateEvent(body); err != nil {
			return
		}
		var obj map[string]json.RawMessage // raw: 1e999 is valid JSON, though no float64
		if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
			t.Fatalf("validateEvent accepted %q, which is not a JSON object: %v", body, err)
		}
	})
}

func TestEventFields(t *testing.T) {
	tests := []struct {
		event   string
		typ, id string
	}{
		{`{"type":"user.created","id":"evt_1"}`, "user.created", "evt_1"},
		{`{"id":42,"type":"a"}`, "a", "42"},
		{`{"id":-1.5e3}`, "", "-1.5e3"},
		{`{"type":"caf\u00e9","id":"a\"b"}`, "café", `a"b`},
		{`{"type":1,"id":true}`, "", ""},
		{`{"type":null,"id":{"x":1}}`, "", ""},
		{`{"data":{"type":"nested","id":"nested"}}`, "", ""},
		{`{"TYPE":"upper","Id":"upper"}`, "", ""},
		{`{"type":"first","type":"second"}`, "first", ""},
		{` { "type" : "spaced" } `, "spaced", ""},
		{`{}`, "", ""},
	}
	for _, tt := range tests {
		f := eventFields(json.RawMessage(tt.event))
		if f.Type != tt.typ || f.ID != tt.id {
			t.Errorf("eventFields(%s) = %+v, want type %q id %q", tt.event, f, tt.typ, tt.id)
		}
	}
}

// FuzzEventFields checks eventFields against a reference on encoding/json's
// token stream: the first top-level "type" that is a string, the first
// top-level "id" that is a string (decoded) or a number (as written).
func FuzzEventFields(f *testing.F) {
	for _, s := range []string{`{"type":"a.b","id":"x"}`, `{"id":12}`, `{"type":"\u00e9\n","id":"\"q"}`,
		`{"a":{"type":"n"},"type":"t"}`, `{"type":"1","type":"2"}`, `{"ty\u0070e":"escaped key"}`, `{"id":[1,{"id":2}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, event []byte) {
		if validateEvent(event) != nil {
			return
		}
		got := eventFields(event)
		var want fields
		var haveType, haveID bool
		dec := json.NewDecoder(bytes.NewReader(event))
		dec.UseNumber()
		if _, err := dec.Token(); err != nil { // {
			t.Fatal(err)
		}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			switch k {
			case "type":
				if !haveType {
					haveType = true
					want.Type, _ = v.(string)
				}
			case "id":
				if !haveID {
					haveID = true
					switch v := v.(type) {
					case string:
						want.ID = v
					case json.Number:
						want.ID = v.String()
					}
				}
			}
		}
		if got != want {
			t.Fatalf("eventFields(%q) = %+v, want %+v", event, got, want)
		}
	})
}

// FuzzAPI sends fuzzed bodies, paths, queries and headers to every route
// that reads them, over a real store: whatever the input, the answer is a
// 2xx, or a 4xx whose JSON body names the problem; never a 5xx, never a
// panic (recoverPanics would turn one into a 500).
func FuzzAPI(f *testing.F) {
	for _, s := range []struct {
		route     uint8
		arg, body string
	}{
		{0, "", `{"type":"a"}`},
		{0, "key-1", `{"id":"e1"}`},
		{0, "\x00key", `{}`},
		{1, "", `[{"a":1},{"b":2}]`},
		{1, "batch-1", `[{}]`},
		{2, "", `{"url":"https://example.com/h","filter":["order.*"],"retry":{"initial":"1s","max_age":"72h"}}`},
		{2, "", `{"url":"https://example.com/h","headers":{"X-A":"b"},"max_concurrency":3,"rate_limit":0.5}`},
		{3, "", `{"enabled":false,"paused":true}`},
		{3, "", `{"retry":{}}`},
		{4, "state=failed&destination=dst_1&since=2026-11-28T00:00:00Z&limit=5", ""},
		{4, "state=bogus&limit=0&cursor=%ff", ""},
		{5, "", `{"destination":"dst_1","state":"failed","since":"2026-01-01T00:00:00Z","until":"2027-01-01T00:00:00Z"}`},
		{6, "01a21f4d-fc58-7a16-94d8-32106577de72", ""},
		{7, "x/../../y", ""},
		{8, "dst_1", ""},
		{9, "", gz(`[{"a":1},{"b":2}]`)},
		{9, "", gz(`[{"a":1}`)},
	} {
		f.Add(s.route, s.arg, s.body)
	}
	ts := newTestService(f, openTestStore(f, f.TempDir()))
	// One destination to patch, resume, rotate and redrive.
	if w := ts.do(f, "POST", "/v1/destinations", `{"url":"https://example.com/fuzz"}`); w.Code != http.StatusCreated {
		f.Fatalf("create: %d %s", w.Code, w.Body)
	}
	dst := ts.svc.dests.List()[0].ID
	f.Fuzz(func(t *testing.T, route uint8, arg, body string) {
		var method, path, query string
		var header []string
		switch route % 10 {
		case 0:
			method, path, header = "POST", "/v1/event", []string{"Idempotency-Key", arg}
		case 1:
			method, path, header = "POST", "/v1/batch", []string{"Idempotency-Key", arg}
		case 2:
			method, path = "POST", "/v1/destinations"
		case 3:
			method, path = "PATCH", "/v1/destinations/"+dst
		case 4:
			method, path, query = "GET", "/v1/deliveries", arg
		case 5:
			method, path = "POST", "/v1/deliveries/retry"
		case 6:
			method, path = "GET", "/v1/events/"+url.PathEscape(arg)
		case 7:
			method, path = "GET", "/v1/deliveries/"+url.PathEscape(arg)
		case 8:
			method, path = "POST", "/v1/destinations/"+url.PathEscape(arg)+"/rotate-secret"
		case 9:
			method, path, header = "POST", "/v1/batch", []string{"Content-Encoding", "gzip"}
		}
		// The raw query as a client may send it, whatever its bytes:
		// httptest.NewRequest would refuse to parse some of them.
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.URL.RawQuery = query
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		w := httptest.NewRecorder()
		ts.handler.ServeHTTP(w, req)
		path += "?" + query
		if w.Code >= 500 {
			t.Fatalf("%s %s (%q) = %d %s", method, path, body, w.Code, w.Body)
		}
		if w.Code >= 400 {
			var e errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s (%q) = %d with body %q: want a JSON error naming the problem", method, path, body, w.Code, w.Body)
			}
		}
	})
}

// --- run(): the whole service, end to end ---

// receiver is a test destination on loopback that records what it gets.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	received map[string][]byte // by webhook-id
	count    map[string]int
	refused  map[string]bool
	fail     atomic.Bool // answer 503 while set
	failed   atomic.Int64
	hold     atomic.Bool  // while set, answer 503 to known events and delay new ones
	delay    atomic.Int64 // nanoseconds
	started  atomic.Int64 // delayed requests begun
}

func newReceiver(t testing.TB) *receiver {
	d := &receiver{received: make(map[string][]byte), count: make(map[string]int)}
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		id := r.Header.Get("webhook-id")
		if d.fail.Load() {
			d.mu.Lock()
			if d.refused == nil {
				d.refused = map[string]bool{}
			}
			d.refused[id] = true
			d.mu.Unlock()
			d.failed.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if d.hold.Load() {
			if d.seenFailing(id) {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			d.started.Add(1)
			time.Sleep(time.Duration(d.delay.Load()))
		}
		d.mu.Lock()
		d.received[id] = body
		d.count[id]++
		d.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(d.Close)
	return d
}

// seenFailing reports whether id was refused before (a retry).
func (d *receiver) seenFailing(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refused == nil {
		d.refused = map[string]bool{}
	}
	return d.refused[id]
}

func (d *receiver) deliveries(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.count[id]
}

func (d *receiver) has(id string) ([]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, ok := d.received[id]
	return b, ok
}

func (d *receiver) waitAll(t testing.TB, want map[string]string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		missing := 0
		for id, body := range want {
			got, ok := d.has(id)
			if !ok {
				missing++
				continue
			}
			if string(got) != body {
				t.Fatalf("destination got %q for %s, want the bytes sent, %q", got, id, body)
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d events not delivered after %v", d.URL, missing, len(want), timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startRun starts run() on a free loopback port, with the SSRF guard letting
// loopback destinations through, and returns its base URL and a function
// that stops it and returns run's error.
func startRun(t testing.TB, args []string, env map[string]string) (string, func() error) {
	t.Helper()
	return startRunArgs(t, append([]string{"--addr", "127.0.0.1:0", "--allow-network", "127.0.0.0/8"}, args...), env)
}

// startRunArgs is startRun with exactly these arguments.
func startRunArgs(t testing.TB, args []string, env map[string]string) (string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var logs bytes.Buffer
	var logsMu sync.Mutex
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, func(k string) string { return env[k] }, io.Discard, pw)
		pw.Close()
		done <- err
	}()
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`msg="fanout listening" addr=(\S+)`)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logsMu.Lock()
			logs.WriteString(sc.Text() + "\n")
			logsMu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	var stopOnce sync.Once
	var stopErr error
	stop := func() error {
		stopOnce.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				var dump strings.Builder
				_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
				stopErr = fmt.Errorf("run did not return within 30s of cancellation; goroutines:\n%s", dump.String())
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		_ = stop()
		if t.Failed() || os.Getenv("FANOUT_TEST_LOGS") != "" {
			logsMu.Lock()
			t.Logf("fanout logs:\n%s", logs.String())
			logsMu.Unlock()
		}
	})
	select {
	case a := <-addr:
		return a, stop
	case err := <-done:
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening within 10s")
	}
	return "", nil
}

func post(t testing.TB, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestRun_EndToEnd(t *testing.T) {
	good, flaky := newReceiver(t), newReceiver(t)
	flaky.fail.Store(true)
	base, stop := startRun(t, []string{
		"--data", t.TempDir(),
		"--destination", good.URL + "/hook",
		"--destination", flaky.URL + "/flaky",
		"--retry-initial", "20ms", "--retry-max", "100ms",
	}, nil)

	want := map[string]string{}
	for b := range 9 {
		var events []string
		for i := range 100 {
			events = append(events, fmt.Sprintf(`{"batch":%d, "i":%d, "pad":"%s"}`, b, i, strings.Repeat("x", i%7)))
		}
		code, body := post(t, base+"/v1/batch", "["+strings.Join(events, ",")+"]")
		if code != http.StatusAccepted {
			t.Fatalf("batch %d: %d %s", b, code, body)
		}
		var resp struct{ IDs []string }
		if err := json.Unmarshal(body, &resp); err != nil || len(resp.IDs) != 100 {
			t.Fatalf("batch %d: %s", b, body)
		}
		for i, id := range resp.IDs {
			want[id] = events[i]
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				event := fmt.Sprintf(`{"single":%d}`, g*10+i)
				code, body := post(t, base+"/v1/event", event)
				var resp struct{ ID string }
				if code != http.StatusAccepted || json.Unmarshal(body, &resp) != nil {
					t.Errorf("event: %d %s", code, body)
					return
				}
				mu.Lock()
				want[resp.ID] = event
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(want) != 1000 {
		t.Fatalf("%d distinct ids for 1000 events", len(want))
	}

	good.waitAll(t, want, 60*time.Second)
	for flaky.failed.Load() < 100 { // let the flaky one fail for a while
		time.Sleep(10 * time.Millisecond)
	}
	flaky.fail.Store(false)
	flaky.waitAll(t, want, 60*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("flaky destination refused %d deliveries before it recovered", flaky.failed.Load())
}

// TestRun_ShutdownAndRestart stops the service while some deliveries are in
// flight and others wait for a retry: the ones in flight finish before run
// returns, the others are delivered by the next start, and nothing twice.
func TestRun_ShutdownAndRestart(t *testing.T) {
	data := t.TempDir()
	dest := newReceiver(t)
	args := []string{"--data", data, "--destination", dest.URL, "--retry-initial", "50ms", "--retry-max", "100ms",
		"--shutdown-timeout", "5s"}
	base, stop := startRun(t, args, nil)
	send := func(n int, want map[string]string) {
		for i := range n {
			event := fmt.Sprintf(`{"n":%d}`, len(want)+i)
			code, body := post(t, base+"/v1/event", event)
			var resp struct{ ID string }
			if code != http.StatusAccepted || json.Unmarshal(body, &resp) != nil {
				t.Fatalf("%d %s", code, body)
			}
			want[resp.ID] = event
		}
	}
	retrying, inFlight := map[string]string{}, map[string]string{}
	dest.fail.Store(true)
	send(20, retrying)
	for dest.failed.Load() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	dest.fail.Store(false)
	dest.delay.Store(int64(500 * time.Millisecond))
	dest.hold.Store(true) // the retries fail again; new events are slow
	send(5, inFlight)
	for dest.started.Load() < 5 {
		time.Sleep(5 * time.Millisecond)
	}
	began := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("first run: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("shutdown took %v, over its 5s deadline", took)
	}
	for id := range inFlight {
		if _, ok := dest.has(id); !ok {
			t.Fatalf("delivery of %s was in flight at shutdown and did not finish", id)
		}
	}

	dest.hold.Store(false)
	dest.delay.Store(0)
	_, stop = startRun(t, args, nil)
	dest.waitAll(t, retrying, 30*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("second run: %v", err)
	}
	for id := range inFlight {
		if n := dest.deliveries(id); n != 1 {
			t.Fatalf("event %s delivered %d times, want once: it finished before the shutdown", id, n)
		}
	}
}

func TestRun_Config(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c *config)
	}{
		{name: "Defaults", check: func(t *testing.T, c *config) {
			if c.addr != "localhost:8000" || c.dataDir != "data" || c.deliveryTimeout != 10*time.Second || len(c.destinations) != 0 {
				t.Fatalf("defaults %+v", c)
			}
		}},
		{name: "EnvTwins", env: map[string]string{"FANOUT_ADDR": ":9000", "FANOUT_MAX_EVENT_BYTES": "2KiB",
			"FANOUT_DESTINATIONS": "http://a.example/x, https://b.example/y", "FANOUT_DEMO": "true"},
			check: func(t *testing.T, c *config) {
				if c.addr != ":9000" || c.limits.MaxEventBytes != 2048 || len(c.destinations) != 2 || !c.demo {
					t.Fatalf("config from env %+v", c)
				}
			}},
		{name: "FlagWinsOverEnv", args: []string{"--addr", ":1"}, env: map[string]string{"FANOUT_ADDR": ":2"},
			check: func(t *testing.T, c *config) {
				if c.addr != ":1" {
					t.Fatalf("addr %q, want the flag's", c.addr)
				}
			}},
		{name: "RepeatedDestination", args: []string{"--destination", "http://a/", "--destination", "http://b/"},
			check: func(t *testing.T, c *config) {
				if len(c.destinations) != 2 {
					t.Fatalf("destinations %v", c.destinations)
				}
			}},
		{name: "BadDestinationScheme", args: []string{"--destination", "ftp://a/"}, wantErr: "must be an http or https URL"},
		{name: "DestinationWithCredentials", args: []string{"--destination", "http://u:p@a/"}, wantErr: "credentials"},
		{name: "BadEnv", env: map[string]string{"FANOUT_WORKERS": "many"}, wantErr: "FANOUT_WORKERS"},
		{name: "BadSize", args: []string{"--max-event-bytes", "lots"}, wantErr: "max-event-bytes"},
		{name: "UnknownFlag", args: []string{"--nope"}, wantErr: "see fanout --help"},
		{name: "NoRetryBudget", args: []string{"--retry-max-age", "0"}, wantErr: "retry forever"},
		{name: "ZeroTimeout", args: []string{"--delivery-timeout", "0s"}, wantErr: "--delivery-timeout must be positive"},
		{name: "APITokens", args: []string{"--api-token", "aaaaaaaaaaaaaaaa1"}, env: map[string]string{"FANOUT_API_TOKENS": "ignored-the-flag-wins"},
			check: func(t *testing.T, c *config) {
				if fmt.Sprint(c.apiTokens) != "[aaaaaaaaaaaaaaaa1]" {
					t.Fatalf("apiTokens %q", c.apiTokens)
				}
			}},
		{name: "APITokensFromEnv", env: map[string]string{"FANOUT_API_TOKENS": "aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2"},
			check: func(t *testing.T, c *config) {
				if fmt.Sprint(c.apiTokens) != "[aaaaaaaaaaaaaaaa1 bbbbbbbbbbbbbbbb2]" {
					t.Fatalf("apiTokens %q", c.apiTokens)
				}
			}},
		{name: "ShortAPIToken", args: []string{"--api-token", "hunter2"}, wantErr: "API token 1 of 1 (--api-token, FANOUT_API_TOKENS) must be at least 16"},
		{name: "ShortAPITokenFromEnv", env: map[string]string{"FANOUT_API_TOKENS": "aaaaaaaaaaaaaaaa1,hunter2"}, wantErr: "API token 2 of 2"},
		{name: "APITokensTrailingComma", env: map[string]string{"FANOUT_API_TOKENS": "aaaaaaaaaaaaaaaa1, "},
			check: func(t *testing.T, c *config) {
				if fmt.Sprint(c.apiTokens) != "[aaaaaaaaaaaaaaaa1]" {
					t.Fatalf("apiTokens %q", c.apiTokens)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, io.Discard, io.Discard)
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error repeats a secret: %v", err)
			}
			if tc.wantErr != "" {
				var ue *usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("err %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestRun_Version(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("run --version: %v", err)
	}
	if !strings.HasPrefix(out.String(), "fanout "+version) || !strings.Contains(out.String(), runtime.Version()) {
		t.Fatalf("--version printed %q", out.String())
	}
}

func TestRun_Help(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("run --help: %v", err)
	}
	for _, want := range []string{"--addr", "FANOUT_ADDR", "FANOUT_DESTINATIONS", "FANOUT_DATA", "FANOUT_MAX_BATCH_EVENTS", "default localhost:8000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s:\n%s", want, out.String())
		}
	}
}

func TestRun_DataDirInUse(t *testing.T) {
	data := t.TempDir()
	startRun(t, []string{"--data", data}, nil)
	err := run(context.Background(), []string{"--addr", "127.0.0.1:0", "--data", data}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second run on the same data: %v, want an error saying it is in use", err)
	}
}

func TestFanout_MarshalJSON(t *testing.T) {
	for _, n := range []int{0, 2, 1234} {
		b, err := json.Marshal(Fanout{Destinations: n})
		if err != nil {
			t.Fatal(err)
		}
		var back Fanout
		if err := json.Unmarshal(b, &back); err != nil || back.Destinations != n {
			t.Fatalf("Fanout{%d} marshals to %s, which reads back as %+v (%v)", n, b, back, err)
		}
	}
}

// --- destinations, status, dead letters, idempotency ---

// call makes a JSON request and decodes the answer into out (if not nil).
func call(t testing.TB, method, url string, body any, out any, header ...string) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		if s, ok := body.(string); ok {
			rd = strings.NewReader(s)
		} else {
			b, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			rd = bytes.NewReader(b)
		}
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: answer %q is not JSON: %v", method, url, b, err)
		}
	}
	return resp.StatusCode
}

func TestDestinations_API(t *testing.T) {
	svc := newTestService(t, openTestStore(t, t.TempDir()))
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
	if code := call(t, "GET", base+"/"+d.ID, nil, &got); code != 200 || got.URL != d.URL || got.Secret != d.Secret {
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
	var e errorBody
	if code := call(t, "GET", base+"/"+d.ID, nil, &e); code != 404 || !strings.Contains(e.Error, d.ID) {
		t.Fatalf("get after delete: %d %q", code, e.Error)
	}
	if code := call(t, "DELETE", base+"/"+d.ID, nil, &e); code != 404 {
		t.Fatalf("second delete: %d", code)
	}
}

func TestDestinations_Reject(t *testing.T) {
	store := openTestStore(t, t.TempDir())
	svc := newTestService(t, store)
	// The guard of a real run: loopback and private addresses refused.
	svc.svc.dests = destination.NewRegistry(destination.Config{Store: store, Guard: webhook.NewGuard(nil)})
	srv := httptest.NewServer(newHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), svc.svc, testLimits, nil))
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
		{"RetryForever", `{"url":"https://example.com","retry":{"initial":"1s"}}`, "retried forever"},
		{"UnknownField", `{"url":"https://example.com","colour":"red"}`, `unknown field "colour"`},
		{"NotJSON", `{"url":`, "request body"},
		{"BadDuration", `{"url":"https://example.com","retry":{"max_age":"forever"}}`, "duration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e errorBody
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
	var e errorBody
	if code := call(t, "PATCH", srv.URL+"/v1/destinations/nope", `{"enabled":true}`, &e); code != 404 {
		t.Fatalf("PATCH of an unknown destination: %d %q", code, e.Error)
	}
}

func TestIdempotentIngest(t *testing.T) {
	svc := newTestService(t, openTestStore(t, t.TempDir()))
	srv := httptest.NewServer(svc.handler)
	defer srv.Close()
	var a, b, c struct{ ID string }
	call(t, "POST", srv.URL+"/v1/event", `{"id":"order-1","n":1}`, &a)
	call(t, "POST", srv.URL+"/v1/event", `{"id":"order-1","n":2}`, &b)
	call(t, "POST", srv.URL+"/v1/event", `{"id":"order-2"}`, &c)
	if a.ID == "" || a.ID != b.ID || c.ID == a.ID {
		t.Fatalf("ids %s %s %s: a repeated event id must give the first id, another id a new one", a.ID, b.ID, c.ID)
	}
	var k1, k2 struct{ ID string }
	call(t, "POST", srv.URL+"/v1/event", `{"n":1}`, &k1, "Idempotency-Key", "req-7")
	call(t, "POST", srv.URL+"/v1/event", `{"n":1}`, &k2, "Idempotency-Key", "req-7")
	if k1.ID == "" || k1.ID != k2.ID {
		t.Fatalf("Idempotency-Key repeat gave %s then %s", k1.ID, k2.ID)
	}
	var b1, b2 struct{ IDs []string }
	call(t, "POST", srv.URL+"/v1/batch", `[{"n":1},{"n":2}]`, &b1, "Idempotency-Key", "batch-1")
	call(t, "POST", srv.URL+"/v1/batch", `[{"n":1},{"n":2}]`, &b2, "Idempotency-Key", "batch-1")
	if len(b1.IDs) != 2 || fmt.Sprint(b1.IDs) != fmt.Sprint(b2.IDs) {
		t.Fatalf("a repeated batch gave %v then %v", b1.IDs, b2.IDs)
	}
	if got := len(stored(t, svc.store)); got != 5 {
		t.Fatalf("store holds %d events, want 5 (3 by id, 1 by key, 2 by batch key)", got)
	}
	var e errorBody
	if code := call(t, "POST", srv.URL+"/v1/event", `{}`, &e, "Idempotency-Key", "has space"); code != 400 {
		t.Fatalf("a bad Idempotency-Key: %d %q", code, e.Error)
	}
}

// TestOpenAPI_MatchesRoutes keeps docs/openapi.yaml and the routes in step:
// every documented operation is a route, every route is documented.
func TestOpenAPI_MatchesRoutes(t *testing.T) {
	b, err := os.ReadFile("docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	routed := map[string]bool{}
	for _, r := range routes(nil, nil, testLimits) {
		routed[r.pattern] = true
	}
	for op := range documented {
		if !routed[op] {
			t.Errorf("docs/openapi.yaml documents %s, which is not a route", op)
		}
	}
	for op := range routed {
		if !documented[op] {
			t.Errorf("route %s is not in docs/openapi.yaml", op)
		}
	}
}

// signedReceiver is a destination that checks the signature of what it gets.
type signedReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	key    []byte
	got    map[string]string // body by webhook-id, well signed
	bad    int
	status atomic.Int32 // answer; 0 is 204
}

func newSignedReceiver(t testing.TB) *signedReceiver {
	r := &signedReceiver{got: map[string]string{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if code := r.status.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		ts, _ := strconv.ParseInt(req.Header.Get("webhook-timestamp"), 10, 64)
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.key == nil || !webhook.Verify(r.key, req.Header.Get("webhook-id"), ts, body, req.Header.Get("webhook-signature")) {
			r.bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		r.got[req.Header.Get("webhook-id")] = string(body)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *signedReceiver) setSecret(t testing.TB, secret string) {
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.key = key
	r.mu.Unlock()
}

func (r *signedReceiver) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.got[id]
	return ok
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRun_DestinationsEndToEnd routes by type, signs, records, disables a
// gone destination, lists its dead letters and re-drives them.
func TestRun_DestinationsEndToEnd(t *testing.T) {
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
	var ev eventView
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
		Deliveries []deliveryView
		NextCursor string `json:"next_cursor"`
	}
	eventually(t, "the dead letter", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/deliveries?state=failed&destination="+dAll.ID, nil, &dead)
		return len(dead.Deliveries) == 1
	})
	if d := dead.Deliveries[0]; d.EventID != gone || d.State != "failed" || !strings.Contains(d.LastError, "410") {
		t.Fatalf("dead letter %+v", d)
	}
	var one deliveryView
	call(t, "GET", base+"/v1/deliveries/"+dead.Deliveries[0].ID, nil, &one)
	if len(one.History) != 1 || one.History[0].Status != 410 || one.LastStatus != 410 {
		t.Fatalf("delivery %+v, want one recorded attempt with status 410", one)
	}
	var e errorBody
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

// TestRun_Isolation: a destination that hangs past the timeout holds at most
// its own concurrency; a healthy one gets every event promptly meanwhile.
func TestRun_Isolation(t *testing.T) {
	var inHang, peak atomic.Int32
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inHang.Add(1)
		defer inHang.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		_, _ = io.Copy(io.Discard, r.Body) // so that the server notices fanout hanging up
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer hang.Close()
	healthy := newReceiver(t)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--delivery-timeout", "300ms", "--workers", "32",
		"--retry-initial", "50ms", "--retry-max", "200ms"}, nil)
	call(t, "POST", base+"/v1/destinations", map[string]any{"url": hang.URL, "max_concurrency": 4}, nil)
	call(t, "POST", base+"/v1/destinations", map[string]any{"url": healthy.URL}, nil)

	want := map[string]string{}
	for b := range 5 {
		var events []string
		for i := range 100 {
			events = append(events, fmt.Sprintf(`{"b":%d,"i":%d}`, b, i))
		}
		var r struct{ IDs []string }
		if code := call(t, "POST", base+"/v1/batch", "["+strings.Join(events, ",")+"]", &r); code != 202 {
			t.Fatalf("batch: %d", code)
		}
		for i, id := range r.IDs {
			want[id] = events[i]
		}
	}
	start := time.Now()
	healthy.waitAll(t, want, 20*time.Second)
	took := time.Since(start)
	if p := peak.Load(); p > 4 {
		t.Fatalf("the hanging destination had %d deliveries at once, over its max_concurrency of 4", p)
	}
	t.Logf("healthy destination got 500 events in %v while the other hung (peak %d at once there)", took, peak.Load())
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRun_CircuitBreaker pauses a destination whose deliveries keep failing,
// and resumes it by API.
func TestRun_CircuitBreaker(t *testing.T) {
	down := newSignedReceiver(t)
	down.status.Store(http.StatusServiceUnavailable)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--breaker-failures", "5", "--breaker-window", "0s",
		"--breaker-cooldown", "1h", "--retry-initial", "10ms", "--retry-max", "20ms"}, nil)
	var d destination.Destination
	call(t, "POST", base+"/v1/destinations", map[string]any{"url": down.URL}, &d)
	down.setSecret(t, d.Secret)
	var r struct{ ID string }
	call(t, "POST", base+"/v1/event", `{"n":1}`, &r)
	eventually(t, "the breaker pauses the destination", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/destinations/"+d.ID, nil, &d)
		return d.CircuitOpenUntil != nil && strings.Contains(d.Reason, "circuit breaker")
	})
	var ev eventView
	call(t, "GET", base+"/v1/events/"+r.ID, nil, &ev)
	if len(ev.Deliveries) != 1 || ev.Deliveries[0].State == "failed" {
		t.Fatalf("delivery %+v, want it kept while the destination is paused", ev.Deliveries)
	}
	down.status.Store(0)
	var resumed destination.Destination
	call(t, "POST", base+"/v1/destinations/"+d.ID+"/resume", nil, &resumed)
	if resumed.CircuitOpenUntil != nil || resumed.Reason != "" || resumed.Version != d.Version+1 {
		t.Fatalf("resumed destination %+v", resumed)
	}
	eventually(t, "delivery after resume", 10*time.Second, func() bool { return down.has(r.ID) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestAPIToken(t *testing.T) {
	ts := newTestService(t, openTestStore(t, t.TempDir()))
	const one, two = "tok_0123456789abcdef", "tok_fedcba9876543210"
	h := newHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), ts.svc, testLimits, []string{one, two})
	tests := []struct {
		name, method, path, auth string
		want                     int
		wantError                string
	}{
		{"NoHeader", "POST", "/v1/event", "", 401, "needs a token"},
		{"WrongToken", "POST", "/v1/event", "Bearer tok_0123456789abcdeX", 401, "not one of"},
		{"PrefixOfToken", "POST", "/v1/event", "Bearer tok_0123", 401, "not one of"},
		{"OtherScheme", "POST", "/v1/event", "Basic " + one, 401, "needs a token"},
		{"NoToken", "POST", "/v1/event", "Bearer", 401, "needs a token"},
		{"UnknownPathNeedsToken", "GET", "/v1/nothing-here", "", 401, "needs a token"},
		{"FirstToken", "POST", "/v1/event", "Bearer " + one, 202, ""},
		{"SecondToken", "POST", "/v1/event", "Bearer " + two, 202, ""},
		{"SchemeAnyCase", "POST", "/v1/event", "bearer " + one, 202, ""},
		{"ReadWithToken", "GET", "/v1/destinations", "Bearer " + two, 200, ""},
		{"HealthzOpen", "GET", "/healthz", "", 200, ""},
		{"MetricsOpen", "GET", "/metrics", "", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(`{"type":"t"}`))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Fatalf("%s %s with %q: %d %s, want %d", tc.method, tc.path, tc.auth, w.Code, w.Body, tc.want)
			}
			if tc.want == 401 {
				var e errorBody
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, tc.wantError) {
					t.Fatalf("401 body %s, want an error containing %q", w.Body, tc.wantError)
				}
				if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("401 without a WWW-Authenticate: Bearer header: %v", w.Header())
				}
			}
		})
	}
	// Only the three accepted events were stored.
	if n := len(stored(t, ts.store)); n != 3 {
		t.Fatalf("%d events stored, want the 3 sent with a token", n)
	}
}

// countingStore counts and slows CallBacklog.
type countingStore struct {
	appStore
	counts atomic.Int64
}

func (s *countingStore) CallBacklog(ctx context.Context) ([]dispatch.KeyCount, error) {
	s.counts.Add(1)
	time.Sleep(50 * time.Millisecond)
	return []dispatch.KeyCount{{Key: "dst_a", N: 7}}, nil
}

// TestBacklogCache checks that concurrent scrapes share one count, that a
// fresh count is served from memory, and that an old one is renewed.
func TestBacklogCache(t *testing.T) {
	st := &countingStore{}
	c := newBacklogCache(st)
	c.maxAge = time.Hour
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts, at, err := c.get(time.Now())
			if err != nil || at.IsZero() || counts["dst_a"] != 7 {
				t.Errorf("first get = %v, %v, %v: want the count, waited for", counts, at, err)
			}
		}()
	}
	wg.Wait()
	c.get(time.Now())
	if n := st.counts.Load(); n != 1 {
		t.Fatalf("21 gets counted the backlog %d times, want once", n)
	}
	c.maxAge = 0
	c.get(time.Now()) // serves the old count, starts a new one
	eventually(t, "a second count", 5*time.Second, func() bool { return st.counts.Load() == 2 })
}

func TestMetrics(t *testing.T) {
	svc := newTestService(t, openTestStore(t, t.TempDir()))
	d := &destination.Destination{URL: "https://example.com", Enabled: true}
	if err := svc.svc.dests.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	// Three deliveries waiting for the destination, one of them a retry
	// later on.
	var calls []*dispatch.Call
	for i, after := range []time.Duration{0, 0, time.Hour} {
		calls = append(calls, &dispatch.Call{ID: fmt.Sprintf("delivery-%d", i), Function: "publishEvent", Key: d.ID,
			Input: []byte(`{}`), RunAfter: time.Now().Add(after), CreatedAt: time.Now()})
	}
	if _, err := svc.store.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	// Answers by route and status class, and the events accepted.
	svc.do(t, "POST", "/v1/event", `{"a":1}`)
	svc.do(t, "POST", "/v1/event", `{"a":`)
	svc.do(t, "POST", "/v1/batch", `[{},{}]`)
	svc.do(t, "GET", "/v1/nowhere", "")
	w := svc.do(t, "GET", "/metrics", "")
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	for _, want := range []string{`fanout_attempts_total{outcome="done"} 0`, "fanout_store_commits_total",
		`fanout_destination_paused{destination="dst_`, "# TYPE fanout_destination_in_flight gauge",
		"fanout_store_up 1", fmt.Sprintf("fanout_destination_backlog{destination=%q} 3", d.ID),
		`fanout_http_requests_total{route="POST /v1/event",code="2xx"} 1`, `fanout_http_requests_total{route="POST /v1/event",code="4xx"} 1`,
		`fanout_http_requests_total{route="POST /v1/batch",code="2xx"} 1`, `fanout_http_requests_total{route="other",code="4xx"} 1`,
		`fanout_http_requests_total{route="GET /metrics",code="5xx"} 0`, "fanout_events_accepted_total 3"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, w.Body)
		}
	}
	// A store that cannot be read: the scrape still answers, with the last
	// count and its age, and says so. The next count is due at once.
	if err := svc.store.(*dispatchsqlite.Store).Close(); err != nil {
		t.Fatal(err)
	}
	svc.svc.backlog.maxAge = 0
	eventually(t, "fanout_store_up 0 after the store closed", 5*time.Second, func() bool {
		w = svc.do(t, "GET", "/metrics", "")
		return w.Code == 200 && strings.Contains(w.Body.String(), "fanout_store_up 0")
	})
	for _, want := range []string{fmt.Sprintf("fanout_destination_backlog{destination=%q} 3", d.ID), "fanout_backlog_age_seconds "} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("metrics on a closed store lack the last count %q:\n%s", want, w.Body)
		}
	}
}
