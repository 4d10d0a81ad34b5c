package httpapi

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// BenchmarkEventPost is one single event through the whole handler, every
// middleware included (metrics, Host check, body bound, auth, fair gate),
// into a real SQLite store: allocs/op is the figure to watch, the time is
// mostly the commit's fsync. Parallel, so that events share commits as
// under load.
func BenchmarkEventPost(b *testing.B) {
	svc, _ := newTestService(b)
	limits := Limits{MaxEventBytes: 1 << 20, MaxBatchBytes: 16 << 20, MaxBatchEvents: 10000,
		MaxInflightBytes: 256 << 20, IngestTimeout: 10 * time.Second}
	h := NewHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), svc, limits, nil, nil)
	event := `{"type":"order.created","data":{"id":12345,"amount":"19.99","currency":"EUR","customer":"c_0001","note":"` +
		strings.Repeat("x", 80) + `"}}`
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/v1/event", strings.NewReader(event))
			req.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusAccepted {
				b.Fatalf("%d %s", w.Code, w.Body)
			}
		}
	})
}
