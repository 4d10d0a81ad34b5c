package dispatchpg

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"fanout/dispatch"
	"fanout/internal/pgtest"
)

// TestLazyCommits: a group commit of finishes, claims and the like alone
// runs with synchronous_commit off, for its own transaction; one that also
// inserts calls keeps synchronous commit, and so does every commit with
// Config.SyncEveryCommit.
func TestLazyCommits(t *testing.T) {
	ctx := context.Background()
	// probe is an operation that reads the setting its transaction commits
	// with.
	probe := func(lazy bool, got *string) *wop {
		op := &wop{ctx: ctx, lazy: lazy}
		op.queue = func(b *pgx.Batch) {
			b.Queue(`SELECT current_setting('synchronous_commit')`).QueryRow(func(row pgx.Row) error { return row.Scan(got) })
		}
		return op
	}
	for _, tc := range []struct {
		name       string
		syncEvery  bool
		lazy       bool
		withInsert bool
		want       string
	}{
		{"Lazy", false, true, false, "off"},
		{"NotLazy", false, false, false, "on"},
		{"LazyWithInsert", false, true, true, "on"},
		{"SyncEveryCommit", true, true, false, "on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, pgtest.URL(t, pgtest.Unique(t)), Config{SyncEveryCommit: tc.syncEvery})
			var got string
			ops := []*wop{probe(tc.lazy, &got)}
			if tc.withInsert {
				ops = append(ops, &wop{ctx: ctx, key: "c", rows: toColumns([]*dispatch.Call{newCall("c", "")}, nil, time.Now())})
			}
			before := s.w.lazyCommits.Load()
			if err := s.w.run(ops); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("synchronous_commit in the batch = %q, want %q", got, tc.want)
			}
			if lazy := s.w.lazyCommits.Load() - before; (lazy == 1) != (tc.want == "off") {
				t.Fatalf("%d lazy commits counted, want %v", lazy, tc.want == "off")
			}
			// The setting is the transaction's alone.
			var after string
			if err := s.pool.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&after); err != nil || after != "on" {
				t.Fatalf("synchronous_commit after the batch = %q, %v; want on", after, err)
			}
		})
	}

	// Through the API: an insert commits durably, a claim and a finish
	// lazily.
	s := openTest(t, pgtest.URL(t, pgtest.Unique(t)), Config{})
	if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall("a", "")}}); err != nil {
		t.Fatal(err)
	}
	if n := s.w.lazyCommits.Load(); n != 0 {
		t.Fatalf("an insert committed lazily (%d)", n)
	}
	now := time.Now()
	claimed, err := s.CallClaim(ctx, &dispatch.CallClaimParams{Owner: "o", Functions: []string{"f"}, Limit: 1, Now: now,
		LeaseUntil: now.Add(time.Minute)})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %v, %v", claimed, err)
	}
	res, err := s.CallFinish(ctx, &dispatch.CallFinishParams{ID: "a", Attempt: claimed[0].Attempt, State: dispatch.StateDone, Now: now})
	if err != nil || !res.Applied {
		t.Fatalf("finish = %+v, %v", res, err)
	}
	if n := s.w.lazyCommits.Load(); n != 2 {
		t.Fatalf("%d lazy commits after a claim and a finish, want 2", n)
	}
}
