package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"
)

// The backlog scenario (--backlog N), with K sinks (--sinks):
//
//  1. steady state: S events (--backlog-steady; a tenth of N, at least
//     20,000) in batches as fast as fanout accepts them, every destination
//     delivering, until every destination has every event. Its
//     deliveries/s (all destinations, from the first send to the last
//     delivery) are the steady-state delivery rate.
//  2. the first destination is paused (PATCH /v1/destinations/{id}
//     {"paused": true}), and N events are sent in batches as fast as
//     accepted; the ingest rates of the first and last tenth are compared.
//     The other destinations keep delivering meanwhile.
//  3. catch-up: until the other destinations have every event.
//  4. drain: the destination is resumed (POST .../resume), and its backlog
//     timed until it has every event; its deliveries/s are compared with
//     the steady state's.
//
// fanout's RSS is sampled every 100 ms, and its peak (VmHWM, reset at the
// start of each phase where Linux allows) read at the end of each, so that
// each phase has its own peak.

// backlogReport is what one run of the scenario measured.
type backlogReport struct {
	Target      string `json:"target"`
	Client      string `json:"client"`
	Events      int64  `json:"backlog_events"`
	Batch       int    `json:"batch"`
	Concurrency int    `json:"concurrency"`
	Sinks       int    `json:"sinks"`
	Runs        int    `json:"runs,omitempty"`

	SteadyEvents           int64   `json:"steady_events"`
	SteadySeconds          float64 `json:"steady_seconds"`
	SteadyIngestPerSec     float64 `json:"steady_ingest_events_per_sec"`
	SteadyDeliveriesPerSec float64 `json:"steady_deliveries_per_sec"`
	SteadyCPUPerDeliveryUS float64 `json:"steady_cpu_us_per_delivery"`
	SteadyPeakRSSMiB       float64 `json:"steady_peak_rss_mib"`

	IngestSeconds          float64        `json:"ingest_seconds"`
	IngestPerSec           float64        `json:"ingest_events_per_sec"`
	FirstTenthPerSec       float64        `json:"ingest_first_tenth_per_sec"`
	LastTenthPerSec        float64        `json:"ingest_last_tenth_per_sec"`
	TenthRatio             float64        `json:"ingest_last_to_first_tenth"`
	AckP50                 float64        `json:"ingest_ack_p50_ms"`
	AckP99                 float64        `json:"ingest_ack_p99_ms"`
	IngestErrors           map[string]int `json:"ingest_errors,omitempty"`
	OthersDeliveriesPerSec float64        `json:"ingest_other_destinations_deliveries_per_sec,omitempty"`
	DeliveredWhilePaused   int64          `json:"delivered_while_paused"`
	IngestPeakRSSMiB       float64        `json:"ingest_peak_rss_mib"`

	CatchUpSeconds    float64 `json:"catch_up_seconds"`
	CatchUpPeakRSSMiB float64 `json:"catch_up_peak_rss_mib"`

	Drained               bool    `json:"drained"`
	DrainSeconds          float64 `json:"drain_seconds"`
	DrainPerSec           float64 `json:"drain_deliveries_per_sec"`
	DrainRatio            float64 `json:"drain_to_steady"`
	DrainCPUPerDeliveryUS float64 `json:"drain_cpu_us_per_delivery"`
	DrainPeakRSSMiB       float64 `json:"drain_peak_rss_mib"`

	Missing    []int       `json:"missing_per_destination"`
	Duplicates []int       `json:"duplicates_per_destination"`
	PeakRSSMiB float64     `json:"peak_rss_mib"`
	Disk       *diskReport `json:"disk,omitempty"`
}

