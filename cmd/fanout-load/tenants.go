package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// The tenant-fairness scenario (--tenants), issue 20's measure of "one
// tenant's flood does not delay another tenant's deliveries". Tenant A has a
// destination that answers in 2 s (--sink-latency, 2 s unless given), tenant
// B a fast one. Each run has two phases, each with its own fanout (a fresh
// data directory, an operator token, --tenant-ingest-rate of ten times B's
// rate, A's own ingest_rate set high enough for all its events) and its own
// sinks:
//
//   - alone: B sends --tenants-b-rate single events/s (50) for -d; A exists,
//     with its destination, and sends nothing.
//   - beside: the same, while A sends --tenants-a-events events (200,000) in
//     batches (--batch, -c) as fast as they are accepted. Every one of A's
//     events must be accepted: any other answer is reported.
//
// B's ingest->delivery latency (from the moment its event is sent to the
// moment B's sink has it) is measured in each, and B's p99 beside A over B's
// p99 alone is the figure (the issue asks for at most 1.5). The order of
// the phases alternates from one run to the next (alone first in odd runs),
// so that a drift of the shared machine's speed favours neither; with
// --runs, every figure is the median of its runs, and the spread of the
// ratio is its range over the runs.

// tenantPhase is what one phase measured.
type tenantPhase struct {
	BAccepted   int64          `json:"b_accepted"`
	BErrors     map[string]int `json:"b_errors,omitempty"`
	BAckP99     float64        `json:"b_ack_p99_ms"`
	BP50        float64        `json:"b_delivery_p50_ms"`
	BP99        float64        `json:"b_delivery_p99_ms"`
	BMax        float64        `json:"b_delivery_max_ms"`
	BMissing    int            `json:"b_missing"`
	BDuplicates int            `json:"b_duplicates"`
	BSeconds    float64        `json:"b_send_seconds"`
	ServerCPU   float64        `json:"server_cpu_cores"`

	// Beside A only.
	AAccepted      int64          `json:"a_accepted,omitempty"`
	AErrors        map[string]int `json:"a_errors,omitempty"`
	AIngestSeconds float64        `json:"a_ingest_seconds,omitempty"`
	AIngestPerSec  float64        `json:"a_ingest_events_per_sec,omitempty"`
	AAckP99        float64        `json:"a_ack_p99_ms,omitempty"`
	ADelivered     int64          `json:"a_delivered,omitempty"` // by the end of B's drain
	// B's p99 of the events B sent while A was still sending, and after.
	BP99DuringAIngest float64 `json:"b_delivery_p99_during_a_ingest_ms,omitempty"`
	BP99AfterAIngest  float64 `json:"b_delivery_p99_after_a_ingest_ms,omitempty"`
}

// tenantsReport is one run, or the medians of several.
type tenantsReport struct {
	Target        string    `json:"target"`
	Client        string    `json:"client"`
	AEvents       int64     `json:"a_events"`
	Batch         int       `json:"batch"`
	Concurrency   int       `json:"concurrency"`
	ASinkLatency  float64   `json:"a_sink_latency_ms"`
	BRate         float64   `json:"b_events_per_sec"`
	BSeconds      float64   `json:"b_seconds"`
	TenantRate    float64   `json:"tenant_ingest_rate"`
	Runs          int       `json:"runs,omitempty"`
	AloneFirst    bool      `json:"alone_first,omitempty"` // of a single run
	P99Ratio      float64   `json:"b_p99_beside_to_alone"`
	P50Ratio      float64   `json:"b_p50_beside_to_alone"`
	P99RatioRange []float64 `json:"b_p99_ratio_min_max,omitempty"`
	// PerRunP99Ratio is each run's ratio, in the order of the runs.
	PerRunP99Ratio []float64 `json:"b_p99_ratio_per_run,omitempty"`

	Alone  tenantPhase `json:"alone"`
	Beside tenantPhase `json:"beside"`
}

