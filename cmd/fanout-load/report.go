package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync/atomic"
	"time"
)

// destStats is what one sink endpoint received.
type destStats struct {
	Deliveries int64   `json:"deliveries"`
	PerSec     float64 `json:"deliveries_per_sec"`
	P50        float64 `json:"delivery_p50_ms"`
	P99        float64 `json:"delivery_p99_ms"`
	Faulty     bool    `json:"faulty,omitempty"`
}

// report is what one run measured. Latencies are in milliseconds.
type report struct {
	Target      string  `json:"target"`
	Client      string  `json:"client"`
	Mode        string  `json:"mode"`
	Batch       int     `json:"batch,omitempty"`
	Concurrency int     `json:"concurrency"`
	SendSeconds float64 `json:"send_seconds"`

	Requests       int64          `json:"requests"`
	Accepted       int64          `json:"accepted_events"`
	EventsPerSec   float64        `json:"accepted_events_per_sec"`
	RequestsPerSec float64        `json:"requests_per_sec"`
	AckP50         float64        `json:"ack_p50_ms"`
	AckP99         float64        `json:"ack_p99_ms"`
	Errors         map[string]int `json:"errors,omitempty"`

	Sinks            int              `json:"sinks"`
	Deliveries       int64            `json:"deliveries,omitempty"`
	DeliveriesPerSec float64          `json:"deliveries_per_sec,omitempty"`
	DeliveryP50      float64          `json:"delivery_p50_ms,omitempty"`
	DeliveryP99      float64          `json:"delivery_p99_ms,omitempty"`
	DeliveryMax      float64          `json:"delivery_max_ms,omitempty"`
	PerDestination   []destStats      `json:"per_destination,omitempty"`
	Missing          []int            `json:"missing_per_destination,omitempty"`
	Duplicates       []int            `json:"duplicates_per_destination,omitempty"`
	Drained          bool             `json:"drained"`
	Faults           map[string]int64 `json:"faults_injected,omitempty"`

	Runs          int     `json:"runs,omitempty"`
	PeakRSSMiB    float64 `json:"peak_rss_mib,omitempty"`
	ServerCPU     float64 `json:"server_cpu_cores,omitempty"`
	CPUPerEventUS float64 `json:"server_cpu_us_per_event,omitempty"`
	// With sinks: fanout's CPU from the first send to the last delivery,
	// per delivery (ingest included).
	CPUPerDeliveryUS float64 `json:"server_cpu_us_per_delivery,omitempty"`
	IngestRatio      float64 `json:"ingest_ratio_to_baseline,omitempty"`

	// The load tool's own CPU (user and system, all its goroutines: the
	// clients, and the sinks when there are any) while sending.
	LoadCPU             float64 `json:"load_cpu_cores,omitempty"`
	LoadCPUPerRequestUS float64 `json:"load_cpu_us_per_request,omitempty"`

	// With sinks: the load tool's CPU from the first send to the last
	// delivery, per delivery (the sinks' share of it is most of it).
	LoadCPUPerDeliveryUS float64 `json:"load_cpu_us_per_delivery,omitempty"`

	// What the sinks saw of fanout's connections while it sent and
	// drained: the most open at once, and the most requests in the sinks'
	// handler at once.
	SinkPeakConns    int64 `json:"sink_peak_connections,omitempty"`
	SinkPeakInFlight int64 `json:"sink_peak_in_flight,omitempty"`

	// With --sink-baseline: fanout's deliveries/s over what the sinks
	// answered, driven directly in the same run.
	DeliveryRatio float64 `json:"delivery_ratio_to_sink_baseline,omitempty"`

	Disk *diskReport `json:"disk,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// drive sends the load to base, waits for the sinks to drain, and reports.
func drive(ctx context.Context, target, base string, o *options, sk *sink, stderr io.Writer, server *proc) (*report, error) {
	d, err := newIngestDriver(base, o)
	if err != nil {
		return nil, err
	}
	var cpu0 float64
	if server != nil {
		cpu0 = server.cpuSeconds()
	}
	if sk != nil {
		sk.resetPeaks()
	}
	selfCPU0 := selfCPU()
	start := time.Now()
	deadline := start.Add(o.duration)
	if o.events > 0 {
		deadline = start.Add(24 * time.Hour)
	}
	var delivered atomic.Int64 // stays 0 without sinks
	deliveredCount := &delivered
	if sk != nil {
		deliveredCount = &sk.delivered
	}
	stopProgress := progress(stderr, o.progress, target, &d.sent, deliveredCount)
	d.run(ctx, deadline)
	sendTime := time.Since(start)
	loadCPU := selfCPU() - selfCPU0
	var cpu float64
	if server != nil {
		cpu = server.cpuSeconds() - cpu0
	}

	r := &report{Target: target, Client: o.client, Mode: o.mode, Concurrency: o.concurrency, SendSeconds: sendTime.Seconds(),
		Requests: d.reqs.Load(), Accepted: d.sent.Load(), Errors: d.errors}
	r.LoadCPU = loadCPU.Seconds() / sendTime.Seconds()
	if r.Requests > 0 {
		r.LoadCPUPerRequestUS = float64(loadCPU.Microseconds()) / float64(r.Requests)
	}
	if o.mode == "batch" {
		r.Batch = o.batch
	}
	r.EventsPerSec = float64(r.Accepted) / sendTime.Seconds()
	if cpu > 0 && r.Accepted > 0 {
		r.ServerCPU = cpu / sendTime.Seconds()
		r.CPUPerEventUS = cpu / float64(r.Accepted) * 1e6
	}
	r.RequestsPerSec = float64(r.Requests) / sendTime.Seconds()
	acks := sortDurations(d.acks)
	r.AckP50, r.AckP99 = ms(percentile(acks, 50)), ms(percentile(acks, 99))

	if sk != nil {
		r.Sinks = len(sk.endpoints)
		drainBy := time.Now().Add(o.drain)
		for ctx.Err() == nil && time.Now().Before(drainBy) {
			done := true
			for i, n := range sk.unique() {
				if int64(n) < r.Accepted && !sk.lost(sk.endpoints[i]) {
					done = false
				}
			}
			if done {
				r.Drained = true
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		stopProgress()
		if r.Deliveries = sk.delivered.Load(); r.Deliveries > 0 {
			r.LoadCPUPerDeliveryUS = float64((selfCPU() - selfCPU0).Microseconds()) / float64(r.Deliveries)
			if server != nil {
				r.CPUPerDeliveryUS = (server.cpuSeconds() - cpu0) / float64(r.Deliveries) * 1e6
			}
		}
		r.SinkPeakConns, r.SinkPeakInFlight = sk.peakConns.Load(), sk.peakInFlight.Load()
		ids := d.acceptedIDs()
		var lat []time.Duration
		for _, e := range sk.endpoints {
			e.mu.Lock()
			el := sortDurations(append([]time.Duration(nil), e.latencies...))
			var delivered int64
			for _, n := range e.seen {
				delivered += int64(n)
			}
			r.PerDestination = append(r.PerDestination, destStats{Deliveries: delivered, Faulty: e.faulty,
				PerSec: float64(delivered) / max(e.last.Sub(start).Seconds(), 1e-9), P50: ms(percentile(el, 50)), P99: ms(percentile(el, 99))})
			missing, dups := 0, 0
			for _, id := range ids {
				if n := e.seen[id]; n == 0 {
					missing++
				} else if n > 1 {
					dups += int(n - 1)
				}
			}
			lat = append(lat, e.latencies...)
			e.mu.Unlock()
			r.Missing = append(r.Missing, missing)
			r.Duplicates = append(r.Duplicates, dups)
		}
		sortDurations(lat)
		r.Deliveries = sk.delivered.Load()
		if last := sk.lastNS.Load(); last > 0 {
			r.DeliveriesPerSec = float64(r.Deliveries) / time.Duration(last-start.UnixNano()).Seconds()
		}
		r.DeliveryP50, r.DeliveryP99 = ms(percentile(lat, 50)), ms(percentile(lat, 99))
		if len(lat) > 0 {
			r.DeliveryMax = ms(lat[len(lat)-1])
		}
		r.Faults = map[string]int64{}
		sk.faulted.Range(func(k, v any) bool {
			r.Faults[k.(string)] = v.(interface{ Load() int64 }).Load()
			return true
		})
	} else {
		stopProgress()
	}
	return r, nil
}

func (r *report) print(w io.Writer) {
	if r.Target == "sink-baseline" {
		r.printSinkBaseline(w)
		return
	}
	fmt.Fprintf(w, "== %s: %s", r.Target, r.Mode)
	if r.Batch > 0 {
		fmt.Fprintf(w, " x%d", r.Batch)
	}
	fmt.Fprintf(w, ", %d clients, %.1fs\n", r.Concurrency, r.SendSeconds)
	fmt.Fprintf(w, "  accepted   %d events, %.0f events/s, %.0f requests/s\n", r.Accepted, r.EventsPerSec, r.RequestsPerSec)
	fmt.Fprintf(w, "  ack        p50 %.2f ms, p99 %.2f ms\n", r.AckP50, r.AckP99)
	if r.ServerCPU > 0 {
		fmt.Fprintf(w, "  server CPU %.2f cores while sending, %.1f µs per accepted event", r.ServerCPU, r.CPUPerEventUS)
		if r.CPUPerDeliveryUS > 0 {
			fmt.Fprintf(w, "; %.1f µs per delivery, first send to last delivery", r.CPUPerDeliveryUS)
		}
		fmt.Fprintln(w)
	}
	if r.IngestRatio > 0 {
		fmt.Fprintf(w, "  vs baseline %.0f%% of the trivial server's events/s\n", r.IngestRatio*100)
	}
	if r.LoadCPU > 0 {
		what := "client"
		if r.Sinks > 0 {
			what = "client and sinks"
		}
		fmt.Fprintf(w, "  load tool  %.2f cores while sending (%s), %.1f µs CPU per request (%s client)", r.LoadCPU, what, r.LoadCPUPerRequestUS, r.Client)
		if r.LoadCPUPerDeliveryUS > 0 {
			fmt.Fprintf(w, "; %.1f µs per delivery, first send to last delivery", r.LoadCPUPerDeliveryUS)
		}
		fmt.Fprintln(w)
	}
	r.printErrors(w)
	if r.Sinks > 0 {
		fmt.Fprintf(w, "  delivered  %d to %d destinations, %.0f deliveries/s, drained=%v\n", r.Deliveries, r.Sinks, r.DeliveriesPerSec, r.Drained)
		fmt.Fprintf(w, "  latency    ingest->delivery p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", r.DeliveryP50, r.DeliveryP99, r.DeliveryMax)
		fmt.Fprintf(w, "  missing    %v per destination, duplicates %v\n", r.Missing, r.Duplicates)
		fmt.Fprintf(w, "  sinks saw  at most %d connections, %d requests in their handler at once\n", r.SinkPeakConns, r.SinkPeakInFlight)
		if r.DeliveryRatio > 0 {
			fmt.Fprintf(w, "  vs sinks   %.0f%% of the requests/s the sinks answer when driven directly (--sink-baseline)\n", r.DeliveryRatio*100)
		}
		if len(r.PerDestination) > 1 {
			for i, d := range r.PerDestination {
				faulty := ""
				if d.Faulty {
					faulty = " (faulty)"
				}
				fmt.Fprintf(w, "  dest %d%s  %d deliveries, %.0f/s, ingest->delivery p50 %.1f ms, p99 %.1f ms\n", i, faulty, d.Deliveries, d.PerSec, d.P50, d.P99)
			}
		}
		if len(r.Faults) > 0 {
			fmt.Fprintf(w, "  faults     %v\n", r.Faults)
		}
	}
	if r.PeakRSSMiB > 0 {
		fmt.Fprintf(w, "  peak RSS   %.0f MiB\n", r.PeakRSSMiB)
	}
	if r.Disk != nil {
		r.Disk.print(w)
	}
}

func (r *report) printErrors(w io.Writer) {
	if len(r.Errors) == 0 {
		return
	}
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "  errors    ")
	for _, k := range keys {
		fmt.Fprintf(w, " %s:%d", k, r.Errors[k])
	}
	fmt.Fprintln(w)
}

func (r *report) printSinkBaseline(w io.Writer) {
	fmt.Fprintf(w, "== sink-baseline: %d sink endpoints driven directly with fanout's requests, %d connections, %.1fs\n",
		r.Sinks, r.Concurrency, r.SendSeconds)
	fmt.Fprintf(w, "  answered   %d deliveries, %.0f/s (", r.Deliveries, r.DeliveriesPerSec)
	for i, d := range r.PerDestination {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "dest %d %.0f/s", i, d.PerSec)
	}
	fmt.Fprintf(w, "); p50 %.2f ms, p99 %.2f ms\n", r.AckP50, r.AckP99)
	fmt.Fprintf(w, "  load tool  %.2f cores (client and sinks), %.1f µs CPU per delivery (raw client)\n", r.LoadCPU, r.LoadCPUPerRequestUS)
	r.printErrors(w)
}

// medianReports folds the reports of several runs into one per target, each
// figure the median of its runs. Counts (missing, duplicates, errors) are
// the worst run's, so that a loss in any run shows.
func medianReports(all [][]*report) []*report {
	if len(all) == 1 {
		return all[0]
	}
	out := make([]*report, len(all[0]))
	for i := range all[0] {
		runs := make([]*report, len(all))
		for j := range all {
			runs[j] = all[j][i]
		}
		m := *runs[len(runs)-1]
		med := func(f func(*report) float64) float64 {
			v := make([]float64, len(runs))
			for j, r := range runs {
				v[j] = f(r)
			}
			sort.Float64s(v)
			if len(v)%2 == 1 {
				return v[len(v)/2]
			}
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		m.SendSeconds = med(func(r *report) float64 { return r.SendSeconds })
		m.EventsPerSec = med(func(r *report) float64 { return r.EventsPerSec })
		m.RequestsPerSec = med(func(r *report) float64 { return r.RequestsPerSec })
		m.AckP50 = med(func(r *report) float64 { return r.AckP50 })
		m.AckP99 = med(func(r *report) float64 { return r.AckP99 })
		m.DeliveriesPerSec = med(func(r *report) float64 { return r.DeliveriesPerSec })
		m.DeliveryP50 = med(func(r *report) float64 { return r.DeliveryP50 })
		m.DeliveryP99 = med(func(r *report) float64 { return r.DeliveryP99 })
		m.DeliveryMax = med(func(r *report) float64 { return r.DeliveryMax })
		m.PeakRSSMiB = med(func(r *report) float64 { return r.PeakRSSMiB })
		m.ServerCPU = med(func(r *report) float64 { return r.ServerCPU })
		m.CPUPerEventUS = med(func(r *report) float64 { return r.CPUPerEventUS })
		m.CPUPerDeliveryUS = med(func(r *report) float64 { return r.CPUPerDeliveryUS })
		m.IngestRatio = med(func(r *report) float64 { return r.IngestRatio })
		m.LoadCPU = med(func(r *report) float64 { return r.LoadCPU })
		m.LoadCPUPerRequestUS = med(func(r *report) float64 { return r.LoadCPUPerRequestUS })
		m.LoadCPUPerDeliveryUS = med(func(r *report) float64 { return r.LoadCPUPerDeliveryUS })
		m.SinkPeakConns = int64(med(func(r *report) float64 { return float64(r.SinkPeakConns) }))
		m.SinkPeakInFlight = int64(med(func(r *report) float64 { return float64(r.SinkPeakInFlight) }))
		m.DeliveryRatio = med(func(r *report) float64 { return r.DeliveryRatio })
		m.Requests = int64(med(func(r *report) float64 { return float64(r.Requests) }))
		m.Disk = medianDisk(runs)
		m.Accepted = int64(med(func(r *report) float64 { return float64(r.Accepted) }))
		m.Deliveries = int64(med(func(r *report) float64 { return float64(r.Deliveries) }))
		m.Drained = true
		for _, r := range runs {
			m.Drained = m.Drained && r.Drained
			for d := range r.Missing {
				if d < len(m.Missing) {
					m.Missing[d] = max(m.Missing[d], r.Missing[d])
					m.Duplicates[d] = max(m.Duplicates[d], r.Duplicates[d])
				}
			}
		}
		m.PerDestination = append([]destStats(nil), m.PerDestination...)
		for d := range m.PerDestination {
			at := func(f func(destStats) float64) func(*report) float64 {
				return func(r *report) float64 {
					if d < len(r.PerDestination) {
						return f(r.PerDestination[d])
					}
					return 0
				}
			}
			m.PerDestination[d].PerSec = med(at(func(s destStats) float64 { return s.PerSec }))
			m.PerDestination[d].P50 = med(at(func(s destStats) float64 { return s.P50 }))
			m.PerDestination[d].P99 = med(at(func(s destStats) float64 { return s.P99 }))
			m.PerDestination[d].Deliveries = int64(med(at(func(s destStats) float64 { return float64(s.Deliveries) })))
		}
		m.Runs = len(runs)
		out[i] = &m
	}
	return out
}