func runBacklog(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	if o.fanoutBin == "" {
		return errors.New("--backlog needs --fanout: it reads fanout's RSS and data directory")
	}
	if o.sinks < 1 {
		return errors.New("--backlog needs --sinks of at least 1: it pauses the first")
	}
	if o.steady == 0 {
		o.steady = max(o.backlog/10, 20000)
	}
	var all []*backlogReport
	for i := range o.runs {
		if o.runs > 1 {
			fmt.Fprintf(stderr, "run %d of %d\n", i+1, o.runs)
		}
		r, err := backlogOnce(ctx, o, stderr)
		if err != nil {
			return err
		}
		all = append(all, r)
		if o.runs > 1 && !o.jsonOut {
			fmt.Fprintf(stdout, "run %d: ingest first tenth %.0f/s, last tenth %.0f/s (%.2f), peak RSS %.0f MiB; drain %.0f deliveries/s = %.2f x steady %.0f/s, peak RSS %.0f MiB\n",
				i+1, r.FirstTenthPerSec, r.LastTenthPerSec, r.TenthRatio, r.IngestPeakRSSMiB, r.DrainPerSec, r.DrainRatio, r.SteadyDeliveriesPerSec, r.DrainPeakRSSMiB)
		}
	}
	r := medianBacklog(all)
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode([]*backlogReport{r})
	}
	if o.runs > 1 {
		fmt.Fprintf(stdout, "medians of %d runs:\n", o.runs)
	}
	r.print(stdout)
	return nil
}