func runTenants(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	if o.fanoutBin == "" {
		return errors.New("--tenants needs --fanout: it starts fanout with an operator token, twice per run")
	}
	if o.tenantsA < 1 || o.tenantsBRate <= 0 || o.batch < 1 || o.concurrency < 1 {
		return errors.New("--tenants needs positive --tenants-a-events, --tenants-b-rate, --batch and -c")
	}
	if o.token == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		o.token = hex.EncodeToString(b[:])
	}
	if o.sinkLatency == 0 {
		o.sinkLatency = 2 * time.Second
	}
	var all []*tenantsReport
	for i := range max(o.runs, 1) {
		if o.runs > 1 {
			fmt.Fprintf(stderr, "run %d of %d\n", i+1, o.runs)
		}
		r := &tenantsReport{Target: "tenants", Client: o.client, AEvents: o.tenantsA, Batch: o.batch,
			Concurrency: o.concurrency, ASinkLatency: ms(o.sinkLatency), BRate: o.tenantsBRate,
			BSeconds: o.duration.Seconds(), TenantRate: tenantDefaultRate(o), AloneFirst: i%2 == 0}
		for _, beside := range phaseOrder(i) {
			settle()
			p, err := tenantsPhaseOnce(ctx, o, beside, stderr)
			if err != nil {
				return err
			}
			if beside {
				r.Beside = *p
			} else {
				r.Alone = *p
			}
		}
		r.P99Ratio, r.P50Ratio = ratio(r.Beside.BP99, r.Alone.BP99), ratio(r.Beside.BP50, r.Alone.BP50)
		all = append(all, r)
		if !o.jsonOut {
			fmt.Fprintf(stdout, "run %d (%s first): B p99 alone %.1f ms, beside A %.1f ms: %.2fx; p50 %.1f / %.1f ms; A accepted %d at %.0f events/s, errors %v\n",
				i+1, map[bool]string{true: "alone", false: "beside"}[r.AloneFirst], r.Alone.BP99, r.Beside.BP99, r.P99Ratio,
				r.Alone.BP50, r.Beside.BP50, r.Beside.AAccepted, r.Beside.AIngestPerSec, r.Beside.AErrors)
		}
	}
	r := medianTenants(all)
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode([]*tenantsReport{r})
	}
	if o.runs > 1 {
		fmt.Fprintf(stdout, "medians of %d runs:\n", o.runs)
	}
	r.print(stdout)
	return nil
}

// settle writes back what the page cache holds (the last phase's data
// directory, just removed, is hundreds of MB of WAL and database) and waits
// 2 s, so that a phase's fsyncs do not wait for the previous phase's
// writeback: without it, B alone right after a beside phase had a p99 of
// 1 s on this machine.
func settle() {
	syscall.Sync()
	time.Sleep(2 * time.Second)
}

