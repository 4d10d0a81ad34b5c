package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// driver sends the load: C goroutines, each with its own keep-alive
// connection, each event with a unique id (run id and sequence number) and
// its send time. Requests are built once per goroutine and only their ids and
// times rewritten before each send (reqtmpl.go).
type driver struct {
	conns    int
	events   int64 // stop after this many (0: until the deadline)
	runID    string
	per      int // events per request
	limit    *rate.Limiter
	requests func() []*request // a goroutine's requests, sent in turn
	newConn  func() sender

	seq  atomic.Int64
	sent atomic.Int64 // events in requests answered 2xx
	reqs atomic.Int64

	// marks are counts of accepted events whose time of reaching is
	// recorded in markedAt (UnixNano), for the backlog's first and last
	// tenth.
	marks    []int64
	markedAt []atomic.Int64

	mu       sync.Mutex
	acks     []time.Duration
	accepted []int64 // the first sequence number of each request answered 2xx
	errors   map[string]int
}

// newRunID returns a random run id: the prefix of every load_id.
func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newIngestDriver drives base's /v1/event or /v1/batch as o says.
func newIngestDriver(base string, o *options) (*driver, error) {
	d := &driver{conns: o.concurrency, events: o.events, runID: newRunID(), errors: map[string]int{}}
	path, batch := "/v1/event", false
	d.per = 1
	if o.mode == "batch" {
		path, batch, d.per = "/v1/batch", true, o.batch
	}
	if o.rate > 0 {
		burst := d.per
		d.limit = rate.NewLimiter(rate.Limit(o.rate), max(burst, int(o.rate/100)))
	}
	var headers []header
	if o.token != "" {
		headers = append(headers, header{"Authorization", "Bearer " + o.token})
	}
	switch o.client {
	case clientRaw:
		hostport, prefix, err := splitBase(base)
		if err != nil {
			return nil, err
		}
		d.requests = func() []*request {
			return []*request{buildRequest(hostport, prefix+path, headers, d.runID, o.eventSize, d.per, batch)}
		}
		d.newConn = func() sender { return newRawConn(hostport, 30*time.Second) }
	case clientNetHTTP:
		client := newNetHTTPClient(o.concurrency)
		h := http.Header{"Content-Type": {"application/json"}}
		for _, kv := range headers {
			h.Set(kv.name, kv.value)
		}
		d.requests = func() []*request {
			r := buildRequest("", path, nil, d.runID, o.eventSize, d.per, batch)
			return []*request{r}
		}
		d.newConn = func() sender { return newNetHTTPConn(client, base, path, h) }
	default:
		return nil, errors.New("--client must be raw or nethttp")
	}
	return d, nil
}

// mark asks run to record when the accepted events reach each count.
func (d *driver) mark(counts ...int64) {
	d.marks = counts
	d.markedAt = make([]atomic.Int64, len(counts))
}

// run sends until the deadline or the event budget, and returns when every
// client has its last answer.
func (d *driver) run(ctx context.Context, deadline time.Time) {
	var wg sync.WaitGroup
	for range d.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.loop(ctx, deadline)
		}()
	}
	wg.Wait()
}

func (d *driver) loop(ctx context.Context, deadline time.Time) {
	reqs := d.requests()
	conn := d.newConn()
	defer conn.close()
	acks := make([]time.Duration, 0, 1024)
	accepted := make([]int64, 0, 1024)
	var errs map[string]int
	defer func() {
		d.mu.Lock()
		d.acks = append(d.acks, acks...)
		d.accepted = append(d.accepted, accepted...)
		for k, v := range errs {
			d.errors[k] += v
		}
		d.mu.Unlock()
	}()
	fail := func(kind string) {
		if errs == nil {
			errs = map[string]int{}
		}
		errs[kind]++
	}
	per := int64(d.per)
	for i := 0; ctx.Err() == nil; i++ {
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		if d.limit != nil {
			if err := d.limit.WaitN(ctx, d.per); err != nil {
				return
			}
			now = time.Now()
		}
		first := d.seq.Add(per) - per + 1
		if d.events > 0 && first > d.events {
			return
		}
		r := reqs[i%len(reqs)]
		r.fill(first, now.UnixNano())
		status, err := conn.send(ctx, r)
		if err != nil {
			if ctx.Err() == nil {
				fail(errorKind(err))
			}
			continue
		}
		d.reqs.Add(1)
		if status/100 != 2 {
			fail(strconv.Itoa(status))
			continue
		}
		acks = append(acks, time.Since(now))
		accepted = append(accepted, first)
		total := d.sent.Add(per)
		for j, m := range d.marks {
			if total >= m && total-per < m {
				d.markedAt[j].Store(time.Now().UnixNano())
			}
		}
	}
}

// acceptedIDs returns the load_id of every accepted event.
func (d *driver) acceptedIDs() []string {
	out := make([]string, 0, len(d.accepted)*d.per)
	for _, first := range d.accepted {
		for i := range int64(d.per) {
			out = append(out, loadID(d.runID, first+i))
		}
	}
	return out
}

func errorKind(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "connection refused"):
		return "connection refused"
	case strings.Contains(s, "connection reset"):
		return "connection reset"
	case strings.Contains(s, "Timeout") || strings.Contains(s, "timeout"):
		return "timeout"
	case strings.Contains(s, "EOF"):
		return "EOF"
	case errors.Is(err, errMalformed), errors.Is(err, errUnsupported):
		return "bad response"
	}
	return "transport error"
}

// selfCPU returns the CPU time (user and system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// percentile returns the p-th percentile (0..100) of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func sortDurations(d []time.Duration) []time.Duration {
	slices.Sort(d)
	return d
}
