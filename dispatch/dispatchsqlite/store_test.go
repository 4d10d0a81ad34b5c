package dispatchsqlite_test

import (
	"context"
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
