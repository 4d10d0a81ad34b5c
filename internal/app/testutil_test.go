package app

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/internal/httpapi"
	"fanout/internal/service"
	"fanout/webhook"
)

var testLimits = httpapi.Limits{MaxEventBytes: 64, MaxBatchBytes: 512, MaxBatchEvents: 4, IngestTimeout: 5 * time.Second}

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
	store   service.Store
	svc     *service.Service
	handler http.Handler
}

func newTestService(t testing.TB, store service.Store) *testService {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dests := destination.NewRegistry(destination.Config{Store: store, Logger: log})
	if err := dests.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	fns := service.NewFunctions(dests, webhook.NewClient(webhook.Config{}), time.Now, nil)
	rt, err := dispatch.New(&dispatch.Config{Store: store, Keys: dests.KeyConfig, Logger: log}, fns.PublishEvent, fns.HandleEvent)
	if err != nil {
		t.Fatal(err)
	}
	svc := service.New(service.Config{Runtime: rt, Store: store, Fns: fns, Dests: dests})
	return &testService{store: store, svc: svc, handler: httpapi.NewHandler(log, svc, testLimits, nil, nil)}
}

// newTestAPI is newTestService over a new store in the test's directory.
func newTestAPI(t testing.TB) *testService {
	t.Helper()
	return newTestService(t, openTestStore(t, t.TempDir()))
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

// receiver is a test destination on loopback that records what it gets.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	received map[string][]byte // by webhook-id
	count    map[string]int
	refused  map[string]bool
	fail     atomic.Bool // answer 503 while set
	failed   atomic.Int64
	hold     atomic.Bool     // while set, answer 503 to known events and delay new ones
	delay    atomic.Int64    // nanoseconds
	started  atomic.Int64    // delayed requests begun
	begun    map[string]bool // ids of the delayed requests begun
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
			d.mark(&d.refused, id)
			d.failed.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if d.hold.Load() {
			if d.seenFailing(id) {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			d.mark(&d.begun, id)
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

// bodies returns every event the receiver took, once each.
func (d *receiver) bodies() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.received))
	for _, b := range d.received {
		out = append(out, string(b))
	}
	return out
}

// mark adds id to the set, under the receiver's lock.
func (d *receiver) mark(set *map[string]bool, id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if *set == nil {
		*set = map[string]bool{}
	}
	(*set)[id] = true
}

// wasRefused and hasBegun report whether every id was refused once, or
// began a delayed delivery.
func (d *receiver) wasRefused(ids map[string]string) bool {
	return d.all(ids, func() map[string]bool { return d.refused })
}

func (d *receiver) hasBegun(ids map[string]string) bool {
	return d.all(ids, func() map[string]bool { return d.begun })
}

func (d *receiver) all(ids map[string]string, set func() map[string]bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id := range ids {
		if !set()[id] {
			return false
		}
	}
	return true
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

// call makes a JSON request and decodes the answer into out (if not nil).
func call(t testing.TB, method, url string, body any, out any, header ...string) int {
	t.Helper()
	status, b, _ := rawCall(t, method, url, body, header...)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: answer %q is not JSON: %v", method, url, b, err)
		}
	}
	return status
}

// rawCall makes a request (body is JSON-encoded unless a string) and
// returns the answer's status, bytes and headers as sent.
func rawCall(t testing.TB, method, url string, body any, header ...string) (int, []byte, http.Header) {
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
	return resp.StatusCode, b, resp.Header
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
