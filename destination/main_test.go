package destination_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any leaves a goroutine behind: a
// registry's store is closed by its test's cleanup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
