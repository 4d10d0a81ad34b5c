// Command fanout-load measures fanout: it drives /v1/event or /v1/batch with
// concurrent keep-alive clients, runs its own destinations on loopback (a
// sink that records every delivery, and can be told to misbehave), and
// reports accepted events/s, ack latency, deliveries/s, ingest-to-delivery
// latency, missing and duplicate deliveries, and the server's peak RSS.
//
// With --baseline it first drives a trivial JSON-accepting server with the
// same load, in the same run, so that fanout's ingest rate can be read as a
// share of what this machine's HTTP stack manages at all. With
// --sink-baseline it drives its own sinks directly, as fanout does, and
// reports fanout's deliveries/s as a share of what they answer. --backlog N
// pauses a destination while N events arrive, then resumes it and measures
// the drain (backlog.go).
//
// The default client (--client raw) writes pre-built requests to keep-alive
// connections and reads the answers with a small parser of its own, so that
// the tool's own CPU per request, which shares the machine with what it
// measures, is as small as it can be; --client nethttp uses net/http's
// client instead. The tool reports its own CPU per request.
//
//	go build -o bin/fanout . && go run ./cmd/fanout-load --fanout bin/fanout --baseline --mode event -c 64 -d 10s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "baseline-server" {
		if err := serveBaseline(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "baseline-server:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fanout-load:", err)
		os.Exit(1)
	}
}

