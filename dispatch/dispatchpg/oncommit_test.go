package dispatchpg

import (
	"context"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/pgtest"
)

// TestConfig_OnCommit: the hook hears of every group commit that succeeded,
// and of nothing else: its calls and operations add up to StoreStats.
func TestConfig_OnCommit(t *testing.T) {
	var mu sync.Mutex
	var commits, ops int64
	s := openTest(t, pgtest.URL(t, pgtest.Unique(t)), Config{Writers: 1, OnCommit: func(n int, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		commits++
		ops += int64(n)
		if d <= 0 || d > time.Minute {
			t.Errorf("a commit took %v", d)
		}
	}})
	ctx := context.Background()
	for _, id := range []string{"a", "b", "a"} { // the last one fails: a exists
		_, _ = s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall(id, "")}})
	}
	st := s.StoreStats()
	mu.Lock()
	defer mu.Unlock()
	if commits != st.Commits || ops != st.Ops || commits != 2 {
		t.Fatalf("OnCommit heard %d commits of %d operations; StoreStats says %d of %d; want 2 (the failed insert is no commit)",
			commits, ops, st.Commits, st.Ops)
	}
}
