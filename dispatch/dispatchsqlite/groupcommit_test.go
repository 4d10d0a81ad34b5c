package dispatchsqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// TestStore_GroupCommit: operations that queue while a commit is on its way
// to disk share the next commit. The test makes that happen for sure, not by
// the speed of 64 goroutines: it holds the writer in an operation of its own
// until all 64 inserts have queued, then lets go. Two commits follow, the
// held operation's and one with all 64 inserts; one commit each would be the
// plain connection-pool behaviour this store exists to avoid.
func TestStore_GroupCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
	before := s.StoreStats()

	const writers = 64
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dispatch.Call{ID: fmt.Sprintf("call-%02d", g), Function: "f", Input: []byte(`{}`),
				RunAfter: time.Now(), CreatedAt: time.Now()}
			if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{c}}); err != nil {
				t.Error(err)
			}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.w.ops) < writers; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d of %d inserts queued behind the held operation after 10s", len(s.w.ops), writers)
		}
	}
	close(release)
	wg.Wait()
	if err := <-holding; err != nil {
		t.Fatal(err)
	}
	st := s.StoreStats()
	ops, commits := st.Ops-before.Ops, st.Commits-before.Commits
	if ops != writers+1 || commits != 2 {
		t.Fatalf("%d operations (%d inserts queued behind a held one) took %d commits, want 2: the held one's, then one for all the inserts",
			ops, writers, commits)
	}
}
