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
	"testing"

	"fanout/internal/pgtest"
	"fanout/internal/proctest"
)

// fanoutBin is the binary under test, built by TestMain.
var fanoutBin string

func TestMain(m *testing.M) { proctest.Main(m, "replicatest", &fanoutBin, pgtest.Shutdown) }
