package dispatchpg

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
// fails alone: the others are stored and their callers told so; nothing of
// it is stored.
//
// How: a batch is one implicit transaction (its statements up to its one
// Sync), which the failing statement aborts whole; its operations are then
// replayed one by one, each a batch and so a transaction of its own. The
// inserts of a batch are one statement (wop.rows), which PostgreSQL undoes
// by itself; operations that queue statements (wop.queue) are statements of
// their own, after the inserts, and one may queue several. In the
// "InSecondStatement" case, the failing operation queues an insert that
// succeeds, then one that fails: what the others and its first statement
// wrote is undone only if the batch, and then its replay, is one
// transaction.
func TestGroupCommit_OneFails(t *testing.T) {
	ctx := context.Background()
	calls := func(ids ...string) []*dispatch.Call {
		var out []*dispatch.Call
		for _, id := range ids {
			out = append(out, newCall(id, ""))
		}
		return out
	}
	// insert stores ids through the API: its rows join the batch's insert.
	insert := func(s *Store, ids ...string) error {
		_, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: calls(ids...)})
		return err
	}
	// statements stores each list of ids with a statement of its own, in
	// one operation (key orders it in the batch).
	statements := func(key string, lists ...[]string) func(s *Store) error {
		return func(s *Store) error {
			return s.w.do(ctx, &wop{key: key, queue: func(b *pgx.Batch) {
				for _, ids := range lists {
					b.Queue(insertSQL, toColumns(calls(ids...), nil, time.Now()).args()...)
				}
			}})
		}
	}
	type op struct {
		ids []string // what it stores
		run func(s *Store) error
	}
	inserting := func(ids ...string) op {
		return op{ids, func(s *Store) error { return insert(s, ids...) }}
	}
	tests := []struct {
		name    string
		failing op // repeats "taken", stored before the group
		others  []op
	}{
		{"Insert", inserting("b1", "taken", "b2"),
			[]op{inserting("a"), inserting("c1", "c2"), {[]string{"w1", "w2"}, statements("w", []string{"w1"}, []string{"w2"})}}},
		{"InSecondStatement", op{[]string{"x1", "x2", "taken"}, statements("x", []string{"x1", "x2"}, []string{"taken"})},
			// "w" sorts before "x", "y" after: statements before the
			// failing one and after it.
			[]op{inserting("a"), inserting("c1", "c2"),
				{[]string{"w1", "w2"}, statements("w", []string{"w1"}, []string{"w2"})},
				{[]string{"y1", "y2"}, statements("y", []string{"y1"}, []string{"y2"})}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t, pgtest.URL(t, pgtest.Unique(t)), Config{Writers: 1})
			if err := insert(s, "taken"); err != nil {
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
			go func() { _ = insert(s, "hold") }()
			<-held
			ops := append([]op{tt.failing}, tt.others...)
			errs := make([]error, len(ops))
			var wg sync.WaitGroup
			for i, o := range ops {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = o.run(s)
				}()
			}
			for deadline := time.Now().Add(10 * time.Second); len(s.w.ops) < len(ops); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d operations queued", len(s.w.ops), len(ops))
				}
			}
			replays := s.w.replays.Load()
			close(release)
			wg.Wait()
			for i, o := range ops {
				var stored, missing []string
				for _, id := range o.ids {
					if _, err := s.CallGet(ctx, id); err == nil {
						stored = append(stored, id)
					} else {
						missing = append(missing, id)
					}
				}
				if i == 0 {
					if errs[i] == nil {
						t.Errorf("the operation storing %v, which repeats an id: err = nil, want its failure", o.ids)
					}
					// "taken" is stored: the row from before the group.
					if !slices.Equal(stored, []string{"taken"}) {
						t.Errorf("the failing operation storing %v left %v stored, want only taken (from before): "+
							"what it wrote before its failing statement was kept", o.ids, stored)
					}
					continue
				}
				if errs[i] != nil {
					t.Errorf("the operation storing %v in the same group: err = %v, want nil: the failure of another failed it",
						o.ids, errs[i])
				}
				if len(missing) > 0 {
					t.Errorf("the operation storing %v in the same group: %v not stored, want all", o.ids, missing)
				}
			}
			// Last: the outcomes say more when a replay went wrong.
			if got := s.w.replays.Load() - replays; got != 1 {
				t.Fatalf("%d group commits replayed, want 1: the %d operations did not share a failed commit "+
					"(the test tests nothing), or its failure was not replayed", got, len(ops))
			}
		})
	}
}
