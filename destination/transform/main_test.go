package transform

import (
	"context"
	"os"
	"testing"
)

// TestMain lets this test binary serve as a worker: the isolation tests
// start it again with WorkerEnv set.
func TestMain(m *testing.M) {
	WorkerMain()
	os.Exit(m.Run())
}

// Compile checks and compiles src in this process, as the tests of the
// rules of a run (not of its isolation) do.
func Compile(src string) (*Program, error) {
	e := NewEngine(Limits{})
	if err := e.Compile(context.Background(), src); err != nil {
		return nil, err
	}
	return e.Program("dst_test", src)
}
