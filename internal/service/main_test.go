package service

import (
	"os"
	"testing"

	"fanout/destination/transform"
)

// TestMain lets this test binary serve as a transformation worker, for the
// tests and benchmarks that run transformations as fanout does.
func TestMain(m *testing.M) {
	transform.WorkerMain()
	os.Exit(m.Run())
}
