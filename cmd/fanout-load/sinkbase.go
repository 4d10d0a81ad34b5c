package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"time"
)

// The sink baseline (--sink-baseline) drives the tool's own sinks directly,
// with the requests fanout sends them: a POST of one event's bytes with
// fanout's headers (User-Agent, Content-Type, webhook-id, webhook-timestamp,
// webhook-signature), over keep-alive connections, spread
// over the endpoints in turn. What the sinks answer per second so is the
// most deliveries/s this machine's sinks take with a client that costs next
// to nothing, and fanout's deliveries/s are reported as a share of it.

// sinkRequests returns one pre-built delivery per endpoint of sk.
func sinkRequests(sk *sink, runID string, size int) ([]*request, error) {
	hostport, prefix, err := splitBase(sk.base)
	if err != nil {
		return nil, err
	}
	// A signature of fanout's shape (v1, base64 of an HMAC-SHA256); the
	// sinks do not check it, and it is computed once.
	mac := hmac.New(sha256.New, []byte("fanout-load sink baseline"))
	mac.Write([]byte(runID))
	sig := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	headers := []header{
		{"User-Agent", "fanout/dev"},
		{"Webhook-Id", headerSeq},
		{"Webhook-Signature", sig},
		{"Webhook-Timestamp", headerTS},
	}
	reqs := make([]*request, len(sk.endpoints))
	for i := range sk.endpoints {
		reqs[i] = buildRequest(hostport, fmt.Sprintf("%s/d/%d", prefix, i), headers, runID, size, 1, false)
	}
	return reqs, nil
}

// runSinkBaseline drives fresh sinks (as many endpoints as --sinks, with the
// same --sink-latency, without faults) for -d over conns connections.
func runSinkBaseline(ctx context.Context, o *options, conns int, stderr io.Writer) (*report, error) {
	sk, err := startSink("127.0.0.1:0", o.sinks, o.sinkLatency, nil, 0)
	if err != nil {
		return nil, err
	}
	defer sk.close()
	d := &driver{conns: conns, runID: newRunID(), per: 1, errors: map[string]int{}}
	hostport, _, err := splitBase(sk.base)
	if err != nil {
		return nil, err
	}
	if _, err := sinkRequests(sk, d.runID, o.eventSize); err != nil {
		return nil, err
	}
	d.requests = func() []*request {
		reqs, _ := sinkRequests(sk, d.runID, o.eventSize) // cannot fail: it did not above
		return reqs
	}
	d.newConn = func() sender { return newRawConn(hostport, 30*time.Second) }

	stopProgress := progress(stderr, o.progress, "sinks", &d.sent, &sk.delivered)
	cpu0 := selfCPU()
	start := time.Now()
	d.run(ctx, start.Add(o.duration))
	elapsed := time.Since(start)
	cpu := selfCPU() - cpu0
	stopProgress()

	r := &report{Target: "sink-baseline", Client: clientRaw, Mode: "deliveries", Concurrency: conns,
		SendSeconds: elapsed.Seconds(), Requests: d.reqs.Load(), Accepted: d.sent.Load(), Errors: d.errors,
		Sinks: len(sk.endpoints), Drained: true,
		SinkPeakConns: sk.peakConns.Load(), SinkPeakInFlight: sk.peakInFlight.Load()}
	r.RequestsPerSec = float64(r.Requests) / elapsed.Seconds()
	r.EventsPerSec = r.RequestsPerSec
	r.Deliveries = sk.delivered.Load()
	r.DeliveriesPerSec = float64(r.Deliveries) / elapsed.Seconds()
	r.LoadCPU = cpu.Seconds() / elapsed.Seconds()
	if r.Requests > 0 {
		r.LoadCPUPerRequestUS = float64(cpu.Microseconds()) / float64(r.Requests)
		r.LoadCPUPerDeliveryUS = r.LoadCPUPerRequestUS
	}
	acks := sortDurations(d.acks)
	r.AckP50, r.AckP99 = ms(percentile(acks, 50)), ms(percentile(acks, 99))
	for _, e := range sk.endpoints {
		e.mu.Lock()
		n := int64(len(e.seen))
		e.mu.Unlock()
		r.PerDestination = append(r.PerDestination, destStats{Deliveries: n, PerSec: float64(n) / elapsed.Seconds()})
	}
	return r, nil
}

// progress prints what a phase has done every second, until the returned
// function is called.
func progress(w io.Writer, on bool, target string, sent, delivered interface{ Load() int64 }) (stop func()) {
	if !on {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	start := time.Now()
	lastSent, lastDelivered := sent.Load(), delivered.Load()
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			s, d := sent.Load(), delivered.Load()
			fmt.Fprintf(w, "%s t=%4.0fs accepted=%d (%d/s) delivered=%d (%d/s)\n", strings.TrimSpace(target),
				time.Since(start).Seconds(), s, s-lastSent, d, d-lastDelivered)
			lastSent, lastDelivered = s, d
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
