package dispatchsqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"fanout/dispatch/dispatchsqlite"
)

// TestMigrate_Gap: a database that has a later migration but lacks an
// earlier one (branches land in any order) gets the earlier one at Open.
func TestMigrate_Gap(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "fanout.db")
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{`DELETE FROM migrations WHERE version = 3`,
		`INSERT INTO migrations (version, name, applied_at) VALUES (99, '099_later.up.sql', 0)`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if s, err = dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: path}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM migrations WHERE version = 3`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("migration 003 after Open: %d (%v), want it applied though 99 was", n, err)
	}
}
