// Package replicatest runs several fanout replicas, the real binary, on one
// PostgreSQL database and kills one of them under load: every event that a
// replica acknowledged must reach every destination, duplicates must stay
// within what the dead replica had in flight, and no call may be left
// behind.
//
// The package has test files only. TestMain builds the binary once; the
// database is a throwaway cluster (internal/pgtest) or
// FANOUT_TEST_DATABASE_URL; without either the tests skip.
//
//	go test -race -count=1 ./replicatest            # about a minute
//	FANOUT_TEST_LOGS=1 go test -count=1 ./replicatest   # print the replicas' logs
package replicatest

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"fanout/internal/pgtest"
)

// fanoutBin is the binary under test, built by TestMain.
var fanoutBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "fanout-replicatest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "replicatest:", err)
		os.Exit(1)
	}
	fanoutBin = filepath.Join(dir, "fanout")
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	// Without -race: the test checks fanout's behaviour across processes;
	// the race detector runs on the test code and on fanout's packages in
	// their own tests.
	build := exec.Command(goCmd, "build", "-o", fanoutBin, "fanout")
	build.Dir = ".." // the module root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "replicatest: go build fanout: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if err := pgtest.Shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "replicatest:", err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