// phaseOrder is the order of the phases of run i (from 0): alone first in
// even ones. true is "beside A".
func phaseOrder(i int) []bool {
	if i%2 == 0 {
		return []bool{false, true}
	}
	return []bool{true, false}
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// tenantDefaultRate is the --tenant-ingest-rate the scenario gives fanout:
// ten times B's rate, so that the per-tenant limit is on (B stays under it)
// and A is let through by its own, higher ingest_rate.
func tenantDefaultRate(o *options) float64 { return 10 * o.tenantsBRate }

// tenantsPhaseOnce starts fanout and two sinks, creates tenants A and B with
// a destination each, and measures B's deliveries, with A's flood when
// beside.
func tenantsPhaseOnce(ctx context.Context, o *options, beside bool, stderr io.Writer) (*tenantPhase, error) {
	name := map[bool]string{false: "alone", true: "beside"}[beside]
	skA, err := startSink("127.0.0.1:0", 1, o.sinkLatency, nil, 0)
	if err != nil {
		return nil, err
	}
	defer skA.close()
	skB, err := startSink("127.0.0.1:0", 1, 0, nil, 0)
	if err != nil {
		return nil, err
	}
	defer skB.close()
	fo := *o
	fo.fanoutArgs = append([]string{"--allow-network", "127.0.0.1/32",
		"--tenant-ingest-rate", strconv.FormatFloat(tenantDefaultRate(o), 'f', -1, 64)}, o.fanoutArgs...)
	server, base, err := startFanout(ctx, &fo, nil, stderr)
	if err != nil {
		return nil, err
	}
	defer server.cleanup()
	defer stopFanout(server, stderr)

	api := &apiClient{base: base, token: o.token, http: &http.Client{Timeout: 30 * time.Second}}
	// A may send all its events at once; B takes the default.
	aRate := float64(max(o.tenantsA, 1_000_000))
	if err := api.do(ctx, "PUT", "/v1/tenants/A", map[string]any{"name": "A (floods a slow destination)",
		"ingest_rate": aRate, "ingest_burst": int(aRate)}, nil); err != nil {
		return nil, err
	}
	if err := api.do(ctx, "PUT", "/v1/tenants/B", map[string]any{"name": "B"}, nil); err != nil {
		return nil, err
	}
	if err := api.do(ctx, "POST", "/v1/tenants/A/destinations", map[string]any{"url": skA.urls()[0]}, nil); err != nil {
		return nil, err
	}
	if err := api.do(ctx, "POST", "/v1/tenants/B/destinations", map[string]any{"url": skB.urls()[0]}, nil); err != nil {
		return nil, err
	}

	bd, err := newTenantDriver(base, "B", o, 1, 0, o.tenantsBRate, 16)
	if err != nil {
		return nil, err
	}
	var ad *driver
	var aChild *exec.Cmd
	var aOut bytes.Buffer
	if beside && o.tenantsANice > 0 {
		if aChild, err = tenantsAChildCmd(o, base, &aOut, stderr); err != nil {
			return nil, err
		}
	} else if beside {
		if ad, err = newTenantDriver(base, "A", o, o.batch, o.tenantsA, 0, o.concurrency); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(stderr, "tenants %s: B sends %.0f events/s for %s", name, o.tenantsBRate, o.duration)
	if beside {
		fmt.Fprintf(stderr, ", A %d events in batches of %d", o.tenantsA, o.batch)
	}
	fmt.Fprintln(stderr)

	p := &tenantPhase{}
	cpu0 := server.cpuSeconds()
	start := time.Now()
	stopB := progress(stderr, o.progress, name+" B", &bd.sent, &skB.delivered)
	stopA := func() {}
	aDone := make(chan time.Time, 1)
	var aErr error
	switch {
	case aChild != nil:
		if err := aChild.Start(); err != nil {
			stopB()
			return nil, err
		}
		go func() {
			aErr = aChild.Wait()
			aDone <- time.Now()
		}()
	case beside:
		stopA = progress(stderr, o.progress, name+" A", &ad.sent, &skA.delivered)
		go func() {
			ad.run(ctx, start.Add(24*time.Hour))
			aDone <- time.Now()
		}()
	}
	bd.run(ctx, start.Add(o.duration))
	p.BSeconds = time.Since(start).Seconds()
	aEnd := time.Time{}
	if beside {
		aEnd = <-aDone
		stopA()
	}
	if ctx.Err() != nil {
		stopB()
		return nil, ctx.Err()
	}
	p.BAccepted = bd.sent.Load()
	ok := waitUnique(ctx, skB, []int{0}, int(p.BAccepted), o.drain)
	stopB()
	p.ServerCPU = (server.cpuSeconds() - cpu0) / time.Since(start).Seconds()
	if !ok {
		fmt.Fprintf(stderr, "tenants %s: B's destination did not get every event within --drain of no progress\n", name)
	}

	p.BErrors = bd.errors
	acks := sortDurations(bd.acks)
	p.BAckP99 = ms(percentile(acks, 99))
	e := skB.endpoints[0]
	e.mu.Lock()
	lat := sortDurations(append([]time.Duration(nil), e.latencies...))
	for _, id := range bd.acceptedIDs() {
		if n := e.seen[id]; n == 0 {
			p.BMissing++
		} else if n > 1 {
			p.BDuplicates += int(n - 1)
		}
	}
	e.mu.Unlock()
	p.BP50, p.BP99 = ms(percentile(lat, 50)), ms(percentile(lat, 99))
	if len(lat) > 0 {
		p.BMax = ms(lat[len(lat)-1])
	}
	if beside {
		if aChild != nil {
			var res tenantsAResult
			if err := json.Unmarshal(aOut.Bytes(), &res); err != nil || aErr != nil {
				return nil, fmt.Errorf("the sender of tenant A's events: %v, %v: %q", aErr, err, aOut.String())
			}
			p.AAccepted, p.AErrors, p.AAckP99 = res.Accepted, res.Errors, res.AckP99
		} else {
			p.AAccepted = ad.sent.Load()
			p.AErrors = ad.errors
			p.AAckP99 = ms(percentile(sortDurations(ad.acks), 99))
		}
		p.AIngestSeconds = aEnd.Sub(start).Seconds()
		p.AIngestPerSec = float64(p.AAccepted) / p.AIngestSeconds
		p.ADelivered = skA.delivered.Load()
		e.mu.Lock()
		during, after := splitAt(e.latencies, int(aEnd.Sub(start).Seconds()*o.tenantsBRate))
		e.mu.Unlock()
		p.BP99DuringAIngest, p.BP99AfterAIngest = ms(percentile(during, 99)), ms(percentile(after, 99))
		if p.AAccepted != o.tenantsA {
			fmt.Fprintf(stderr, "tenants beside: A had %d of %d events accepted: %v\n", p.AAccepted, o.tenantsA, p.AErrors)
		}
	}
	return p, nil
}

// splitAt splits latencies kept in delivery order at the first cut of them,
// and returns each side sorted. B sends at a steady rate from the start of
// the phase, one event at a time, and its destination answers at once, so
// its deliveries come in the order they were sent, and the events B sent
// before A's ingest ended are about the first (A's ingest time) x (B's
// rate): the sink does not keep send times, and this is close enough for a
// p99 of each side.
func splitAt(inDeliveryOrder []time.Duration, cut int) (before, after []time.Duration) {
	cut = min(max(cut, 0), len(inDeliveryOrder))
	before = sortDurations(slices.Clone(inDeliveryOrder[:cut]))
	after = sortDurations(slices.Clone(inDeliveryOrder[cut:]))
	return before, after
}

// newTenantDriver drives /v1/tenants/{tenant}/event (per 1) or /batch, with
// conns connections, events in all (0: until the deadline), at most
// perSec events/s (0: as fast as accepted).
func newTenantDriver(base, tenant string, o *options, per int, events int64, perSec float64, conns int) (*driver, error) {
	d := &driver{conns: conns, events: events, runID: newRunID(), per: per, errors: map[string]int{}}
	path, batch := "/v1/tenants/"+tenant+"/event", false
	if per > 1 {
		path, batch = "/v1/tenants/"+tenant+"/batch", true
	}
	if perSec > 0 {
		d.limit = rate.NewLimiter(rate.Limit(perSec), per)
	}
	headers := []header{{"Authorization", "Bearer " + o.token}}
	switch o.client {
	case clientRaw:
		hostport, prefix, err := splitBase(base)
		if err != nil {
			return nil, err
		}
		d.requests = func() []*request {
			return []*request{buildRequest(hostport, prefix+path, headers, d.runID, o.eventSize, per, batch)}
		}
		d.newConn = func() sender { return newRawConn(hostport, 30*time.Second) }
	case clientNetHTTP:
		client := newNetHTTPClient(conns)
		h := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + o.token}}
		d.requests = func() []*request { return []*request{buildRequest("", path, nil, d.runID, o.eventSize, per, batch)} }
		d.newConn = func() sender { return newNetHTTPConn(client, base, path, h) }
	default:
		return nil, errors.New("--client must be raw or nethttp")
	}
	return d, nil
}

