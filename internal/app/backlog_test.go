package app

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/service"
)

// countingStore counts and slows CallBacklog.
type countingStore struct {
	service.Store
	counts atomic.Int64
}

func (s *countingStore) CallBacklog(ctx context.Context) ([]dispatch.KeyCount, error) {
	s.counts.Add(1)
	time.Sleep(50 * time.Millisecond)
	return []dispatch.KeyCount{{Key: "dst_a", N: 7}}, nil
}

// TestBacklogCache checks that concurrent scrapes share one count, that a
// fresh count is served from memory, and that an old one is renewed.
func TestBacklogCache(t *testing.T) {
	t.Parallel()
	st := &countingStore{}
	c := service.NewBacklogCache(st)
	c.MaxAge = time.Hour
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts, at, err := c.Get(time.Now())
			if err != nil || at.IsZero() || counts["dst_a"] != 7 {
				t.Errorf("first get = %v, %v, %v: want the count, waited for", counts, at, err)
			}
		}()
	}
	wg.Wait()
	c.Get(time.Now())
	if n := st.counts.Load(); n != 1 {
		t.Fatalf("21 gets counted the backlog %d times, want once", n)
	}
	c.MaxAge = 0
	c.Get(time.Now()) // serves the old count, starts a new one
	eventually(t, "a second count", 5*time.Second, func() bool { return st.counts.Load() == 2 })
}
