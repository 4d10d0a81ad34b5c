package dispatchpg_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/internal/pgtest"
)

// A page with a call that another transaction holds (a group commit
// finishing or claiming it) is not waited for: waiting while holding the
// page's other calls could close a cycle with that commit, which locks its
// calls in its own order (a deadlock). CallRewriteInputs rewrites what it
// can lock, says Held, and goes on from before the first held call.
func TestRewrite_SkipsHeldCalls(t *testing.T) {
	u := pgtest.URL(t, pgtest.Unique(t))
	s := openURL(t, u, dispatchpg.Config{})
	calls := []*dispatch.Call{{ID: "a", Function: "parent", Input: []byte(`{"e":1}`), RunAfter: T0, CreatedAt: T0}}
	for i := range 10 {
		calls = append(calls, &dispatch.Call{ID: fmt.Sprintf("a.0.%02d", i), Function: "f", ParentID: "a", Index: i,
			Input: []byte(`{"old":1}`), RunAfter: T0, CreatedAt: T0})
	}
	insert(t, s, calls...)
	ctx := context.Background()
	tx, err := connect(t, u).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE calls SET updated_at = updated_at WHERE id = 'a.0.05'`); err != nil {
		t.Fatal(err)
	}
	rewrite := func(after string) dispatch.CallRewriteInputsResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second) // a wait for the lock would end here
		defer cancel()
		res, err := s.CallRewriteInputs(ctx, &dispatch.CallRewriteInputsParams{Function: "f", After: after, Limit: 4,
			Rewrite: func(c *dispatch.Call) ([]byte, bool) { return []byte(`{}`), string(c.Input) != `{}` }})
		if err != nil {
			t.Fatalf("CallRewriteInputs after %q: %v", after, err)
		}
		return *res
	}
	steps := []struct {
		after string
		want  dispatch.CallRewriteInputsResult
	}{
		{"", dispatch.CallRewriteInputsResult{Rewritten: 4, Next: "a.0.03"}},
		{"a.0.03", dispatch.CallRewriteInputsResult{Rewritten: 3, Next: "a.0.04", Held: true}}, // 04, 06, 07; 05 held
		{"a.0.04", dispatch.CallRewriteInputsResult{Rewritten: 1, Next: "a.0.04", Held: true}}, // 08; 05 still held
		{"commit", dispatch.CallRewriteInputsResult{}},
		{"a.0.04", dispatch.CallRewriteInputsResult{Rewritten: 1, Next: "a.0.08"}}, // 05
		{"a.0.08", dispatch.CallRewriteInputsResult{Rewritten: 1}},                 // 09, the last
	}
	for _, st := range steps {
		if st.after == "commit" {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got := rewrite(st.after); got != st.want {
			t.Fatalf("CallRewriteInputs after %q = %+v, want %+v", st.after, got, st.want)
		}
	}
	for _, c := range calls[1:] {
		if got, err := s.CallGet(ctx, c.ID); err != nil || string(got.Input) != `{}` {
			t.Fatalf("%s: %+v, %v; want its input rewritten", c.ID, got, err)
		}
	}
}
