package service

import (
	"context"
	"sync"
	"time"

	"fanout/dispatch"
)

// backlogCache holds the last count of pending deliveries by destination.
// Counting reads the whole index of pending calls, in time proportional to
// the backlog (docs/BENCHMARKS.md, CallBacklog), so it runs at most every
// maxAge, in the background, one at a time, and a scrape serves the last
// count with its age. Only the first
// scrape waits for a count, and not longer than firstWait.
type backlogCache struct {
	store     dispatch.Store
	MaxAge    time.Duration
	firstWait time.Duration

	mu      sync.Mutex
	counts  map[string]int64
	at      time.Time     // when counts were read; zero before the first count
	err     error         // the last count's error
	running chan struct{} // closed when the count under way ends; nil if none
}

const backlogMaxAge = 10 * time.Second

func NewBacklogCache(store dispatch.Store) *backlogCache {
	return &backlogCache{store: store, MaxAge: backlogMaxAge, firstWait: 2 * time.Second}
}

// Get returns the last counts, when they were read, and the last count's
// error, starting a new count if they are older than maxAge.
func (c *backlogCache) Get(now time.Time) (map[string]int64, time.Time, error) {
	c.mu.Lock()
	if c.running == nil && now.Sub(c.at) >= c.MaxAge {
		c.running = make(chan struct{})
		go c.refresh(c.running)
	}
	running, first := c.running, c.at.IsZero()
	c.mu.Unlock()
	if first && running != nil {
		select {
		case <-running:
		case <-time.After(c.firstWait):
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts, c.at, c.err
}

func (c *backlogCache) refresh(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	backlog, err := c.store.CallBacklog(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	if err == nil {
		c.counts = make(map[string]int64, len(backlog))
		for _, k := range backlog {
			c.counts[k.Key] = k.N
		}
		c.at = time.Now()
	}
	c.running = nil
	close(done)
}
