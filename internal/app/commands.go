package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

// command runs the subcommand args name, if they name one: version
// (what this binary is) and healthcheck (whether a fanout answers ready, for
// a container image without a shell or curl). ok is false when args name
// none and fanout should serve.
func command(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (ok bool, err error) {
	if len(args) == 0 {
		return false, nil
	}
	switch args[0] {
	case "version", "--version", "-version":
		if len(args) > 1 {
			return true, &usageError{fmt.Errorf("version takes no arguments")}
		}
		writeVersion(stdout)
		return true, nil
	case "healthcheck":
		return true, healthcheck(ctx, args[1:], getenv, stdout, stderr)
	}
	return false, nil
}

// writeVersion prints the version, the commit, Go's version and the store
// drivers built in, one per line.
func writeVersion(w io.Writer) {
	fmt.Fprintln(w, "fanout", version)
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	commit, modified := "unknown", ""
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = " (modified)"
			}
		}
	}
	fmt.Fprintf(w, "commit: %s%s\n", commit, modified)
	fmt.Fprintf(w, "go: %s\n", info.GoVersion)
	drivers := map[string]string{"modernc.org/sqlite": "sqlite", "github.com/jackc/pgx/v5": "postgresql"}
	var stores []string
	for _, d := range info.Deps {
		if name, ok := drivers[d.Path]; ok {
			stores = append(stores, fmt.Sprintf("%s (%s %s)", name, d.Path, d.Version))
		}
	}
	if len(stores) == 0 {
		stores = []string{"sqlite", "postgresql"} // a test binary records no dependencies
	}
	fmt.Fprintf(w, "stores: %s\n", strings.Join(stores, ", "))
}

// healthcheck asks the fanout at --addr (FANOUT_ADDR, as the server takes
// it) whether it is ready, and fails unless /readyz answers 200 in time.
func healthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fanout healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr(getenv, "FANOUT_ADDR", "localhost:8000"), "the address fanout listens on (as --addr; env FANOUT_ADDR)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &usageError{err}
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(*addr, "http://"))
	if err != nil {
		return &usageError{fmt.Errorf("--addr %q: %v", *addr, err)}
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1" // listening on every address: ask on loopback
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(stdout, "ready: %s\n", strings.TrimSpace(string(body)))
	return nil
}

// envOr is getenv(name), or def when it is empty.
func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}
