package dispatchsqlite

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// TestGroupCommit_OneFails: when one operation of a group commit fails, the
// group is replayed with a savepoint per operation: that one fails alone,
// nothing of it is stored, the others are stored, still in one commit.
func TestGroupCommit_OneFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	call := func(ids ...string) *dispatch.CallInsertParams {
		p := &dispatch.CallInsertParams{}
		for _, id := range ids {
			p.Calls = append(p.Calls, &dispatch.Call{ID: id, Function: "f", Input: []byte(`{}`), RunAfter: time.Now(), CreatedAt: time.Now()})
		}
		return p
	}
	if _, err := s.CallInsertMany(ctx, call("taken")); err != nil {
		t.Fatal(err)
	}
	// Hold the writer in an operation of its own while the group queues.
	release, held := make(chan struct{}), make(chan struct{})
	holding := make(chan error, 1)
	go func() {
		holding <- s.w.do(ctx, func(*wtx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	inserts := [][]string{{"a1", "a2"}, {"b1", "taken", "b2"}, {"c1"}, {"d1", "d2", "d3"}}
	errs := make([]error, len(inserts))
	var wg sync.WaitGroup
	for i, ids := range inserts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CallInsertMany(ctx, call(ids...))
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.w.ops) < len(inserts); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d operations queued", len(s.w.ops), len(inserts))
		}
	}
	commits := s.w.commits.Load()
	close(release)
	wg.Wait()
	if err := <-holding; err != nil {
		t.Fatal(err)
	}
	if got := s.w.commits.Load() - commits; got != 2 {
		t.Fatalf("%d commits, want 2 (the held operation's, then the group's)", got)
	}
	for i, ids := range inserts {
		failing := i == 1
		if (errs[i] != nil) != failing {
			t.Errorf("insert %v: err = %v", ids, errs[i])
		}
		for _, id := range ids {
			_, err := s.CallGet(ctx, id)
			if stored := err == nil; stored != (!failing || id == "taken") {
				t.Errorf("%s stored = %v, want %v: the failing insert must store nothing, the others all", id, stored, !stored)
			}
		}
	}
}
