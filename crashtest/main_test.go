// Package crashtest runs the real fanout binary as a child process and breaks
// things around it: it SIGKILLs it under load and restarts it on the same
// data, points it at destinations that refuse, hang, throttle, fail, redirect
// or answer forever, and starts it on a data directory it cannot use. Every
// test checks what the user was promised (README.md, "Deliveries" and
// "Running it"): a 2xx means durable, every accepted event reaches every
// destination at least once with its exact bytes, a batch is all or nothing,
// and duplicates come only from crashes.
//
// The package has test files only. TestMain builds the binary once; the
// tests then start it on 127.0.0.1:0 and talk to it, and to their own
// destinations, over loopback only.
//
//	go test -race -count=1 ./crashtest                       # about a minute
//	go test -race -count=1 -short ./crashtest                # fewer kills
//	FANOUT_SOAK=1 go test -race -count=1 -run TestSoak -timeout 40m ./crashtest
//	FANOUT_TEST_LOGS=1 go test ...                            # print fanout's logs
package crashtest

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fanoutBin is the binary under test, built by TestMain.
var fanoutBin string

// guarded is true when the binary has an SSRF guard (--allow-network), which
// refuses loopback destinations unless allowed: the tests' destinations are
// all on loopback. See fanoutArgs.
var guarded bool

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "fanout-crashtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "crashtest:", err)
		os.Exit(1)
	}
	fanoutBin = filepath.Join(dir, "fanout")
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	// The binary is built without -race: the tests check fanout's
	// behaviour, the race detector runs on the test code (and on fanout's
	// own packages in their unit tests), and an instrumented child would
	// only make every crash window slower.
	build := exec.Command(goCmd, "build", "-o", fanoutBin, "fanout")
	build.Dir = ".." // the module root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "crashtest: go build fanout: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	help, err := exec.Command(fanoutBin, "--help").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "crashtest: fanout --help: %v\n%s", err, help)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	guarded = strings.Contains(string(help), "--allow-network")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