func (r *tenantsReport) print(w io.Writer) {
	fmt.Fprintf(w, "== tenants: B %.0f single events/s for %.0fs to a fast destination; A %d events in batches of %d, %d clients (%s), to a destination answering in %.0f ms\n",
		r.BRate, r.BSeconds, r.AEvents, r.Batch, r.Concurrency, r.Client, r.ASinkLatency)
	for _, ph := range []struct {
		name string
		p    *tenantPhase
	}{{"B alone ", &r.Alone}, {"B beside", &r.Beside}} {
		p := ph.p
		fmt.Fprintf(w, "  %s  %d accepted, ingest->delivery p50 %.1f ms, p99 %.1f ms, max %.1f ms; ack p99 %.1f ms; missing %d, duplicates %d; fanout %.2f cores\n",
			ph.name, p.BAccepted, p.BP50, p.BP99, p.BMax, p.BAckP99, p.BMissing, p.BDuplicates, p.ServerCPU)
		if len(p.BErrors) > 0 {
			fmt.Fprintf(w, "             B errors %v\n", p.BErrors)
		}
	}
	b := &r.Beside
	fmt.Fprintf(w, "  A          %d of %d accepted in %.1fs, %.0f events/s, ack p99 %.1f ms; %d delivered by the end of B's drain\n",
		b.AAccepted, r.AEvents, b.AIngestSeconds, b.AIngestPerSec, b.AAckP99, b.ADelivered)
	if len(b.AErrors) > 0 {
		fmt.Fprintf(w, "             A errors %v\n", b.AErrors)
	}
	fmt.Fprintf(w, "  B beside   p99 of what B sent while A was sending %.1f ms, after %.1f ms\n", b.BP99DuringAIngest, b.BP99AfterAIngest)
	fmt.Fprintf(w, "  ratio      B p99 beside A / alone %.2fx (p50 %.2fx)", r.P99Ratio, r.P50Ratio)
	if len(r.P99RatioRange) == 2 {
		fmt.Fprintf(w, "; over %d runs %.2f-%.2f, per run %v", r.Runs, r.P99RatioRange[0], r.P99RatioRange[1], r.PerRunP99Ratio)
	}
	fmt.Fprintln(w)
}

