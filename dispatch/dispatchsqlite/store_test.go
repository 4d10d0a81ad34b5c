package dispatchsqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

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

// TestStore_GroupCommit: operations that queue while a commit is on its way
// to disk share the next commit. The test makes that happen for sure rather
// than by the speed of 64 goroutines: another connection holds SQLite's
// write lock, so that the store's writer waits in its BEGIN IMMEDIATE (up to
// its busy_timeout, 10s) with the first operations it took, while the test
// waits until all 64 writers are waiting on their operations; then it lets
// go. The first commit carries what the writer took, the second all the
// rest: two commits for 64 operations (one, if the writer had taken them
// all); one commit each would be the plain connection-pool behaviour this
// store exists to avoid.
func TestStore_GroupCommit(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	s, err := dispatchsqlite.Open(ctx, dispatchsqlite.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := s.StoreStats()

	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("take the write lock: %v", err)
	}
	held := true
	defer func() {
		if held {
			_, _ = holder.ExecContext(ctx, "ROLLBACK")
		}
	}()

	const writers = 64
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dispatch.Call{ID: fmt.Sprintf("call-%02d", g), Function: "f", Input: []byte(`{}`),
				RunAfter: dispatchtest.T0, CreatedAt: dispatchtest.T0}
			if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{c}}); err != nil {
				t.Error(err)
			}
		}()
	}
	waitBlockedIn(t, "dispatchsqlite.(*writer).do(", writers, 5*time.Second)
	if got := s.StoreStats(); got.Commits != before.Commits {
		t.Fatalf("%d commits while another connection held the write lock", got.Commits-before.Commits)
	}
	if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatalf("release the write lock: %v", err)
	}
	held = false
	wg.Wait()

	st := s.StoreStats()
	ops, commits := st.Ops-before.Ops, st.Commits-before.Commits
	if ops != writers {
		t.Fatalf("StoreStats: %d operations, want %d", ops, writers)
	}
	if commits < 1 || commits > 2 {
		t.Fatalf("%d operations queued behind a waiting commit took %d commits, want 1 or 2: group commit is not grouping", ops, commits)
	}
	t.Logf("%d operations in %d commits", ops, commits)
}

// waitBlockedIn waits until n goroutines are blocked in a function whose
// stack frame contains fn (a select or a channel receive), or fails the test
// after timeout.
func waitBlockedIn(t *testing.T, fn string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1<<20)
	for {
		for {
			k := runtime.Stack(buf, true)
			if k < len(buf) {
				buf = buf[:k]
				break
			}
			buf = make([]byte, 2*len(buf))
		}
		blocked := 0
		for _, g := range strings.Split(string(buf), "\n\n") {
			head, _, _ := strings.Cut(g, "\n")
			if strings.Contains(g, fn) && (strings.Contains(head, "[select") || strings.Contains(head, "[chan receive")) {
				blocked++
			}
		}
		if blocked >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines blocked in %s after %v, want %d", blocked, fn, timeout, n)
		}
		buf = buf[:cap(buf)]
		time.Sleep(time.Millisecond)
	}
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
	ro := filepath.Join(dir, "ro")
	if err := os.Mkdir(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	tests = append(tests, struct {
		name string
		cfg  dispatchsqlite.Config
		want string
	}{"ReadOnlyDir", dispatchsqlite.Config{Path: filepath.Join(ro, "sub", "fanout.db")}, "permission denied"})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "ReadOnlyDir" && os.Geteuid() == 0 {
				t.Skip("root writes through permission bits: a read-only directory proves nothing (crashtest's TestStart_UnusableDataDir/ReadOnly covers root with chattr +i)")
			}
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
