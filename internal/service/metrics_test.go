package service

import (
	"net/http"
	"testing"
	"time"
)

// BenchmarkMetrics_Request is what counting and timing an ingest answer
// costs a request (the handler itself does nothing here).
func BenchmarkMetrics_Request(b *testing.B) {
	m := newMetrics("test")
	m.Track([]string{"POST /v1/event"})
	h := m.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Pattern = "POST /v1/event"
		w.WriteHeader(http.StatusAccepted)
	}))
	req, _ := http.NewRequest("POST", "/v1/event", nil)
	w := &discardWriter{header: http.Header{}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.ServeHTTP(w, req)
		}
	})
}

// BenchmarkMetrics_Attempt is what the histograms of one delivery attempt
// cost the worker that made it.
func BenchmarkMetrics_Attempt(b *testing.B) {
	m := newMetrics("test")
	now := time.Now()
	d := deliveryAttempt{ID: "e.0.0", EventID: "e", DestinationID: "dst_1", Attempt: 1, First: true, EventAt: now,
		Started: now.Add(time.Millisecond), Duration: 3 * time.Millisecond, Outcome: outcomeDone}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Attempted(d)
		}
	})
}

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ header http.Header }

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}