// medianTenants folds several runs: each figure the median of its runs,
// counts of errors, missing and duplicates the worst run's; the p99 ratio
// is the median of the runs' ratios, with its range.
func medianTenants(all []*tenantsReport) *tenantsReport {
	if len(all) == 1 {
		return all[0]
	}
	m := *all[0]
	m.AloneFirst = false
	m.Runs = len(all)
	for _, r := range all {
		m.PerRunP99Ratio = append(m.PerRunP99Ratio, r.P99Ratio)
	}
	s := slices.Clone(m.PerRunP99Ratio)
	slices.Sort(s)
	m.P99RatioRange = []float64{s[0], s[len(s)-1]}
	med := func(f func(*tenantsReport) float64) float64 {
		v := make([]float64, len(all))
		for i, r := range all {
			v[i] = f(r)
		}
		return median(v)
	}
	m.P99Ratio = med(func(r *tenantsReport) float64 { return r.P99Ratio })
	m.P50Ratio = med(func(r *tenantsReport) float64 { return r.P50Ratio })
	for _, ph := range []func(*tenantsReport) *tenantPhase{
		func(r *tenantsReport) *tenantPhase { return &r.Alone },
		func(r *tenantsReport) *tenantPhase { return &r.Beside },
	} {
		p := ph(&m)
		fields := []func(*tenantPhase) *float64{
			func(p *tenantPhase) *float64 { return &p.BAckP99 },
			func(p *tenantPhase) *float64 { return &p.BP50 },
			func(p *tenantPhase) *float64 { return &p.BP99 },
			func(p *tenantPhase) *float64 { return &p.BMax },
			func(p *tenantPhase) *float64 { return &p.BSeconds },
			func(p *tenantPhase) *float64 { return &p.ServerCPU },
			func(p *tenantPhase) *float64 { return &p.AIngestSeconds },
			func(p *tenantPhase) *float64 { return &p.AIngestPerSec },
			func(p *tenantPhase) *float64 { return &p.AAckP99 },
			func(p *tenantPhase) *float64 { return &p.BP99DuringAIngest },
			func(p *tenantPhase) *float64 { return &p.BP99AfterAIngest },
		}
		for _, f := range fields {
			*f(p) = med(func(r *tenantsReport) float64 { return *f(ph(r)) })
		}
		p.BAccepted = int64(med(func(r *tenantsReport) float64 { return float64(ph(r).BAccepted) }))
		p.ADelivered = int64(med(func(r *tenantsReport) float64 { return float64(ph(r).ADelivered) }))
		// The worst run's: any loss, error or short count shows.
		p.BErrors, p.AErrors = map[string]int{}, map[string]int{}
		for _, r := range all {
			q := ph(r)
			p.BMissing = max(p.BMissing, q.BMissing)
			p.BDuplicates = max(p.BDuplicates, q.BDuplicates)
			p.AAccepted = min(p.AAccepted, q.AAccepted)
			for k, v := range q.BErrors {
				p.BErrors[k] = max(p.BErrors[k], v)
			}
			for k, v := range q.AErrors {
				p.AErrors[k] = max(p.AErrors[k], v)
			}
		}
	}
	return &m
}

// median returns the median of v (the mean of the middle two for an even
// count), 0 for none. It sorts v.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// tenantsAResult is what a child sending A's events reports.
type tenantsAResult struct {
	Accepted int64          `json:"accepted"`
	Errors   map[string]int `json:"errors"`
	AckP99   float64        `json:"ack_p99_ms"`
}

// tenantsAChildCmd is this tool started again to send A's events under
// nice: the producer of a real tenant runs on its own machine, and on a
// machine of two cores A's 64 clients in this process would take CPU
// from B's client and sinks, whose times are the measure, and from fanout.
func tenantsAChildCmd(o *options, base string, stdout *bytes.Buffer, stderr io.Writer) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("nice", "-n", strconv.Itoa(o.tenantsANice), self, "--tenants-a-child", base,
		"--token", o.token, "--batch", strconv.Itoa(o.batch), "--tenants-a-events", strconv.FormatInt(o.tenantsA, 10),
		"-c", strconv.Itoa(o.concurrency), "--size", strconv.Itoa(o.eventSize), "--client", o.client)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd, nil
}

// runTenantsAChild sends A's events to o.tenantsAChild and prints what was
// accepted (the child side of --tenants-a-nice).
func runTenantsAChild(ctx context.Context, o *options, stdout io.Writer) error {
	ad, err := newTenantDriver(o.tenantsAChild, "A", o, o.batch, o.tenantsA, 0, o.concurrency)
	if err != nil {
		return err
	}
	ad.run(ctx, time.Now().Add(24*time.Hour))
	return json.NewEncoder(stdout).Encode(tenantsAResult{Accepted: ad.sent.Load(), Errors: ad.errors,
		AckP99: ms(percentile(sortDurations(ad.acks), 99))})
}
