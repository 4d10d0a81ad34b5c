package dispatchsqlite

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestWriter_LazyCommits checks which commits are fsynced by themselves:
// every operation a 2xx depends on commits under the configured mode; a
// lazy one (a finish, a claim) under NORMAL, made durable by the next
// durable commit or, failing one, by the writer's own fsync of the log
// within lazySyncWithin. With SyncEveryCommit, nothing is lazy.
func TestWriter_LazyCommits(t *testing.T) {
	mode := func(t *testing.T, s *Store, lazy bool) int64 {
		t.Helper()
		do := s.w.do
		if lazy {
			do = func(ctx context.Context, fn func(*wtx) error) error { return s.w.doLazy(ctx, true, fn) }
		}
		var sync int64
		if err := do(context.Background(), func(tx *wtx) error {
			if _, err := tx.exec(`INSERT INTO docs (kind, id, data, version, created_at, updated_at) VALUES ('t', ?, x'', 1, 0, 0)`,
				fmt.Sprint(time.Now().UnixNano())); err != nil {
				return err
			}
			row, err := tx.queryRow("PRAGMA synchronous")
			sync = asInt(row[0])
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return sync
	}
	for _, tc := range []struct {
		name     string
		cfg      Config
		lazy     int64 // mode of a lazy commit
		durable  int64
		walSyncs bool // the writer fsyncs the log after a lazy commit alone
	}{
		{"Default", Config{}, 1, 2, true},
		{"Extra", Config{Synchronous: "EXTRA"}, 1, 3, true},
		{"SyncEveryCommit", Config{SyncEveryCommit: true}, 2, 2, false},
		{"Normal", Config{Synchronous: "NORMAL"}, 1, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Path = filepath.Join(t.TempDir(), "fanout.db")
			s, err := Open(context.Background(), tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := mode(t, s, true); got != tc.lazy {
				t.Errorf("a lazy commit ran with synchronous %d, want %d", got, tc.lazy)
			}
			if got := mode(t, s, false); got != tc.durable {
				t.Errorf("a durable commit after it ran with synchronous %d, want %d", got, tc.durable)
			}
			time.Sleep(2 * lazySyncWithin)
			if n := s.w.lazySyncs.Load(); n != 0 {
				t.Errorf("the writer fsynced the log %d times after a durable commit, want 0: its fsync covered the lazy one", n)
			}
			mode(t, s, true)
			deadline := time.Now().Add(20 * lazySyncWithin)
			for s.w.lazySyncs.Load() == 0 && tc.walSyncs && time.Now().Before(deadline) {
				time.Sleep(lazySyncWithin / 4)
			}
			if got, want := s.w.lazySyncs.Load(), map[bool]int64{true: 1, false: 0}[tc.walSyncs]; got != want {
				t.Errorf("after a lazy commit alone the writer fsynced the log %d times, want %d", got, want)
			}
		})
	}
}

// TestWriter_EmptyDurableCommitKeepsLazySync: a durable commit that wrote
// nothing (an attach that found every parent busy, a suspend not applied,
// an operation that failed alone) fsyncs nothing, so the lazy commits
// before it still wait for the writer's own fsync.
func TestWriter_EmptyDurableCommitKeepsLazySync(t *testing.T) {
	for _, name := range []string{"WritesNothing", "FailsAlone"} {
		t.Run(name, func(t *testing.T) {
			s, err := Open(context.Background(), Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.w.doLazy(context.Background(), false, func(tx *wtx) error {
				_, err := tx.exec(`INSERT INTO docs (kind, id, data, version, created_at, updated_at) VALUES ('t', ?, x'', 1, 0, 0)`,
					fmt.Sprint(time.Now().UnixNano()))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			_ = s.w.do(context.Background(), func(tx *wtx) error {
				if name == "FailsAlone" {
					return errors.New("conflict")
				}
				_, err := tx.exec(`UPDATE calls SET state = 2 WHERE id = 'nope'`)
				return err
			})
			deadline := time.Now().Add(20 * lazySyncWithin)
			for s.w.lazySyncs.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(lazySyncWithin / 4)
			}
			if s.w.lazySyncs.Load() == 0 {
				t.Errorf("the lazy commit was not fsynced %v after it: a durable commit that wrote nothing was taken for its fsync", 20*lazySyncWithin)
			}
		})
	}
}

// TestWriter_GatherOnlyWithCompany: lazy finishes wait for company only
// while durable commits come often (companyLikely): then a durable
// operation that comes during the wait shares their commit; when durable
// commits are rare, a finish commits at once instead of waiting for
// nothing. The wait is made endless here, so that a finish that waits when
// it should not is seen, and one that does not wait when it should makes a
// commit of its own.
func TestWriter_GatherOnlyWithCompany(t *testing.T) {
	insert := func(tx *wtx) error {
		_, err := tx.exec(`INSERT INTO docs (kind, id, data, version, created_at, updated_at) VALUES ('t', ?, x'', 1, 0, 0)`,
			fmt.Sprint(time.Now().UnixNano()))
		return err
	}
	for _, tc := range []struct {
		name        string
		gap         time.Duration
		wait        bool
		wantCommits int64
	}{
		{"DurableCommitsRare", 0, false, 2},
		{"DurableCommitsOften", time.Hour, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// Set before the next operation is sent to the writer, which
			// reads them only for operations it receives.
			s.w.companyGap, s.w.gatherLazy = tc.gap, time.Hour
			for range 2 {
				if err := s.w.do(ctx, insert); err != nil {
					t.Fatal(err)
				}
			}
			before := s.StoreStats().Commits
			lazy := make(chan error, 1)
			go func() { lazy <- s.w.doLazy(ctx, true, insert) }()
			var waited bool
			select {
			case err := <-lazy:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				waited = true
			}
			if waited != tc.wait {
				t.Errorf("the lazy operation waited for company: %v, want %v", waited, tc.wait)
			}
			if err := s.w.do(ctx, insert); err != nil {
				t.Fatal(err)
			}
			if waited {
				if err := <-lazy; err != nil {
					t.Fatal(err)
				}
			}
			if got := s.StoreStats().Commits - before; got != tc.wantCommits {
				t.Errorf("a lazy and a durable operation took %d commits, want %d", got, tc.wantCommits)
			}
		})
	}
}
