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
	"testing"

	"fanout/internal/proctest"
)

// fanoutBin is the binary under test, built by TestMain.
var fanoutBin string

func TestMain(m *testing.M) { proctest.Main(m, "crashtest", &fanoutBin, nil) }