func backlogOnce(ctx context.Context, o *options, stderr io.Writer) (*backlogReport, error) {
	sk, err := startSink("127.0.0.1:0", o.sinks, o.sinkLatency, o.faults, o.faulty)
	if err != nil {
		return nil, err
	}
	defer sk.close()
	server, base, err := startFanout(ctx, o, sk, stderr)
	if err != nil {
		return nil, err
	}
	defer server.cleanup()
	stopped := false
	defer func() {
		if !stopped {
			stopFanout(server, stderr)
		}
	}()
	api := &apiClient{base: base, token: o.token, http: &http.Client{Timeout: 30 * time.Second}}
	paused, err := api.destinationID(ctx, sk.urls()[0])
	if err != nil {
		return nil, err
	}
	rss := newRSSSampler(server)
	defer rss.close()
	r := &backlogReport{Target: "backlog", Client: o.client, Events: o.backlog, Batch: o.batch,
		Concurrency: o.concurrency, Sinks: o.sinks, SteadyEvents: o.steady}
	all := make([]int, o.sinks)
	for i := range all {
		all[i] = i
	}
	others := all[1:]
	bo := *o
	bo.mode = "batch"

	// 1. Steady state.
	fmt.Fprintf(stderr, "backlog: steady state, %d events to %d destinations\n", o.steady, o.sinks)
	bo.events = o.steady
	sd, err := newIngestDriver(base, &bo)
	if err != nil {
		return nil, err
	}
	cpu0 := server.cpuSeconds()
	start := time.Now()
	stop := progress(stderr, o.progress, "steady", &sd.sent, &sk.delivered)
	sd.run(ctx, start.Add(24*time.Hour))
	ingested := time.Since(start)
	steadyN := sd.sent.Load()
	ok := waitUnique(ctx, sk, all, int(steadyN), o.drain)
	stop()
	if !ok {
		return nil, fmt.Errorf("steady state: the destinations did not get every event (%v of %d); fanout says:\n%s", sk.unique(), steadyN, server.logs())
	}
	steadyEnd := sk.lastDelivery(all)
	r.SteadyEvents = steadyN
	r.SteadySeconds = steadyEnd.Sub(start).Seconds()
	r.SteadyIngestPerSec = float64(steadyN) / ingested.Seconds()
	deliveries := steadyN * int64(o.sinks)
	r.SteadyDeliveriesPerSec = float64(deliveries) / r.SteadySeconds
	r.SteadyCPUPerDeliveryUS = (server.cpuSeconds() - cpu0) / float64(deliveries) * 1e6
	r.SteadyPeakRSSMiB = rss.next()

	// 2. Pause the first destination and ingest the backlog.
	if err := api.setPaused(ctx, paused, true); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "backlog: destination %s paused; %d events\n", paused, o.backlog)
	before := sk.uniqueOf(0)
	othersBefore := sk.delivered.Load() - int64(before)
	bo.events = o.backlog
	bd, err := newIngestDriver(base, &bo)
	if err != nil {
		return nil, err
	}
	tenth := o.backlog / 10
	bd.mark(tenth, o.backlog-tenth)
	rss.next()
	start = time.Now()
	stop = progress(stderr, o.progress, "backlog", &bd.sent, &sk.delivered)
	bd.run(ctx, start.Add(24*time.Hour))
	end := time.Now()
	stop()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	n := bd.sent.Load()
	r.IngestPeakRSSMiB = rss.next()
	r.IngestSeconds = end.Sub(start).Seconds()
	r.IngestPerSec = float64(n) / r.IngestSeconds
	r.IngestErrors = bd.errors
	acks := sortDurations(bd.acks)
	r.AckP50, r.AckP99 = ms(percentile(acks, 50)), ms(percentile(acks, 99))
	if t1, t9 := bd.markedAt[0].Load(), bd.markedAt[1].Load(); t1 > 0 && t9 > 0 {
		r.FirstTenthPerSec = float64(tenth) / time.Duration(t1-start.UnixNano()).Seconds()
		r.LastTenthPerSec = float64(n-(o.backlog-tenth)) / end.Sub(time.Unix(0, t9)).Seconds()
		r.TenthRatio = r.LastTenthPerSec / r.FirstTenthPerSec
	}
	r.DeliveredWhilePaused = int64(sk.uniqueOf(0) - before)
	if len(others) > 0 {
		r.OthersDeliveriesPerSec = float64(sk.delivered.Load()-int64(sk.uniqueOf(0))-othersBefore) / r.IngestSeconds
	}

	// 3. Catch-up of the other destinations.
	want := int(steadyN + n)
	stop = progress(stderr, o.progress, "catch-up", &bd.sent, &sk.delivered)
	ok = waitUnique(ctx, sk, others, want, o.drain)
	stop()
	if !ok {
		return nil, fmt.Errorf("catch-up: the other destinations did not get every event (%v of %d)", sk.unique(), want)
	}
	r.CatchUpSeconds = time.Since(end).Seconds()
	r.CatchUpPeakRSSMiB = rss.next()

	// 4. Resume, and drain.
	fmt.Fprintf(stderr, "backlog: resuming %s with %d deliveries waiting\n", paused, want-sk.uniqueOf(0))
	cpu0 = server.cpuSeconds()
	resumed := time.Now()
	if err := api.resume(ctx, paused); err != nil {
		return nil, err
	}
	stop = progress(stderr, o.progress, "drain", &bd.sent, &sk.delivered)
	r.Drained = waitUnique(ctx, sk, all[:1], want, o.drain)
	stop()
	drainEnd := sk.lastDelivery(all[:1])
	drainCPU := server.cpuSeconds() - cpu0
	r.DrainPeakRSSMiB = rss.next()
	drainedN := sk.uniqueOf(0) - before - int(r.DeliveredWhilePaused)
	r.DrainSeconds = drainEnd.Sub(resumed).Seconds()
	if r.DrainSeconds > 0 {
		r.DrainPerSec = float64(drainedN) / r.DrainSeconds
		r.DrainRatio = r.DrainPerSec / r.SteadyDeliveriesPerSec
	}
	if drainedN > 0 {
		r.DrainCPUPerDeliveryUS = drainCPU / float64(drainedN) * 1e6
	}

	// Every event at every destination, and the disk.
	ids := append(sd.acceptedIDs(), bd.acceptedIDs()...)
	for _, e := range sk.endpoints {
		e.mu.Lock()
		missing, dups := 0, 0
		for _, id := range ids {
			if c := e.seen[id]; c == 0 {
				missing++
			} else if c > 1 {
				dups += int(c - 1)
			}
		}
		e.mu.Unlock()
		r.Missing = append(r.Missing, missing)
		r.Duplicates = append(r.Duplicates, dups)
	}
	r.PeakRSSMiB = rss.overall()
	running, runningFiles, derr := dirSize(server.dir)
	stopFanout(server, stderr)
	stopped = true
	if derr == nil {
		if stoppedSize, stoppedFiles, err := dirSize(server.dir); err == nil {
			r.Disk = newDiskReport(int64(len(ids)), o.sinks, eventBytes(newRunID(), o.eventSize), running, stoppedSize)
			r.Disk.RunningFiles, r.Disk.StoppedFiles = runningFiles, stoppedFiles
		}
	}
	return r, nil
}

