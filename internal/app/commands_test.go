package app

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// TestMain_VersionCommand: fanout version says the version, the commit,
// Go's version and the stores built in.
func TestMain_VersionCommand(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out bytes.Buffer
		if err := Main(context.Background(), args, func(string) string { return "" }, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, want := range []string{"fanout " + version + "\n", "commit: ", "go: " + runtime.Version(), "stores: ", "sqlite", "postgresql"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%v printed %q, want it to contain %q", args, out.String(), want)
			}
		}
	}
	if err := Main(context.Background(), []string{"version", "extra"}, func(string) string { return "" }, io.Discard, io.Discard); ExitCode(err) != 2 {
		t.Errorf("version with an argument: %v, want a usage error", err)
	}
}

// TestMain_Healthcheck: fanout healthcheck exits 0 when the fanout at
// --addr (or FANOUT_ADDR) answers ready, and fails when it answers not
// ready or does not answer; an address that listens on every interface is
// asked on loopback.
func TestMain_Healthcheck(t *testing.T) {
	t.Parallel()
	base, stop := startRunArgs(t, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir()}, nil)
	defer func() { _ = stop() }()
	addr := strings.TrimPrefix(base, "http://")
	_, port, _ := net.SplitHostPort(addr)
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"status":"not ready"}`, http.StatusServiceUnavailable)
	}))
	defer notReady.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name string
		args []string
		env  map[string]string
		ok   bool
	}{
		{"Ready", []string{"--addr", addr}, nil, true},
		{"FromEnvironment", nil, map[string]string{"FANOUT_ADDR": addr}, true},
		{"EveryInterface", []string{"--addr", ":" + port}, nil, true},
		{"NotReady", []string{"--addr", strings.TrimPrefix(notReady.URL, "http://")}, nil, false},
		{"NothingListens", []string{"--addr", closedAddr}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := Main(context.Background(), append([]string{"healthcheck"}, tc.args...), func(k string) string { return tc.env[k] },
				&out, io.Discard)
			if (err == nil) != tc.ok {
				t.Fatalf("healthcheck %v: %v (%s), want ok: %v", tc.args, err, out.String(), tc.ok)
			}
			if err != nil && ExitCode(err) != 1 {
				t.Fatalf("healthcheck %v: exit code %d, want 1", tc.args, ExitCode(err))
			}
		})
	}
}
