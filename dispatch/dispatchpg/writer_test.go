package dispatchpg

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/internal/pgtest"
)

func openTest(t *testing.T, url string, cfg Config) *Store {
	t.Helper()
	cfg.URL = url
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newCall(id, dedupKey string) *dispatch.Call {
	return &dispatch.Call{ID: id, Function: "f", Input: []byte(`{}`), DedupKey: dedupKey,
		RunAfter: time.Now(), CreatedAt: time.Now()}
}

// ptr returns a pointer to f, for the store's atomic hooks.
func ptr[T any](f T) *T { return &f }

// TestInsert_LostAnswer: a commit whose answer is lost may have gone
// through. An insert looks once the database answers: stored, it reports
// success (and is not stored twice); not stored, it stores it again; and
// when the database cannot be asked, it says that the outcome is unknown.
func TestInsert_LostAnswer(t *testing.T) {
	lost := io.ErrUnexpectedEOF // a connection that broke mid-answer
	tests := []struct {
		name    string
		dedup   bool // through the dedup path (its own transaction), not the group commit
		before  bool // lose the connection before sending, not after COMMIT
		cut     bool // the database out of reach while the store looks
		wantErr error
		stored  bool
	}{
		{name: "AfterCommit", stored: true},
		{name: "BeforeCommit", before: true, stored: true},
		{name: "AfterCommitDedup", dedup: true, stored: true},
		// Lost before the transaction began: nothing was stored, and the
		// error says so (it does not wrap ErrOutcomeUnknown).
		{name: "BeforeCommitDedup", dedup: true, before: true, wantErr: io.ErrUnexpectedEOF, stored: false},
		{name: "AfterCommitUnreachable", cut: true, wantErr: dispatch.ErrOutcomeUnknown, stored: true},
		{name: "AfterCommitUnreachableDedup", dedup: true, cut: true, wantErr: dispatch.ErrOutcomeUnknown, stored: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proxy := pgtest.StartProxy(t, pgtest.URL(t, pgtest.Unique(t)))
			s := openTest(t, proxy.URL, Config{OpTimeout: 2 * time.Second})
			var fired atomic.Bool
			if tc.before {
				s.hooks.beforeSend.Store(ptr(func() error {
					if fired.CompareAndSwap(false, true) {
						return lost
					}
					return nil
				}))
			} else {
				s.hooks.afterSend.Store(ptr(func(err error) error {
					if err == nil && fired.CompareAndSwap(false, true) {
						if tc.cut {
							proxy.Set(pgtest.Refuse)
						}
						return lost
					}
					return err
				}))
			}
			key := ""
			if tc.dedup {
				key = "k-" + tc.name
			}
			ids, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{
				Calls: []*dispatch.Call{newCall("c1", key)}, DedupSince: time.Now().Add(-time.Hour)})
			if !fired.Load() {
				t.Fatal("the hook never fired: the test tests nothing")
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || (tc.wantErr != dispatch.ErrOutcomeUnknown && errors.Is(err, dispatch.ErrOutcomeUnknown)) {
					t.Fatalf("CallInsertMany err = %v, want %v", err, tc.wantErr)
				}
			} else if err != nil || len(ids) != 1 || ids[0] != "c1" {
				t.Fatalf("CallInsertMany = %v, %v; want [c1]", ids, err)
			}
			proxy.Set(pgtest.Forward)
			s.hooks.beforeSend.Store(nil)
			s.hooks.afterSend.Store(nil)
			_, err = s.CallGet(context.Background(), "c1")
			if stored := err == nil; stored != tc.stored {
				t.Fatalf("stored = %v (%v), want %v", stored, err, tc.stored)
			}
			// Once: an insert of the same id again is refused as a duplicate.
			if _, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{
				Calls: []*dispatch.Call{newCall("c1", "")}}); tc.stored && err == nil {
				t.Fatal("c1 inserted twice")
			}
		})
	}
}

// TestGroupCommit_OneFails: when one operation of a group commit fails, it
// fails alone: the others are stored, it is not.
func TestGroupCommit_OneFails(t *testing.T) {
	s := openTest(t, pgtest.URL(t, pgtest.Unique(t)), Config{Writers: 1})
	ctx := context.Background()
	if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall("taken", "")}}); err != nil {
		t.Fatal(err)
	}
	// Hold the only writer in a first batch while the group queues up.
	release, held := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	s.hooks.beforeSend.Store(ptr(func() error {
		if first.CompareAndSwap(false, true) {
			close(held)
			<-release
		}
		return nil
	}))
	go func() {
		_, _ = s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall("hold", "")}})
	}()
	<-held
	ids := []string{"a", "taken", "b", "c"}
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall(id, "")}})
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.w.ops) < len(ids); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d operations queued", len(s.w.ops), len(ids))
		}
	}
	replays := s.w.replays.Load()
	close(release)
	wg.Wait()
	if got := s.w.replays.Load() - replays; got != 1 {
		t.Fatalf("%d group commits replayed, want 1: the four did not share a commit", got)
	}
	for i, id := range ids {
		if (errs[i] != nil) != (id == "taken") {
			t.Errorf("insert %s: err = %v", id, errs[i])
		}
		if _, err := s.CallGet(ctx, id); err != nil {
			t.Errorf("%s not stored: %v", id, err)
		}
	}
}