type options struct {
	url         string
	fanoutBin   string
	fanoutArgs  stringList
	token       string
	baseline    bool
	mode        string
	batch       int
	concurrency int
	duration    time.Duration
	events      int64
	rate        float64
	eventSize   int
	sinks       int
	sinkLatency time.Duration
	faults      faultSpec
	faulty      int
	drain       time.Duration
	jsonOut     bool
	progress    bool
	runs        int
	client      string
	sinkBase    bool
	sinkConns   int
	backlog     int64
	steady      int64
	cpuProfile  string
	keepData    bool

	brokers string

	tenants      bool
	tenantsA     int64
	tenantsBRate float64
	tenantsANice int
	// tenantsAChild, set in a child of this tool, is the base URL to send
	// A's events to (tenants.go).
	tenantsAChild string
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("fanout-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "", "base URL of a running fanout (its destinations must be this tool's sinks, see --sinks)")
	fs.StringVar(&o.fanoutBin, "fanout", "", "fanout binary to start, on loopback with a temporary data directory and this tool's sinks as destinations")
	fs.Var(&o.fanoutArgs, "fanout-arg", "extra argument for the started fanout (repeatable)")
	fs.StringVar(&o.token, "token", "", "API token to send as \"Authorization: Bearer\"; with --fanout, the started fanout requires it (--api-token)")
	fs.BoolVar(&o.baseline, "baseline", false, "first drive a trivial JSON-accepting server with the same load, and report fanout's rate as a ratio of it")
	fs.StringVar(&o.mode, "mode", "event", "event (POST /v1/event) or batch (POST /v1/batch)")
	fs.IntVar(&o.batch, "batch", 100, "events per /v1/batch request")
	fs.IntVar(&o.concurrency, "c", 64, "concurrent keep-alive clients")
	fs.DurationVar(&o.duration, "d", 10*time.Second, "how long to send")
	fs.Int64Var(&o.events, "n", 0, "stop after this many events (0: run for -d)")
	fs.Float64Var(&o.rate, "rate", 0, "send at most this many events per second in all (0: as fast as the server answers)")
	fs.IntVar(&o.eventSize, "size", 200, "approximate bytes per event")
	fs.IntVar(&o.sinks, "sinks", 2, "destination endpoints to run on loopback (0: none, ingest only)")
	fs.DurationVar(&o.sinkLatency, "sink-latency", 0, "time each sink takes to answer")
	fs.Var(&o.faults, "fault", "sink misbehaviour, as kind=fraction: 5xx=0.1, 429=0.05, slow=0.01, reset=0.01, 410=0.001 (repeatable)")
	fs.IntVar(&o.faulty, "faulty", -1, "apply --fault to the first N sink endpoints only (-1: all); with slow=1 on 1 of 2, one destination hangs beside a healthy one")
	fs.DurationVar(&o.drain, "drain", time.Minute, "after sending, how long to wait for every accepted event to reach every sink")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	fs.BoolVar(&o.progress, "progress", true, "print a progress line every second")
	fs.IntVar(&o.runs, "runs", 1, "repeat the whole measurement this many times and report the median of each figure (the machine is shared: quote medians)")
	fs.StringVar(&o.client, "client", clientRaw, "raw (pre-built requests on keep-alive connections, a minimal response reader: the cheapest per request) or nethttp (Go's net/http client, as the tool had before)")
	fs.BoolVar(&o.sinkBase, "sink-baseline", false, "in each run, also drive the sinks directly with fanout's request shape for -d, and report fanout's deliveries/s as a ratio of the sinks' requests/s")
	fs.IntVar(&o.sinkConns, "sink-c", 0, "connections of --sink-baseline (0: as many as fanout held open to the sinks in this invocation's first fanout run)")
	fs.Int64Var(&o.backlog, "backlog", 0, "the backlog scenario: pause the first destination, ingest this many events in batches (--batch, -c) as fast as accepted, resume it and measure the drain (needs --fanout and --sinks >= 1)")
	fs.Int64Var(&o.steady, "backlog-steady", 0, "events of the backlog scenario's steady-state phase, before the pause (0: a tenth of --backlog, at least 20,000)")
	fs.BoolVar(&o.tenants, "tenants", false, "the tenant-fairness scenario: B sends --tenants-b-rate events/s for -d alone, then beside A sending --tenants-a-events in batches to a destination answering in --sink-latency (2s); B's ingest->delivery p99 compared (tenants.go; needs --fanout)")
	fs.Int64Var(&o.tenantsA, "tenants-a-events", 200000, "events tenant A sends in the --tenants scenario")
	fs.IntVar(&o.tenantsANice, "tenants-a-nice", 0, "in the --tenants scenario, send A's events from a process of their own run at this nice (1-19), standing in for a producer on another machine, so that A's client does not take the CPU from B's client and sinks or from fanout (0: A's client is part of this process)")
	fs.StringVar(&o.tenantsAChild, "tenants-a-child", "", "(internal) send A's events to this base URL and print what was accepted as JSON")
	fs.Float64Var(&o.tenantsBRate, "tenants-b-rate", 50, "single events per second tenant B sends in the --tenants scenario")
	fs.StringVar(&o.brokers, "brokers", "", "the broker scenario: for each of these kinds (comma-separated: nats, kafka, amqp, redis, redis-nodedup), fanout's deliveries/s into the broker (one destination of the kind, -n events, default 20,000) against the broker driven directly by the tool at -c publishers, medians of --runs (brokers.go; needs --fanout)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the load tool's own CPU profile to this file")
	fs.BoolVar(&o.keepData, "keep-data", false, "keep the started fanout's data directory (its path is printed), to look into the store afterwards")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.client != clientRaw && o.client != clientNetHTTP {
		return errors.New("--client must be raw or nethttp")
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if o.backlog > 0 {
		return runBacklog(ctx, &o, stdout, stderr)
	}
	if o.brokers != "" {
		return runBrokers(ctx, &o, stdout, stderr)
	}
	if o.tenantsAChild != "" {
		return runTenantsAChild(ctx, &o, stdout)
	}
	if o.tenants {
		return runTenants(ctx, &o, stdout, stderr)
	}
	if o.mode != "event" && o.mode != "batch" {
		return fmt.Errorf("--mode must be event or batch")
	}
	if (o.url == "") == (o.fanoutBin == "") {
		return errors.New("give exactly one of --url and --fanout")
	}
	if o.batch < 1 || o.concurrency < 1 {
		return errors.New("--batch and -c must be positive")
	}

	if o.runs < 1 {
		o.runs = 1
	}
	var all [][]*report // per run: [baseline,] fanout
	for i := range o.runs {
		if o.runs > 1 {
			fmt.Fprintf(stderr, "run %d of %d\n", i+1, o.runs)
		}
		reports, err := measure(ctx, &o, i, stderr)
		if err != nil {
			return err
		}
		all = append(all, reports)
		if o.runs > 1 && !o.jsonOut {
			for _, r := range reports {
				fmt.Fprintf(stdout, "run %d %-8s %8.0f events/s  ack p99 %6.2f ms  %7.0f deliveries/s  delivery p50 %7.1f ms p99 %7.1f ms  cpu %5.1f µs/event  load %5.1f µs/request\n",
					i+1, r.Target, r.EventsPerSec, r.AckP99, r.DeliveriesPerSec, r.DeliveryP50, r.DeliveryP99, r.CPUPerEventUS, r.LoadCPUPerRequestUS)
				if len(r.PerDestination) > 1 {
					for d, ds := range r.PerDestination {
						fmt.Fprintf(stdout, "      dest %d: %7.0f deliveries/s  p50 %7.1f ms  p99 %7.1f ms\n", d, ds.PerSec, ds.P50, ds.P99)
					}
				}
			}
		}
	}
	reports := medianReports(all)
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reports)
	}
	if o.runs > 1 {
		fmt.Fprintf(stdout, "medians of %d runs:\n", o.runs)
	}
	for _, r := range reports {
		r.print(stdout)
	}
	return nil
}

// measure runs the baseline (if asked), fanout, and the sink baseline (if
// asked) once. The sink baseline runs after fanout in the first run, whose
// connections it copies unless --sink-c says how many, and before it in every
// second run, so that a drift of the machine's speed does not favour one.
func measure(ctx context.Context, o *options, run int, stderr io.Writer) ([]*report, error) {
	var reports []*report
	if o.baseline {
		r, err := runBaseline(ctx, o, stderr)
		if err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		reports = append(reports, r)
	}
	var sinkReport *report
	sinkBaseline := func() error {
		if !o.sinkBase || o.sinks < 1 {
			return nil
		}
		r, err := runSinkBaseline(ctx, o, o.sinkConns, stderr)
		if err != nil {
			return fmt.Errorf("sink baseline: %w", err)
		}
		sinkReport = r
		return nil
	}
	sinkFirst := run%2 == 1 && o.sinkConns > 0
	if sinkFirst {
		if err := sinkBaseline(); err != nil {
			return nil, err
		}
	}
	r, err := runFanout(ctx, o, stderr)
	if err != nil {
		return nil, err
	}
	reports = append(reports, r)
	if o.baseline {
		r.IngestRatio = r.EventsPerSec / reports[0].EventsPerSec
	}
	if o.sinkBase && o.sinks > 0 && o.sinkConns == 0 {
		o.sinkConns = int(max(r.SinkPeakConns, 1))
		fmt.Fprintf(stderr, "sink baseline: %d connections, as many as fanout held open to the sinks\n", o.sinkConns)
	}
	if !sinkFirst {
		if err := sinkBaseline(); err != nil {
			return nil, err
		}
	}
	if sinkReport != nil {
		reports = append(reports, sinkReport)
		if sinkReport.DeliveriesPerSec > 0 {
			r.DeliveryRatio = r.DeliveriesPerSec / sinkReport.DeliveriesPerSec
		}
	}
	return reports, nil
}
