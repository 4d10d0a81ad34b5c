package dispatchsqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
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

// A database Open creates has Config.PageSize (4096 by default); one that
// exists keeps its own.
func TestOpen_PageSize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  int
		want int
	}{{"new", 0, 4096}, {"new2k", 2048, 2048}} {
		path := filepath.Join(dir, tc.name+".db")
		s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path, PageSize: tc.cfg})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if got := pageSize(t, path); got != tc.want {
			t.Fatalf("%s: page size %d, want %d", tc.name, got, tc.want)
		}
		// Opened again with another page size, it keeps its own.
		s, err = dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path, PageSize: 1024})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if got := pageSize(t, path); got != tc.want {
			t.Fatalf("%s reopened: page size %d, want %d", tc.name, got, tc.want)
		}
	}
	if _, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(dir, "bad.db"), PageSize: 3000}); err == nil {
		t.Fatal("Open accepted a page size of 3000")
	}
}

func pageSize(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	var mode string
	if err := db.QueryRow("PRAGMA page_size").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q, %v; want wal", mode, err)
	}
	return n
}
