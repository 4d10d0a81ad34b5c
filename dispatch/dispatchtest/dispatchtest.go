// Package dispatchtest is the conformance suite of dispatch.Store: every
// store runs it from its own tests, so that the runtime can rely on the same
// contract whichever database is underneath.
//
// Exercise covers the store contract area by area (inserts, claims,
// outcomes, parents and children, leases, re-drives, retention, the reads
// for operators, documents, closing), then runs the runtime itself on the
// store: retries on a fake clock, Gather with mixed outcomes, parents that
// run again, a restart in the middle of a Gather, keys and their limits, and
// concurrent dispatches. Each area is a subtest, in a file named after it.
package dispatchtest

import (
	"context"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

// OpenFunc opens the store identified by key. Opening the same key again
// after Close must see the same calls; a new key must be empty. It must also
// close the store in t.Cleanup (Close must tolerate being called twice): the
// runtime tests stop their runtime in a cleanup that has to run first.
// The suite's subtests run in parallel, so open is called from several
// goroutines at once.
type OpenFunc func(t testing.TB, key string) dispatch.Store

// T0 is the time the suite's calls are created at: whole milliseconds, since
// a store may keep time at microsecond precision.
var T0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Exercise runs the conformance suite against the store open returns, one
// subtest per area. The subtests run in parallel, each on stores of its own.
func Exercise(t *testing.T, open OpenFunc) {
	for _, area := range []struct {
		name string
		run  func(*testing.T, OpenFunc)
	}{
		{"Insert", exerciseInsert},
		{"Claim", exerciseClaim},
		{"Finish", exerciseFinish},
		{"Suspend", exerciseSuspend},
		{"Local", exerciseLocal},
		{"Leases", exerciseLeases},
		{"Redrive", exerciseRedrive},
		{"Retention", exerciseRetention},
		{"List", exerciseList},
		{"History", exerciseHistory},
		{"Rewrite", exerciseRewrite},
		{"Documents", exerciseDocs},
		{"Lifecycle", exerciseLifecycle},
		{"Runtime", exerciseRuntime},
		{"RuntimeRetries", exerciseRuntimeRetries},
		{"RuntimeGather", exerciseRuntimeGather},
		{"RuntimeKeys", exerciseRuntimeKeys},
		{"Buckets", exerciseBuckets},
		{"Order", exerciseOrder},
	} {
		t.Run(area.name, func(t *testing.T) {
			t.Parallel()
			area.run(t, open)
		})
	}
}

func newCall(id, fn string, input string, runAfter time.Time) *dispatch.Call {
	return &dispatch.Call{ID: id, Function: fn, Input: []byte(input), RunAfter: runAfter, CreatedAt: T0}
}

func mustInsert(t testing.TB, s dispatch.Store, calls ...*dispatch.Call) {
	t.Helper()
	if _, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatalf("CallInsertMany: %v", err)
	}
}

func mustGet(t testing.TB, s dispatch.Store, id string) *dispatch.Call {
	t.Helper()
	c, err := s.CallGet(context.Background(), id)
	if err != nil {
		t.Fatalf("CallGet(%s): %v", id, err)
	}
	return c
}

func mustClaim(t testing.TB, s dispatch.Store, owner string, now time.Time, limit int, fns ...string) []*dispatch.Call {
	t.Helper()
	if len(fns) == 0 {
		fns = []string{"f"}
	}
	calls, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{
		Owner: owner, Functions: fns, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute),
	})
	if err != nil {
		t.Fatalf("CallClaim: %v", err)
	}
	return calls
}

func mustFinish(t testing.TB, s dispatch.Store, p *dispatch.CallFinishParams) *dispatch.CallFinishResult {
	t.Helper()
	if p.Now.IsZero() {
		p.Now = T0
	}
	res, err := s.CallFinish(context.Background(), p)
	if err != nil {
		t.Fatalf("CallFinish(%s): %v", p.ID, err)
	}
	return res
}

func ids(calls []*dispatch.Call) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.ID
	}
	return out
}

func keyed(id, key string, runAfter time.Time) *dispatch.Call {
	c := newCall(id, "f", `{}`, runAfter)
	c.Key = key
	return c
}

func mustClaimKey(t testing.TB, s dispatch.Store, key string, now time.Time, limit int) []*dispatch.Call {
	t.Helper()
	calls, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{
		Key: key, Owner: "o", Functions: []string{"f"}, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute),
	})
	if err != nil {
		t.Fatalf("CallClaim(%q): %v", key, err)
	}
	return calls
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
