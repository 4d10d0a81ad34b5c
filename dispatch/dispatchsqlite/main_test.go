package dispatchsqlite_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the tests if they leave goroutines behind: a store that is
// closed must stop its writer and everything else it started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
