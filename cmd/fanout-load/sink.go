package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// faultSpec is how often a sink misbehaves, by kind.
type faultSpec map[string]float64

var faultKinds = []string{"5xx", "429", "slow", "reset", "410"}

func (f *faultSpec) String() string {
	var parts []string
	for _, k := range faultKinds {
		if v, ok := (*f)[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%g", k, v))
		}
	}
	return strings.Join(parts, ",")
}

func (f *faultSpec) Set(v string) error {
	if *f == nil {
		*f = faultSpec{}
	}
	for _, part := range strings.Split(v, ",") {
		kind, frac, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("fault %q: want kind=fraction", part)
		}
		p, err := strconv.ParseFloat(frac, 64)
		if err != nil || p < 0 || p > 1 {
			return fmt.Errorf("fault %q: fraction must be between 0 and 1", part)
		}
		known := false
		for _, k := range faultKinds {
			known = known || k == kind
		}
		if !known {
			return fmt.Errorf("fault %q: kind must be one of %s", part, strings.Join(faultKinds, ", "))
		}
		(*f)[kind] = p
	}
	return nil
}

// sink is the load tool's destination: K endpoints on one loopback listener
// that record every delivery they accept.
type sink struct {
	srv       *http.Server
	base      string
	endpoints []*endpoint
	latency   time.Duration
	faults    faultSpec
	slowFor   time.Duration

	delivered atomic.Int64 // accepted deliveries, duplicates included
	lastNS    atomic.Int64
	faulted   sync.Map // kind -> *atomic.Int64

	conns, peakConns       atomic.Int64 // open connections
	inFlight, peakInFlight atomic.Int64 // requests being answered
	bufs                   sync.Pool    // *[]byte request bodies
}

type endpoint struct {
	faulty    bool // the faults apply to it
	mu        sync.Mutex
	last      time.Time // of the last delivery
	seen      map[string]int32
	latencies []time.Duration // ingest-to-first-delivery, one per event
}

// startSink starts K endpoints; the faults apply to the first faulty of
// them (all of them when faulty < 0).
func startSink(addr string, k int, latency time.Duration, faults faultSpec, faulty int) (*sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	s := &sink{base: "http://" + ln.Addr().String(), latency: latency, faults: faults, slowFor: 15 * time.Second}
	for i := range k {
		s.endpoints = append(s.endpoints, &endpoint{seen: make(map[string]int32, 1<<16),
			faulty: len(faults) > 0 && (faulty < 0 || i < faulty)})
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ConnState: s.connState}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *sink) urls() []string {
	out := make([]string, len(s.endpoints))
	for i := range s.endpoints {
		out[i] = fmt.Sprintf("%s/d/%d", s.base, i)
	}
	return out
}

func (s *sink) close() { _ = s.srv.Close() }

func (s *sink) count(kind string) {
	v, _ := s.faulted.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// misbehave applies a fault to this request, if one is drawn; it reports
// whether the request was answered by the fault.
func (s *sink) misbehave(w http.ResponseWriter, e *endpoint) bool {
	if !e.faulty {
		return false
	}
	r := rand.Float64()
	for _, kind := range faultKinds {
		p := s.faults[kind]
		if r >= p {
			r -= p
			continue
		}
		s.count(kind)
		switch kind {
		case "5xx":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "429":
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		case "410":
			w.WriteHeader(http.StatusGone)
		case "slow":
			time.Sleep(s.slowFor)
			w.WriteHeader(http.StatusOK)
		case "reset":
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					if tc, ok := conn.(*net.TCPConn); ok {
						_ = tc.SetLinger(0) // RST, not FIN
					}
					conn.Close()
					return true
				}
			}
			w.WriteHeader(http.StatusInternalServerError)
		}
		return true
	}
	return false
}

// connState counts the sink's open connections, and their peak.
func (s *sink) connState(_ net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		peak(&s.peakConns, s.conns.Add(1))
	case http.StateClosed, http.StateHijacked:
		s.conns.Add(-1)
	}
}

// peak raises p to v if v is larger.
func peak(p *atomic.Int64, v int64) {
	for {
		old := p.Load()
		if v <= old || p.CompareAndSwap(old, v) {
			return
		}
	}
}

// resetPeaks starts the peaks of connections and requests in flight anew.
func (s *sink) resetPeaks() {
	s.peakConns.Store(s.conns.Load())
	s.peakInFlight.Store(s.inFlight.Load())
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	peak(&s.peakInFlight, s.inFlight.Add(1))
	defer s.inFlight.Add(-1)
	i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/d/"))
	if err != nil || i < 0 || i >= len(s.endpoints) {
		http.NotFound(w, r)
		return
	}
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer s.bufs.Put(bp)
	body, err := readAllInto((*bp)[:0], r.Body)
	*bp = body
	if err != nil {
		return
	}
	if s.latency > 0 {
		time.Sleep(s.latency)
	}
	if s.misbehave(w, s.endpoints[i]) {
		return
	}
	// The load's own events are read without a JSON decoder; anything
	// else (a fanout that re-encoded them, say) with one.
	id, sentNS, ok := parseEvent(body)
	if !ok {
		var ev struct {
			LoadID string `json:"load_id"`
			SentNS int64  `json:"sent_ns"`
		}
		if err := json.Unmarshal(body, &ev); err != nil || ev.LoadID == "" {
			s.count("unparseable")
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		id, sentNS = []byte(ev.LoadID), ev.SentNS
	}
	now := time.Now().UnixNano()
	e := s.endpoints[i]
	e.mu.Lock()
	e.last = time.Unix(0, now)
	n, seen := e.seen[string(id)] // no allocation for the lookup
	if seen {
		e.seen[string(id)] = n + 1
	} else {
		e.seen[string(id)] = 1
		e.latencies = append(e.latencies, time.Duration(now-sentNS))
	}
	e.mu.Unlock()
	s.delivered.Add(1)
	s.lastNS.Store(now)
	w.WriteHeader(http.StatusNoContent)
}

// readAllInto reads r to its end, appending to b.
func readAllInto(b []byte, r io.Reader) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				return b, nil
			}
			return b, err
		}
	}
}

// lost reports whether an endpoint never accepts a delivery: its faults
// always answer (a destination that hangs or is gone, say). The drain does
// not wait for it.
func (s *sink) lost(e *endpoint) bool {
	if !e.faulty {
		return false
	}
	total := 0.0
	for _, p := range s.faults {
		total += p
	}
	return total >= 1
}

// unique returns how many distinct events each endpoint has.
func (s *sink) unique() []int {
	out := make([]int, len(s.endpoints))
	for i, e := range s.endpoints {
		e.mu.Lock()
		out[i] = len(e.seen)
		e.mu.Unlock()
	}
	return out
}

// uniqueOf returns how many distinct events endpoint i has.
func (s *sink) uniqueOf(i int) int {
	e := s.endpoints[i]
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.seen)
}

// lastDelivery returns the time of the last delivery to any of the endpoints.
func (s *sink) lastDelivery(endpoints []int) time.Time {
	var last time.Time
	for _, i := range endpoints {
		e := s.endpoints[i]
		e.mu.Lock()
		if e.last.After(last) {
			last = e.last
		}
		e.mu.Unlock()
	}
	return last
}
