package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/httpapi"
	"fanout/internal/service"
)

func TestHandlers_Accept(t *testing.T) {
	t.Parallel()
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
			svc := newTestAPI(t)
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
	t.Parallel()
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
		{"UnknownRoute", "POST", "/v1/things", `{}`, nil, 404, "no route for POST /v1/things", nil},
		{"PostEvents", "POST", "/v1/events", `{}`, nil, 405, "use GET", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := newTestAPI(t)
			w := svc.do(t, tc.method, tc.path, tc.body, tc.header...)
			if w.Code != tc.status {
				t.Fatalf("status %d (%s), want %d", w.Code, w.Body, tc.status)
			}
			var resp httpapi.ErrorBody
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
	service.Store
	poison atomic.Bool
}

func (p *poisonStore) CallInsertMany(ctx context.Context, params *dispatch.CallInsertParams) ([]string, error) {
	if calls := params.Calls; p.poison.Load() && len(calls) > 1 {
		calls[len(calls)/2].ID = "existing"
	}
	return p.Store.CallInsertMany(ctx, params)
}

// TestHandlers_TooLargeOverTheWire sends a body over the limit that the
// client has not finished sending: the 413 must come at once, not after the
// server has tried to read the rest.
func TestHandlers_TooLargeOverTheWire(t *testing.T) {
	t.Parallel()
	ts := newTestAPI(t)
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
	t.Parallel()
	ctx := context.Background()
	real := openTestStore(t, t.TempDir())
	if _, err := real.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{{ID: "existing",
		Function: "other", Input: []byte(`{}`), RunAfter: time.Now(), CreatedAt: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	store := &poisonStore{Store: real}
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
	ts := newTestAPI(f)
	// One destination to patch, resume, rotate and redrive.
	if w := ts.do(f, "POST", "/v1/destinations", `{"url":"https://example.com/fuzz"}`); w.Code != http.StatusCreated {
		f.Fatalf("create: %d %s", w.Code, w.Body)
	}
	dst := ts.svc.Dests.List()[0].ID
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
			var e httpapi.ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s (%q) = %d with body %q: want a JSON error naming the problem", method, path, body, w.Code, w.Body)
			}
		}
	})
}

func TestIdempotentIngest(t *testing.T) {
	t.Parallel()
	svc := newTestAPI(t)
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
	var e httpapi.ErrorBody
	if code := call(t, "POST", srv.URL+"/v1/event", `{}`, &e, "Idempotency-Key", "has space"); code != 400 {
		t.Fatalf("a bad Idempotency-Key: %d %q", code, e.Error)
	}
}