func (r *backlogReport) print(w io.Writer) {
	fmt.Fprintf(w, "== backlog: %d events in batches of %d, %d clients (%s), %d destinations, the first paused\n",
		r.Events, r.Batch, r.Concurrency, r.Client, r.Sinks)
	fmt.Fprintf(w, "  steady     %d events to every destination: %.0f deliveries/s (ingest %.0f events/s), %.1f µs fanout CPU per delivery, peak RSS %.0f MiB\n",
		r.SteadyEvents, r.SteadyDeliveriesPerSec, r.SteadyIngestPerSec, r.SteadyCPUPerDeliveryUS, r.SteadyPeakRSSMiB)
	fmt.Fprintf(w, "  ingest     %.0f events/s over %.1fs; first tenth %.0f/s, last tenth %.0f/s: %.2fx; ack p50 %.1f ms, p99 %.1f ms; peak RSS %.0f MiB\n",
		r.IngestPerSec, r.IngestSeconds, r.FirstTenthPerSec, r.LastTenthPerSec, r.TenthRatio, r.AckP50, r.AckP99, r.IngestPeakRSSMiB)
	if r.OthersDeliveriesPerSec > 0 {
		fmt.Fprintf(w, "             the other destinations got %.0f deliveries/s meanwhile; the paused one %d\n", r.OthersDeliveriesPerSec, r.DeliveredWhilePaused)
	} else {
		fmt.Fprintf(w, "             the paused destination got %d deliveries meanwhile\n", r.DeliveredWhilePaused)
	}
	if len(r.IngestErrors) > 0 {
		fmt.Fprintf(w, "  errors     %v\n", r.IngestErrors)
	}
	if r.Sinks > 1 {
		fmt.Fprintf(w, "  catch-up   %.1fs more until the other destinations had every event; peak RSS %.0f MiB\n", r.CatchUpSeconds, r.CatchUpPeakRSSMiB)
	}
	fmt.Fprintf(w, "  drain      %.0f deliveries/s over %.1fs = %.2fx the steady state; %.1f µs fanout CPU per delivery; peak RSS %.0f MiB; drained=%v\n",
		r.DrainPerSec, r.DrainSeconds, r.DrainRatio, r.DrainCPUPerDeliveryUS, r.DrainPeakRSSMiB, r.Drained)
	fmt.Fprintf(w, "  missing    %v per destination, duplicates %v\n", r.Missing, r.Duplicates)
	fmt.Fprintf(w, "  peak RSS   %.0f MiB over the whole run\n", r.PeakRSSMiB)
	if r.Disk != nil {
		r.Disk.print(w)
	}
}

