package dispatch_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
)

type msg struct {
	N int `json:"n"`
}

// BenchmarkFanOut is the runtime end to end on SQLite: each op dispatches a
// parent that gathers `children` no-op children, and waits until the parent
// is done. It measures what the runtime and the store cost per fanned-out
// call, without HTTP; 64 dispatchers run at once.
func BenchmarkFanOut(b *testing.B) {
	for _, tc := range []struct {
		name     string
		children int
		eager    bool
	}{{"children=2", 2, false}, {"children=2/eager", 2, true}, {"children=0/eager", 0, true}} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(b.TempDir(), "db")})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var mu sync.Mutex
			waiters := map[string]chan struct{}{}
			done := func(id string) chan struct{} {
				mu.Lock()
				defer mu.Unlock()
				ch, ok := waiters[id]
				if !ok {
					ch = make(chan struct{})
					waiters[id] = ch
				}
				return ch
			}
			child := dispatch.Func("child", func(ctx context.Context, in msg) (int, error) { return in.N, nil })
			parent := dispatch.Func("parent", func(ctx context.Context, in msg) (int, error) {
				ins := make([]msg, tc.children)
				out, err := child.Gather(ctx, ins)
				if err != nil {
					return 0, err
				}
				info, _ := dispatch.CallFromContext(ctx)
				close(done(info.ID))
				return len(out), nil
			})
			if tc.eager {
				parent.Eager()
			}
			rt, err := dispatch.New(&dispatch.Config{Store: s, Workers: 256,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, child, parent)
			if err != nil {
				b.Fatal(err)
			}
			if err := rt.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer rt.Stop(context.Background())
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id, err := parent.Dispatch(context.Background(), msg{})
					if err != nil {
						b.Fatal(err)
					}
					<-done(id)
				}
			})
			b.StopTimer()
			st := rt.Stats()
			b.ReportMetric(float64(st.Claims)/float64(b.N), "claims/op")
		})
	}
}

// orderedMsg is a delivery to destination "d", in the sequence of its key
// when ordered.
type orderedMsg struct {
	Key     string `json:"k,omitempty"`
	Ordered bool   `json:"o,omitempty"`
}

func (orderedMsg) DispatchKey() string { return "d" }
func (m orderedMsg) DispatchOrderKey() string {
	if !m.Ordered {
		return ""
	}
	return m.Key
}

// BenchmarkOrdered is BenchmarkFanOut's eager parent with one child to
// destination "d", with and without ordering over 10,000 keys: what an
// ordered delivery costs against an unordered one (docs/BENCHMARKS.md). An
// ordered child is stored pending and claimed (never a local call), and
// its finish looks for the next of its key.
func BenchmarkOrdered(b *testing.B) {
	for _, ordered := range []bool{false, true} {
		name := "unordered"
		if ordered {
			name = "ordered/keys=10000"
		}
		b.Run(name, func(b *testing.B) {
			s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(b.TempDir(), "db")})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var mu sync.Mutex
			waiters := map[string]chan struct{}{}
			done := func(id string) chan struct{} {
				mu.Lock()
				defer mu.Unlock()
				ch, ok := waiters[id]
				if !ok {
					ch = make(chan struct{})
					waiters[id] = ch
				}
				return ch
			}
			child := dispatch.Func("child", func(ctx context.Context, in orderedMsg) (int, error) { return 0, nil })
			parent := dispatch.Func("parent", func(ctx context.Context, in msg) (int, error) {
				out, err := child.Gather(ctx, []orderedMsg{{Key: strconv.Itoa(in.N), Ordered: ordered}})
				if err != nil {
					return 0, err
				}
				info, _ := dispatch.CallFromContext(ctx)
				close(done(info.ID))
				return len(out), nil
			}).Eager()
			rt, err := dispatch.New(&dispatch.Config{Store: s, Workers: 256,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, child, parent)
			if err != nil {
				b.Fatal(err)
			}
			if err := rt.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer rt.Stop(context.Background())
			var n atomic.Int64
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id, err := parent.Dispatch(context.Background(), msg{N: int(n.Add(1) % 10000)})
					if err != nil {
						b.Fatal(err)
					}
					<-done(id)
				}
			})
		})
	}
}