// TestRun_DedupWindow: --dedup-window is how long an event id or an
// Idempotency-Key is remembered: a repeat inside it gets the first id, one
// after it is a new event.
func TestRun_DedupWindow(t *testing.T) {
	t.Parallel()
	const window = 500 * time.Millisecond
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--dedup-window", window.String()}, nil)
	post := func(body string, header ...string) string {
		var r struct{ ID string }
		if code := call(t, "POST", base+"/v1/event", body, &r, header...); code != 202 || r.ID == "" {
			t.Fatalf("ingest %s: %d", body, code)
		}
		return r.ID
	}
	tests := []struct {
		name   string
		body   string
		header []string
	}{
		{"EventID", `{"id":"order-9"}`, nil},
		{"IdempotencyKey", `{"n":1}`, []string{"Idempotency-Key", "req-9"}},
	}
	for _, tc := range tests {
		first, at := post(tc.body, tc.header...), time.Now()
		if again := post(tc.body, tc.header...); again != first && time.Since(at) < window {
			t.Fatalf("%s: a repeat within the window got %s, want %s", tc.name, again, first)
		}
		time.Sleep(time.Until(at.Add(window + 50*time.Millisecond)))
		if later := post(tc.body, tc.header...); later == first {
			t.Fatalf("%s: a repeat after --dedup-window %v got the first id again", tc.name, window)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// selectivePoisonStore fails the inserts of events that ask for it
// ({"poison":true}) part-way, with the id of a call that exists.
type selectivePoisonStore struct{ service.Store }

func (p *selectivePoisonStore) CallInsertMany(ctx context.Context, params *dispatch.CallInsertParams) ([]string, error) {
	for _, c := range params.Calls {
		if strings.Contains(string(c.Input), `"poison"`) && len(params.Calls) > 1 {
			params.Calls[len(params.Calls)/2].ID = "existing"
		}
	}
	return p.Store.CallInsertMany(ctx, params)
}

// lostAnswerStore commits inserts, then reports that it could not tell,
// as the PostgreSQL store does when the connection is lost during COMMIT
// and the database stays out of reach.
type lostAnswerStore struct {
	service.Store
	lose atomic.Bool
}

func (p *lostAnswerStore) CallInsertMany(ctx context.Context, params *dispatch.CallInsertParams) ([]string, error) {
	ids, err := p.Store.CallInsertMany(ctx, params)
	if err == nil && p.lose.Load() {
		return nil, fmt.Errorf("insert calls: %w: connection lost during COMMIT", dispatch.ErrOutcomeUnknown)
	}
	return ids, err
}

// TestHandlers_StorageFailurePaths: a request whose store operation fails
// among others that share its commit gets 503 and stores nothing, the
// others are stored; a commit whose answer was lost is a 503 that says the
// events may be stored, and the same request again stores them once.
func TestHandlers_StorageFailurePaths(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	existing := &dispatch.CallInsertParams{Calls: []*dispatch.Call{{ID: "existing",
		Function: "other", Input: []byte(`{}`), RunAfter: time.Now(), CreatedAt: time.Now()}}}

	t.Run("OneOfManyFails", func(t *testing.T) {
		t.Parallel()
		real := openTestStore(t, t.TempDir())
		if _, err := real.CallInsertMany(ctx, existing); err != nil {
			t.Fatal(err)
		}
		svc := newTestService(t, &selectivePoisonStore{real})
		const n, poisoned = 16, 5
		codes := make([]int, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := fmt.Sprintf(`[{"r":%d},{"r":%d}]`, i, i)
				if i == poisoned {
					body = `[{"poison":true},{"r":5},{"r":5}]`
				}
				w := svc.do(t, "POST", "/v1/batch", body)
				codes[i] = w.Code
				if i == poisoned && !strings.Contains(w.Body.String(), "nothing was stored") {
					t.Errorf("poisoned batch: %d %s, want 503 saying nothing was stored", w.Code, w.Body)
				}
			}()
		}
		wg.Wait()
		for i, code := range codes {
			if want := map[bool]int{true: 503, false: 202}[i == poisoned]; code != want {
				t.Errorf("batch %d: status %d, want %d", i, code, want)
			}
		}
		events := stored(t, real)
		if len(events) != 2*(n-1) {
			t.Fatalf("%d events stored, want %d: every batch but the failing one", len(events), 2*(n-1))
		}
		for _, e := range events {
			if strings.Contains(string(e.Input), "poison") || string(e.Input) == `{"r":5}` {
				t.Fatalf("the failing batch left %s in the store", e.Input)
			}
		}
	})

	t.Run("LostAnswer", func(t *testing.T) {
		t.Parallel()
		real := openTestStore(t, t.TempDir())
		store := &lostAnswerStore{Store: real}
		svc := newTestService(t, store)
		store.lose.Store(true)
		w := svc.do(t, "POST", "/v1/event", `{"n":1}`, "Idempotency-Key", "order-7")
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "may have been stored") ||
			!strings.Contains(w.Body.String(), "Idempotency-Key") {
			t.Fatalf("lost answer: %d %s, want 503 saying the events may be stored and how to repeat", w.Code, w.Body)
		}
		first := stored(t, real)
		if len(first) != 1 {
			t.Fatalf("%d events stored, want the 1 whose answer was lost", len(first))
		}
		store.lose.Store(false)
		w = svc.do(t, "POST", "/v1/event", `{"n":1}`, "Idempotency-Key", "order-7")
		var got struct{ ID string }
		if w.Code != http.StatusAccepted || json.Unmarshal(w.Body.Bytes(), &got) != nil || got.ID != first[0].ID {
			t.Fatalf("repeat: %d %s, want 202 with the stored event's id %s", w.Code, w.Body, first[0].ID)
		}
		// stored claimed the first; a second copy would be claimable now.
		if again := stored(t, real); len(again) != 0 {
			t.Fatalf("the repeat stored the event again: %d more", len(again))
		}
	})
}