// medianBacklog folds several runs: each rate, time and peak the median of
// its runs, missing and duplicates the worst run's.
func medianBacklog(all []*backlogReport) *backlogReport {
	if len(all) == 1 {
		return all[0]
	}
	m := *all[len(all)-1]
	med := func(f func(*backlogReport) *float64) {
		v := make([]float64, len(all))
		for i, r := range all {
			v[i] = *f(r)
		}
		sort.Float64s(v)
		x := v[len(v)/2]
		if len(v)%2 == 0 {
			x = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		*f(&m) = x
	}
	for _, f := range []func(*backlogReport) *float64{
		func(r *backlogReport) *float64 { return &r.SteadySeconds },
		func(r *backlogReport) *float64 { return &r.SteadyIngestPerSec },
		func(r *backlogReport) *float64 { return &r.SteadyDeliveriesPerSec },
		func(r *backlogReport) *float64 { return &r.SteadyCPUPerDeliveryUS },
		func(r *backlogReport) *float64 { return &r.SteadyPeakRSSMiB },
		func(r *backlogReport) *float64 { return &r.IngestSeconds },
		func(r *backlogReport) *float64 { return &r.IngestPerSec },
		func(r *backlogReport) *float64 { return &r.FirstTenthPerSec },
		func(r *backlogReport) *float64 { return &r.LastTenthPerSec },
		func(r *backlogReport) *float64 { return &r.TenthRatio },
		func(r *backlogReport) *float64 { return &r.AckP50 },
		func(r *backlogReport) *float64 { return &r.AckP99 },
		func(r *backlogReport) *float64 { return &r.OthersDeliveriesPerSec },
		func(r *backlogReport) *float64 { return &r.IngestPeakRSSMiB },
		func(r *backlogReport) *float64 { return &r.CatchUpSeconds },
		func(r *backlogReport) *float64 { return &r.CatchUpPeakRSSMiB },
		func(r *backlogReport) *float64 { return &r.DrainSeconds },
		func(r *backlogReport) *float64 { return &r.DrainPerSec },
		func(r *backlogReport) *float64 { return &r.DrainRatio },
		func(r *backlogReport) *float64 { return &r.DrainCPUPerDeliveryUS },
		func(r *backlogReport) *float64 { return &r.DrainPeakRSSMiB },
		func(r *backlogReport) *float64 { return &r.PeakRSSMiB },
	} {
		med(f)
	}
	m.Missing = append([]int(nil), m.Missing...)
	m.Duplicates = append([]int(nil), m.Duplicates...)
	for _, r := range all {
		m.Drained = m.Drained && r.Drained
		m.DeliveredWhilePaused = max(m.DeliveredWhilePaused, r.DeliveredWhilePaused)
		for d := range r.Missing {
			if d < len(m.Missing) {
				m.Missing[d] = max(m.Missing[d], r.Missing[d])
				m.Duplicates[d] = max(m.Duplicates[d], r.Duplicates[d])
			}
		}
	}
	var runs []*report
	for _, r := range all {
		runs = append(runs, &report{Disk: r.Disk})
	}
	m.Disk = medianDisk(runs)
	m.Runs = len(all)
	return &m
}

// waitUnique waits until each of the endpoints has at least want distinct
// events. It gives up when no endpoint has got anything new for stall.
func waitUnique(ctx context.Context, sk *sink, endpoints []int, want int, stall time.Duration) bool {
	last, lastChange := -1, time.Now()
	for ctx.Err() == nil {
		total, done := 0, true
		for _, i := range endpoints {
			n := sk.uniqueOf(i)
			total += n
			done = done && n >= want
		}
		if done {
			return true
		}
		if total != last {
			last, lastChange = total, time.Now()
		} else if time.Since(lastChange) > stall {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// apiClient calls fanout's destinations API.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

func (a *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// destinationID returns the id of the destination with this URL.
func (a *apiClient) destinationID(ctx context.Context, url string) (string, error) {
	var list struct {
		Destinations []struct {
			ID  string `json:"id"`
			URL string `json:"url"`
		} `json:"destinations"`
	}
	if err := a.do(ctx, "GET", "/v1/destinations", nil, &list); err != nil {
		return "", err
	}
	for _, d := range list.Destinations {
		if d.URL == url {
			return d.ID, nil
		}
	}
	return "", fmt.Errorf("fanout has no destination %s", url)
}

func (a *apiClient) setPaused(ctx context.Context, id string, paused bool) error {
	return a.do(ctx, "PATCH", "/v1/destinations/"+id, map[string]bool{"paused": paused}, nil)
}

func (a *apiClient) resume(ctx context.Context, id string) error {
	return a.do(ctx, "POST", "/v1/destinations/"+id+"/resume", nil, nil)
}

// rssSampler reads a process's RSS every 100 ms and keeps the peak of the
// current phase and of the whole run.
type rssSampler struct {
	p      *proc
	hwm    bool // VmHWM can be reset per phase
	mu     sync.Mutex
	peak   int64
	all    int64
	done   chan struct{}
	closed chan struct{}
}

func newRSSSampler(p *proc) *rssSampler {
	s := &rssSampler{p: p, done: make(chan struct{}), closed: make(chan struct{})}
	s.hwm = p.resetPeakRSS()
	go func() {
		defer close(s.closed)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			v := p.rss()
			s.mu.Lock()
			s.peak = max(s.peak, v)
			s.all = max(s.all, v)
			s.mu.Unlock()
		}
	}()
	return s
}

// next ends a phase: it returns the phase's peak in MiB and starts the next.
func (s *rssSampler) next() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.peak
	if s.hwm {
		v = max(v, s.p.peakRSS())
		s.p.resetPeakRSS()
	}
	s.all = max(s.all, v)
	s.peak = s.p.rss()
	return float64(v) / (1 << 20)
}

// overall returns the peak of the whole run in MiB.
func (s *rssSampler) overall() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(max(s.all, s.peak)) / (1 << 20)
}

func (s *rssSampler) close() {
	close(s.done)
	<-s.closed
}
