package dispatch

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the tests if they leave goroutines behind: a runtime that
// stops must stop everything it started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
