package httpapi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"fanout/internal/service"
)

// TestBodyBudget_Pools: a body up to smallMax takes from the shared pool,
// or from the reserve when the shared pool is taken; a larger body never
// takes from the reserve, and is told to come back once it has waited.
func TestBodyBudget_Pools(t *testing.T) {
	t.Parallel()
	const total, smallMax = 4096, 512 // shared 3072, reserve 1024
	tests := []struct {
		name       string
		taken      int64 // of the shared pool, by another request
		grow       []int64
		wantErr    bool
		wantShared int64
		wantRes    int64
	}{
		{"SmallFromShared", 0, []int64{256}, false, 256, 0},
		{"BigFromShared", 0, []int64{3072}, false, 3072, 0},
		{"SmallFromReserveWhenSharedTaken", 3072, []int64{512}, false, 0, 512},
		{"SmallGrowsPastSmallMax", 3072, []int64{256, 512}, true, 0, 256},
		{"BigWaitsThenBusy", 3072, []int64{1024}, true, 0, 0},
		{"BigNeverFromReserve", 2560, []int64{1024}, true, 0, 0},
		{"OverTheSharedPool", 0, []int64{3073}, true, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBodyBudget(total, smallMax, 50*time.Millisecond)
			if tc.taken > 0 && !b.shared.TryAcquire(tc.taken) {
				t.Fatal("could not take the shared pool")
			}
			h := &bodyHold{budget: b, deadline: time.Now().Add(b.wait)}
			var err error
			for _, n := range tc.grow {
				if err = h.grow(context.Background(), n); err != nil {
					break
				}
			}
			if (err != nil) != tc.wantErr || (err != nil && err != errBodyBusy) {
				t.Fatalf("grow %v: err %v, want busy: %v", tc.grow, err, tc.wantErr)
			}
			if h.held.shared != tc.wantShared || h.held.reserve != tc.wantRes {
				t.Fatalf("holds %d shared, %d reserve; want %d, %d", h.held.shared, h.held.reserve, tc.wantShared, tc.wantRes)
			}
		})
	}
}

// TestBodyBudget_GivenBackAfterCollection: an ended request's bytes count
// until the garbage collector has had a chance to reclaim its body, and a
// body that finds the pool taken by them starts that collection instead of
// waiting for one that may not come.
func TestBodyBudget_GivenBackAfterCollection(t *testing.T) {
	t.Parallel()
	b := newBodyBudget(4096, 512, 5*time.Second)
	h := &bodyHold{budget: b, deadline: time.Now().Add(b.wait)}
	if err := h.grow(context.Background(), 3072); err != nil {
		t.Fatal(err)
	}
	h.release()
	if b.shared.TryAcquire(1) {
		t.Fatal("an ended request's bytes were given back before a collection")
	}
	next := &bodyHold{budget: b, deadline: time.Now().Add(b.wait)}
	start := time.Now()
	if err := next.grow(context.Background(), 3072); err != nil {
		t.Fatalf("the ended request's bytes were not given back after a collection: %v", err)
	}
	t.Logf("given back after %v", time.Since(start))
}

// TestBodyHold_ReadAll: a body of unknown length is reserved as its buffer
// grows, a replaced buffer counts until a collection, and a body longer
// than max stops at max.
func TestBodyHold_ReadAll(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		size    int
		max     int64
		wantLen int
	}{
		{"Small", 100, 1 << 20, 100},
		{"Grows", 200_000, 1 << 20, 200_000},
		{"ExactlyMax", 1 << 16, 1 << 16, 1 << 16},
		{"OverMax", 300_000, 100_001, 100_001},
		{"Empty", 0, 1 << 20, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBodyBudget(8<<20, 1<<20, time.Second)
			h := &bodyHold{budget: b, deadline: time.Now().Add(b.wait)}
			body := bytes.Repeat([]byte("x"), tc.size)
			got, err := h.readAll(context.Background(), io.MultiReader(bytes.NewReader(body)), tc.max)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.wantLen || !bytes.Equal(got, body[:tc.wantLen]) {
				t.Fatalf("read %d bytes, want the body's first %d", len(got), tc.wantLen)
			}
			if held := h.held.shared + h.held.reserve; held != int64(cap(got)) {
				t.Fatalf("holds %d bytes for a buffer of %d", held, cap(got))
			}
			b.mu.Lock()
			ended := b.ended.shared + b.ended.reserve + b.old.shared + b.old.reserve
			b.mu.Unlock()
			if tc.wantLen > initialBodyBuffer && ended == 0 {
				t.Fatal("the buffers replaced while reading count for nothing")
			}
		})
	}
}

