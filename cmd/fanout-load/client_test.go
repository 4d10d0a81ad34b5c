package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRawConn sends through a real net/http server: small answers with a
// length, large chunked ones, errors, and a server that closes the
// connection; the client redials and goes on.
func TestRawConn(t *testing.T) {
	var n, conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if len(body) == 0 || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		switch k := n.Add(1); {
		case k%5 == 0:
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusServiceUnavailable)
		case k%3 == 0:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, strings.Repeat(`"01a21f4d-fc58-7a16-94d8-32106577de72",`, 2000)) // chunked
		default:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"id":"1"}`)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	hostport, _, err := splitBase(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := newRawConn(hostport, 5*time.Second)
	defer c.close()
	r := buildRequest(hostport, "/v1/event", nil, "0a1b2c3d", 200, 1, false)
	counts := map[int]int{}
	for i := range 30 {
		r.fill(int64(i), time.Now().UnixNano())
		status, err := c.send(context.Background(), r)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		counts[status]++
	}
	if counts[202] != 24 || counts[503] != 6 {
		t.Errorf("answers %v, want 24 x 202 and 6 x 503", counts)
	}
	if got := conns.Load(); got != 6 {
		t.Errorf("%d connections, want 6 (one, and one after each close but the last)", got)
	}
}

// TestSinkBaseline drives the sinks with fanout's request shape: every
// delivery counted by the endpoint it was sent to, and parsed without the
// JSON decoder's fallback.
func TestSinkBaseline(t *testing.T) {
	sk, err := startSink("127.0.0.1:0", 3, 0, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sk.close()
	hostport, _, _ := splitBase(sk.base)
	d := &driver{conns: 4, runID: newRunID(), per: 1, events: 300, errors: map[string]int{}}
	d.requests = func() []*request {
		reqs, err := sinkRequests(sk, d.runID, 200)
		if err != nil {
			t.Error(err)
		}
		return reqs
	}
	d.newConn = func() sender { return newRawConn(hostport, 5*time.Second) }
	d.run(context.Background(), time.Now().Add(time.Minute))
	if d.sent.Load() != 300 || len(d.errors) > 0 {
		t.Fatalf("%d sent, errors %v", d.sent.Load(), d.errors)
	}
	total := 0
	for i, n := range sk.unique() {
		if n < 90 || n > 110 {
			t.Errorf("endpoint %d got %d of 300", i, n)
		}
		total += n
	}
	if total != 300 {
		t.Errorf("%d events in all, want 300", total)
	}
	if _, ok := sk.faulted.Load("unparseable"); ok {
		t.Error("the sinks could not read some deliveries")
	}
	if sk.peakConns.Load() != 4 {
		t.Errorf("the sinks saw %d connections at most, want 4", sk.peakConns.Load())
	}
	ids := d.acceptedIDs()
	seen := map[string]bool{}
	for _, e := range sk.endpoints {
		for id := range e.seen {
			seen[id] = true
		}
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("accepted %s, which no sink has", id)
		}
	}
}

func TestDiskReport(t *testing.T) {
	tests := []struct {
		name               string
		events             int64
		dests, payload     int
		stopped            int64
		perEvent, overhead float64
		limit              float64
		within             bool
	}{
		{name: "within", events: 1000, dests: 10, payload: 4096, stopped: 6_000_000,
			perEvent: 6000, overhead: (6000 - 4096) / 10.0, limit: 1.3*4096 + 2000, within: true},
		{name: "over", events: 1000, dests: 10, payload: 4096, stopped: 60_000_000,
			perEvent: 60000, overhead: (60000 - 4096) / 10.0, limit: 1.3*4096 + 2000},
		{name: "no destination", events: 100, dests: 0, payload: 200, stopped: 40000,
			perEvent: 400, overhead: 200, limit: 260},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDiskReport(tt.events, tt.dests, tt.payload, tt.stopped*2, tt.stopped)
			if d.StoppedPerEvent != tt.perEvent || d.RunningPerEvent != 2*tt.perEvent ||
				d.OverheadPerDelivery != tt.overhead || d.Limit != tt.limit || d.WithinLimit != tt.within {
				t.Errorf("got %+v", d)
			}
		})
	}
}
