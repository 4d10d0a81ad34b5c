package dispatchsqlite

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestConfig_OnCommit: the hook hears of every group commit that succeeded,
// and of nothing else: its calls and operations add up to StoreStats.
func TestConfig_OnCommit(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var commits, ops int64
	var took []time.Duration
	s, err := Open(context.Background(), Config{Path: filepath.Join(t.TempDir(), "db"),
		OnCommit: func(n int, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			commits++
			ops += int64(n)
			took = append(took, d)
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for _, ids := range [][]string{{"a", "b"}, {"c"}, {"a"}} { // the last one fails: a exists
		_, _ = s.CallInsertMany(ctx, insertCalls(ids...))
	}
	st := s.StoreStats()
	mu.Lock()
	defer mu.Unlock()
	if commits != st.Commits || ops != st.Ops || commits != 2 {
		t.Fatalf("OnCommit heard %d commits of %d operations; StoreStats says %d of %d; want 2 (the failed insert is no commit)",
			commits, ops, st.Commits, st.Ops)
	}
	for _, d := range took {
		if d <= 0 || d > time.Minute {
			t.Errorf("a commit took %v", d)
		}
	}
}
