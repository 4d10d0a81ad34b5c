package dispatchsqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/dispatch/dispatchtest"
)

// openStore opens the store of one key in the test's temporary directory.
func openStore(dir string) dispatchtest.OpenFunc {
	return func(t testing.TB, key string) dispatch.Store {
		t.Helper()
		name := strings.NewReplacer("/", "_", " ", "_").Replace(key)
		s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(dir, name, "fanout.db")})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	dispatchtest.Exercise(t, openStore(t.TempDir()))
}

func TestStore_GroupCommit(t *testing.T) {
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, each = 64, 50
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c := &dispatch.Call{ID: string(rune('A'+g%26)) + strings.Repeat("x", g/26) + "-" + string(rune('a'+i%26)) + strings.Repeat("y", i/26),
					Function: "f", Input: []byte(`{}`), RunAfter: dispatchtest.T0, CreatedAt: dispatchtest.T0}
				if _, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: []*dispatch.Call{c}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.StoreStats()
	if st.Ops != writers*each {
		t.Fatalf("StoreStats().Ops = %d, want %d", st.Ops, writers*each)
	}
	// 64 concurrent writers must share commits; one commit each would be
	// the plain connection-pool behaviour this store exists to avoid.
	if st.Commits*4 > st.Ops {
		t.Fatalf("%d operations took %d commits: group commit is not grouping", st.Ops, st.Commits)
	}
	t.Logf("%d operations in %d commits (%.1f per commit)", st.Ops, st.Commits, float64(st.Ops)/float64(st.Commits))
}

func TestOpen_Errors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fanout.db")
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	tests := []struct {
		name string
		cfg  dispatchsqlite.Config
		want string
	}{
		{"SecondProcess", dispatchsqlite.Config{Path: path}, "in use by another process"},
		{"NoPath", dispatchsqlite.Config{}, "Path is required"},
		{"BadSynchronous", dispatchsqlite.Config{Path: filepath.Join(dir, "x.db"), Synchronous: "OFF"}, "synchronous must be"},
	}
	if os.Geteuid() != 0 { // root writes anywhere
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct {
			name string
			cfg  dispatchsqlite.Config
			want string
		}{"ReadOnlyDir", dispatchsqlite.Config{Path: filepath.Join(ro, "sub", "fanout.db")}, "permission denied"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := dispatchsqlite.Open(context.Background(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}
