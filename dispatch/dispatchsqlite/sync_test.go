package dispatchsqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpen_Synchronous checks the durability settings where they count: on
// the writer's connection, the only one that commits. A 2xx promises that
// the events were fsynced, which in WAL mode takes synchronous=FULL (2) or
// EXTRA (3); NORMAL (1) fsyncs the WAL only at checkpoints and is opt-in.
// (crashtest's TestPowerLoss shows what NORMAL loses.)
func TestOpen_Synchronous(t *testing.T) {
	for _, tc := range []struct {
		config  string
		want    int64
		wantErr string
	}{
		{config: "", want: 2}, // the default
		{config: "FULL", want: 2},
		{config: "full", want: 2},
		{config: "EXTRA", want: 3},
		{config: "NORMAL", want: 1},
		{config: "normal", want: 1},
		{config: "OFF", wantErr: `synchronous must be FULL, EXTRA or NORMAL, not "OFF"`},
		{config: "0", wantErr: `not "0"`},
	} {
		t.Run("synchronous="+tc.config, func(t *testing.T) {
			s, err := Open(context.Background(), Config{Path: filepath.Join(t.TempDir(), "fanout.db"), Synchronous: tc.config})
			if tc.wantErr != "" {
				if err == nil {
					_ = s.Close()
					t.Fatalf("Open with Synchronous %q succeeded, want an error", tc.config)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Open with Synchronous %q: %v, want an error with %q", tc.config, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var sync int64
			var journal string
			err = s.w.do(context.Background(), func(tx *wtx) error {
				row, err := tx.queryRow("PRAGMA synchronous")
				if err != nil {
					return err
				}
				sync = asInt(row[0])
				if row, err = tx.queryRow("PRAGMA journal_mode"); err != nil {
					return err
				}
				journal = asString(row[0])
				return nil
			})
			if err != nil {
				t.Fatalf("query the writer's connection: %v", err)
			}
			if sync != tc.want {
				t.Errorf("PRAGMA synchronous on the writer's connection = %d, want %d", sync, tc.want)
			}
			if journal != "wal" {
				t.Errorf("PRAGMA journal_mode on the writer's connection = %q, want wal", journal)
			}
		})
	}
}
