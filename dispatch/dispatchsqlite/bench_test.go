package dispatchsqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
)

var benchInput = []byte(`{"user_id":"42","type":"load.test","pad":"` + strings.Repeat("x", 150) + `"}`)

func benchStore(b *testing.B) *dispatchsqlite.Store {
	b.Helper()
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(b.TempDir(), "fanout.db")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

var benchSeq atomic.Int64

func insertMany(s *dispatchsqlite.Store, calls []*dispatch.Call) error {
	_, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls})
	return err
}

func benchCalls(n int, leased bool) []*dispatch.Call {
	now := time.Now()
	calls := make([]*dispatch.Call, n)
	for i := range calls {
		c := &dispatch.Call{ID: fmt.Sprintf("%020d", benchSeq.Add(1)), Function: "handleEvent", Input: benchInput,
			RunAfter: now, CreatedAt: now}
		if leased {
			c.State, c.Attempt, c.LeaseOwner, c.LeaseExpires = dispatch.StateRunning, 1, "bench", now.Add(time.Minute)
		}
		calls[i] = c
	}
	return calls
}

// BenchmarkCallInsertMany stores batches of calls, one commit per batch:
// what /v1/batch costs the store. Reported per call.
func BenchmarkCallInsertMany(b *testing.B) {
	for _, size := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s := benchStore(b)
			b.ResetTimer()
			for i := 0; i < b.N; i += size {
				if err := insertMany(s, benchCalls(size, false)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGroupCommit stores one call per operation from 64 goroutines:
// what concurrent /v1/event requests cost the store, group commit included.
func BenchmarkGroupCommit(b *testing.B) {
	s := benchStore(b)
	b.SetParallelism(32) // x GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := insertMany(s, benchCalls(1, true)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	st := s.StoreStats()
	b.ReportMetric(float64(st.Ops)/float64(st.Commits), "ops/commit")
}

// BenchmarkInsertAndFinish is the store's share of one event with no
// destination: stored leased, then finished, from 64 goroutines.
func BenchmarkInsertAndFinish(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c := benchCalls(1, true)
			if err := insertMany(s, c); err != nil {
				b.Fatal(err)
			}
			res, err := s.CallFinish(ctx, &dispatch.CallFinishParams{ID: c[0].ID, Attempt: 1, State: dispatch.StateDone,
				Output: []byte(`{"destinations":0}`), Now: time.Now()})
			if err != nil || !res.Applied {
				b.Fatal(err, res)
			}
		}
	})
}

// BenchmarkClaim claims pending calls in batches of 256, as the scheduler
// does when work backs up. Reported per call.
func BenchmarkClaim(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	for i := 0; i < b.N; i += 1000 {
		if err := insertMany(s, benchCalls(1000, false)); err != nil {
			b.Fatal(err)
		}
	}
	now := time.Now().Add(time.Second)
	b.ResetTimer()
	for claimed := 0; claimed < b.N; {
		calls, err := s.CallClaim(ctx, &dispatch.CallClaimParams{Owner: "bench", Functions: []string{"handleEvent"},
			Limit: 256, Now: now, LeaseUntil: now.Add(time.Minute)})
		if err != nil || len(calls) == 0 {
			b.Fatal(err, len(calls))
		}
		claimed += len(calls)
	}
}

// BenchmarkCallBacklog counts a backlog of 100,000 pending calls over 10
// keys: what a /metrics scrape costs when destinations have fallen behind.
// Reported per scrape and per waiting call.
func BenchmarkCallBacklog(b *testing.B) {
	s := benchStore(b)
	const n, keys = 100_000, 10
	for i := 0; i < n; i += 1000 {
		calls := benchCalls(1000, false)
		for j, c := range calls {
			c.Function, c.Key = "publishEvent", fmt.Sprintf("dst_%d", (i+j)%keys)
		}
		if err := insertMany(s, calls); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		backlog, err := s.CallBacklog(context.Background())
		if err != nil || len(backlog) != keys || backlog[0].N != n/keys {
			b.Fatalf("CallBacklog = %v, %v", backlog, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/waiting-call")
}
