package dispatchsqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	_ "modernc.org/sqlite"

	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
)

// BenchmarkInsertTagged is what migration 003's index of events by type
// (calls_roots_tag) costs ingest: events with a type stored one per
// operation from 64 goroutines (group commit, as /v1/event does) and in
// batches of 100 (as /v1/batch does), with the index and without it.
// Reported per event.
func BenchmarkInsertTagged(b *testing.B) {
	for _, index := range []bool{true, false} {
		name := "index=on"
		if !index {
			name = "index=off"
		}
		b.Run(name+"/single", func(b *testing.B) {
			s := taggedStore(b, index)
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := insertMany(s, tagged(benchCalls(1, true))); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
		b.Run(name+"/batch=100", func(b *testing.B) {
			s := taggedStore(b, index)
			b.ResetTimer()
			for i := 0; i < b.N; i += 100 {
				if err := insertMany(s, tagged(benchCalls(100, false))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func tagged(calls []*dispatch.Call) []*dispatch.Call {
	for i, c := range calls {
		c.Tag = []string{"order.paid", "user.created", "order.refunded"}[i%3]
	}
	return calls
}

// taggedStore is a new store, without the index of events by type unless
// index.
func taggedStore(b *testing.B, index bool) *dispatchsqlite.Store {
	b.Helper()
	path := filepath.Join(b.TempDir(), "fanout.db")
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	if !index {
		s.Close()
		db, err := sql.Open("sqlite", path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := db.Exec(`DROP INDEX calls_roots_tag`); err != nil {
			b.Fatal(err)
		}
		db.Close()
		if s, err = dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path}); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { s.Close() })
	return s
}
