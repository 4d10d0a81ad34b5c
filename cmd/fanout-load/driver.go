package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// driver sends the load: C goroutines, each with its own keep-alive
// connection, each event with a unique id and its send time.
type driver struct {
	client *http.Client
	url    string
	o      *options
	runID  string
	pad    string
	seq    atomic.Int64
	limit  *rate.Limiter // nil: no pacing
	sent   atomic.Int64  // events in requests answered 2xx
	reqs   atomic.Int64

	mu       sync.Mutex
	acks     []time.Duration
	accepted []string
	errors   map[string]int
}

func newDriver(base string, o *options) *driver {
	var b [4]byte
	_, _ = rand.Read(b[:])
	pad := max(o.eventSize-60, 0)
	var limit *rate.Limiter
	if o.rate > 0 {
		burst := o.batch
		if o.mode == "event" {
			burst = 1
		}
		limit = rate.NewLimiter(rate.Limit(o.rate), max(burst, int(o.rate/100)))
	}
	return &driver{
		limit: limit,
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				MaxIdleConns:        o.concurrency * 2,
				MaxIdleConnsPerHost: o.concurrency * 2,
				IdleConnTimeout:     time.Minute,
			},
		},
		url:    base,
		o:      o,
		runID:  hex.EncodeToString(b[:]),
		pad:    strings.Repeat("x", pad),
		errors: map[string]int{},
	}
}

// body builds a request body of n events and returns their ids.
func (d *driver) body(n int, buf *bytes.Buffer) []string {
	buf.Reset()
	ids := make([]string, n)
	if d.o.mode == "batch" {
		buf.WriteByte('[')
	}
	for i := range n {
		if i > 0 {
			buf.WriteByte(',')
		}
		ids[i] = d.runID + "-" + strconv.FormatInt(d.seq.Add(1), 10)
		fmt.Fprintf(buf, `{"load_id":%q,"sent_ns":%d,"type":"load.test","pad":%q}`, ids[i], time.Now().UnixNano(), d.pad)
	}
	if d.o.mode == "batch" {
		buf.WriteByte(']')
	}
	return ids
}

// run sends until the deadline or the event budget, and returns when every
// client has its last answer.
func (d *driver) run(ctx context.Context, deadline time.Time) {
	path := "/v1/event"
	per := 1
	if d.o.mode == "batch" {
		path, per = "/v1/batch", d.o.batch
	}
	var wg sync.WaitGroup
	for range d.o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			var acks []time.Duration
			var accepted []string
			errs := map[string]int{}
			defer func() {
				d.mu.Lock()
				d.acks = append(d.acks, acks...)
				d.accepted = append(d.accepted, accepted...)
				for k, v := range errs {
					d.errors[k] += v
				}
				d.mu.Unlock()
			}()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if d.o.events > 0 && d.seq.Load() >= d.o.events {
					return
				}
				if d.limit != nil {
					if err := d.limit.WaitN(ctx, per); err != nil {
						return
					}
				}
				ids := d.body(per, &buf)
				start := time.Now()
				req, err := http.NewRequestWithContext(ctx, "POST", d.url+path, bytes.NewReader(buf.Bytes()))
				if err != nil {
					errs[errorKind(err)]++
					continue
				}
				req.Header.Set("Content-Type", "application/json")
				if d.o.token != "" {
					req.Header.Set("Authorization", "Bearer "+d.o.token)
				}
				resp, err := d.client.Do(req)
				if err != nil {
					errs[errorKind(err)]++
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				d.reqs.Add(1)
				if resp.StatusCode/100 != 2 {
					errs[strconv.Itoa(resp.StatusCode)]++
					continue
				}
				acks = append(acks, time.Since(start))
				accepted = append(accepted, ids...)
				d.sent.Add(int64(len(ids)))
			}
		}()
	}
	wg.Wait()
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
	}
	return "transport error"
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