// TestIngest_BodyBudget: over HTTP, a batch that cannot have its bytes in
// time is answered 503 with Retry-After, its body read to the end and
// dropped, and nothing is stored; a single event still goes through the
// reserve.
func TestIngest_BodyBudget(t *testing.T) {
	t.Parallel()
	svc, store := newTestService(t)
	limits := testLimits
	budget := newBodyBudget(4*limits.MaxBatchBytes, limits.MaxEventBytes, 50*time.Millisecond)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mux := http.NewServeMux()
	mux.Handle("POST /v1/event", guard(log, newAuthenticator(svc, nil), service.RightIngest, handleEventPost(log, svc, limits)))
	mux.Handle("POST /v1/batch", guard(log, newAuthenticator(svc, nil), service.RightIngest, handleBatchPost(log, svc, limits)))
	h := boundBodies(budget, mux)
	// Another request holds the shared pool.
	if !budget.shared.TryAcquire(3 * limits.MaxBatchBytes) {
		t.Fatal("could not take the shared pool")
	}

	post := func(path, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", path, strings.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	batch := `[` + strings.Repeat(`{"type":"a"},`, 3) + `{"type":"a","pad":"` + strings.Repeat("x", 10) + `"}]`
	if len(batch) <= int(limits.MaxEventBytes) {
		t.Fatalf("the batch (%d bytes) is small enough for the reserve", len(batch))
	}
	body := strings.NewReader(batch)
	req := httptest.NewRequest("POST", "/v1/batch", body)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" ||
		!strings.Contains(w.Body.String(), "--max-inflight-bytes") {
		t.Fatalf("batch while the budget is taken: %d %v %s; want 503 with Retry-After, naming --max-inflight-bytes",
			w.Code, w.Header(), w.Body)
	}
	if body.Len() != 0 {
		t.Fatalf("%d bytes of the refused body left unread: the client would see its connection reset, not the 503", body.Len())
	}
	if w := post("/v1/event", `{"type":"small"}`); w.Code != http.StatusAccepted {
		t.Fatalf("single event while the budget is taken: %d %s, want 202", w.Code, w.Body)
	}
	if got := stored(t, store); len(got) != 1 {
		t.Fatalf("%d events stored, want the single event alone", len(got))
	}
	budget.shared.Release(3 * limits.MaxBatchBytes)
	if w := post("/v1/batch", batch); w.Code != http.StatusAccepted {
		t.Fatalf("batch once the budget is free: %d %s, want 202", w.Code, w.Body)
	}
}

// TestCheckBudget: the flag must leave room for the largest body of each
// kind, or no such body could ever be read.
func TestCheckBudget(t *testing.T) {
	t.Parallel()
	limits := Limits{MaxEventBytes: 1 << 20, MaxBatchBytes: 16 << 20}
	tests := []struct {
		total int64
		ok    bool
	}{
		{0, true},
		{256 << 20, true},
		{(16 << 20) * 4 / 3, false},  // the shared pool is a byte short
		{(16<<20 + 1) * 4 / 3, true}, // just enough
		{32 << 20, true},
		{3 << 20, false}, // the reserve is smaller than an event
		{-1, false},
	}
	for _, tc := range tests {
		err := CheckBudget(tc.total, limits)
		if (err == nil) != tc.ok {
			t.Errorf("checkBudget(%d) = %v, want ok: %v", tc.total, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--max-inflight-bytes") {
			t.Errorf("checkBudget(%d) = %v, want it to name the flag", tc.total, err)
		}
	}
}
