// Command fanout accepts events over HTTP, stores each one durably before it
// says yes, and delivers it to every destination URL, retrying each delivery
// on its own until it succeeds.
//
// This file is the whole command: flags and FANOUT_* settings become a
// config, the config one app, and the app runs until it is stopped. The
// app is assembled in internal/app, where the tests run it the same way;
// events.go and handlers.go say where the seed's durable functions and
// routes went.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"fanout/destination/transform"
	"fanout/internal/app"
)

// defaultMemoryLimit is fanout's soft memory limit unless GOMEMLIMIT is set.
const defaultMemoryLimit = 96 << 20

func main() {
	// Started again as a transformation worker, fanout runs programs for
	// its parent and nothing else (destination/transform).
	transform.WorkerMain()
	// Ingest allocates briskly and keeps little (a live heap of 10-30 MiB
	// under load): collecting four times less often than Go's default buys
	// throughput for a few tens of MiB, and a soft limit keeps those tens
	// from growing to a hundred when work piles up (docs/BENCHMARKS.md,
	// issue 12). GOGC and GOMEMLIMIT decide when they are set.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	if err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "fanout: %v\n", err)
		os.Exit(app.ExitCode(err))
	}
}

// run parses args and the environment (read through getenv) into a config,
// builds the app from it and serves until ctx ends or SIGINT/SIGTERM
// arrives, then shuts down in order: app.Main, as the tests run it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return app.Main(ctx, args, getenv, stdout, stderr)
}
