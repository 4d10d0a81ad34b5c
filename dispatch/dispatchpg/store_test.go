package dispatchpg_test

import (
	"context"
	"log/slog"
	"testing"

	"go.uber.org/goleak"

	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/dispatch/dispatchtest"
	"fanout/internal/pgtest"
)

// TestMain fails the tests if they leave goroutines behind: a store that is
// closed must stop its listener and its pool. The check runs once the test
// cluster is stopped (pgtest.Runner), since the goroutine that waits for the
// server process ends only then.
func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Runner(m)) }

// opener opens the store of one key: a schema of its own in the test
// cluster, fresh for each run of the calling test.
func opener(run string) dispatchtest.OpenFunc {
	return func(t testing.TB, key string) dispatch.Store {
		t.Helper()
		s, err := dispatchpg.Open(context.Background(), dispatchpg.Config{URL: pgtest.URL(t, run+"/"+key), Logger: quiet(t)})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	dispatchtest.Exercise(t, opener(pgtest.Unique(t)))
}

// quiet logs warnings and errors to the test's output.
func quiet(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}
