package dispatchsqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// openHeld opens a store in a temporary directory, stores first, then holds
// the writer in an operation of its own: operations submitted meanwhile
// queue, and share the next commit for sure, not by the speed of
// goroutines. waitQueued waits until n have queued; release lets the writer
// go and waits for the held operation to commit.
func openHeld(t *testing.T, first *dispatch.CallInsertParams) (s *Store, waitQueued func(n int), release func()) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, err := s.CallInsertMany(ctx, first); err != nil {
		t.Fatal(err)
	}
	let, held, holding := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		holding <- s.w.do(ctx, func(*wtx) error {
			close(held)
			<-let
			return nil
		})
	}()
	<-held
	var once sync.Once
	release = func() {
		once.Do(func() {
			close(let)
			if err := <-holding; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(release)
	waitQueued = func(n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); len(s.w.ops) < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d operations queued behind the held one after 10s", len(s.w.ops), n)
			}
		}
	}
	return s, waitQueued, release
}

// insertCalls is the insert of calls with these ids.
func insertCalls(ids ...string) *dispatch.CallInsertParams {
	p := &dispatch.CallInsertParams{}
	for _, id := range ids {
		p.Calls = append(p.Calls, &dispatch.Call{ID: id, Function: "f", Input: []byte(`{}`), RunAfter: time.Now(), CreatedAt: time.Now()})
	}
	return p
}

// insertAll runs each insert in a goroutine of its own and returns their
// errors once all returned; queued is called once they were started.
func insertAll(s *Store, inserts [][]string, queued func(n int), release func()) []error {
	errs := make([]error, len(inserts))
	var wg sync.WaitGroup
	for i, ids := range inserts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CallInsertMany(context.Background(), insertCalls(ids...))
		}()
	}
	queued(len(inserts))
	release()
	wg.Wait()
	return errs
}

// TestStore_GroupCommit: operations that queue while a commit is on its way
// to disk share the next commit: two commits follow a held operation and 64
// inserts queued behind it, the held one's and one with all 64; one commit
// each would be the plain connection-pool behaviour this store exists to
// avoid.
func TestStore_GroupCommit(t *testing.T) {
	t.Parallel()
	s, waitQueued, release := openHeld(t, insertCalls("first"))
	before := s.StoreStats()
	var inserts [][]string
	for g := range 64 {
		inserts = append(inserts, []string{fmt.Sprintf("call-%02d", g)})
	}
	for _, err := range insertAll(s, inserts, waitQueued, release) {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := s.StoreStats()
	ops, commits := st.Ops-before.Ops, st.Commits-before.Commits
	if ops != int64(len(inserts))+1 || commits != 2 {
		t.Fatalf("%d operations (%d inserts queued behind a held one) took %d commits, want 2: the held one's, then one for all the inserts",
			ops, len(inserts), commits)
	}
}

// TestGroupCommit_OneFails: when one operation of a group commit fails, the
// group is replayed with a savepoint per operation: that one fails alone,
// nothing of it is stored, the others are stored, still in one commit.
//
// An insert of more than insertChunk rows is several statements. When the
// duplicate id is in the first, SQLite undoes that statement by itself;
// when it is in a later one, the rows of the statements before it are
// undone only by the rollback to the operation's savepoint, which the
// second case is there to need.
func TestGroupCommit_OneFails(t *testing.T) {
	t.Parallel()
	numbered := func(prefix string, n int) []string {
		var ids []string
		for i := range n {
			ids = append(ids, fmt.Sprintf("%s-%03d", prefix, i))
		}
		return ids
	}
	tests := []struct {
		name    string
		failing []string // repeats "taken", stored before the group
	}{
		{"InFirstStatement", []string{"b1", "taken", "b2"}},
		{"InSecondStatement", append(numbered("b", insertChunk), "taken")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, waitQueued, release := openHeld(t, insertCalls("taken"))
			commits := s.StoreStats().Commits
			// The others: one and several statements each.
			inserts := [][]string{{"a1", "a2"}, tt.failing, {"c1"}, numbered("d", insertChunk+1)}
			const failing = 1
			errs := insertAll(s, inserts, waitQueued, release)
			if got := s.StoreStats().Commits - commits; got != 2 {
				t.Fatalf("%d commits, want 2 (the held operation's, then the group's)", got)
			}
			for i, ids := range inserts {
				var stored, missing []string
				for _, id := range ids {
					if _, err := s.CallGet(context.Background(), id); err == nil {
						stored = append(stored, id)
					} else {
						missing = append(missing, id)
					}
				}
				if i == failing {
					if errs[i] == nil {
						t.Errorf("the insert of %d rows repeating an id: err = nil, want its failure", len(ids))
					}
					// "taken" is stored: the row from before the group.
					if len(stored) != 1 || stored[0] != "taken" {
						t.Errorf("the failing insert of %d rows stored %d of them (%s), want none: "+
							"what it wrote before its failing statement was kept", len(ids), len(stored)-1, abbrev(stored))
					}
					continue
				}
				if errs[i] != nil {
					t.Errorf("insert of %d rows (%s) in the same group: err = %v, want nil: the failure of another failed it",
						len(ids), abbrev(ids), errs[i])
				}
				if len(missing) > 0 {
					t.Errorf("insert of %d rows (%s) in the same group: %d not stored (%s), want all",
						len(ids), abbrev(ids), len(missing), abbrev(missing))
				}
			}
		})
	}
}

// abbrev lists a few of ids.
func abbrev(ids []string) string {
	if len(ids) > 4 {
		return fmt.Sprintf("%s ... %s", strings.Join(ids[:3], " "), ids[len(ids)-1])
	}
	return strings.Join(ids, " ")
}
