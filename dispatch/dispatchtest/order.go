package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// ordered is a call of key "d" in the sequence seq.
func ordered(id, seq string) *dispatch.Call {
	c := keyed(id, "d", T0)
	c.OrderKey = seq
	return c
}

func finishOrdered(t *testing.T, s dispatch.Store, c *dispatch.Call, state dispatch.State, at time.Time) {
	t.Helper()
	p := &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: state, Now: at, OrderKey: c.OrderKey}
	switch state {
	case dispatch.StateDone:
		p.Status = dispatch.StatusOK
	case dispatch.StatePending:
		p.RunAfter, p.Error, p.Status = at.Add(time.Minute), "503", dispatch.StatusTemporary
	default:
		p.Error, p.Status = "gone", dispatch.StatusPermanent
	}
	if res := mustFinish(t, s, p); !res.Applied {
		t.Fatalf("finish %s not applied", c.ID)
	}
}

// exerciseOrder checks sequences (dispatch.Call.OrderKey): one call at a
// time per sequence, in id order, a failing head holding back its own
// sequence only, and the operations that take a call out of it.
func exerciseOrder(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("HeadOnly", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		mustInsert(t, s, ordered("a1", "A"), ordered("a2", "A"), ordered("a3", "A"), ordered("b1", "B"), keyed("u1", "d", T0))
		got := mustClaimKey(t, s, "d", T0, 10)
		if want := []string{"a1", "b1", "u1"}; !slices.Equal(sorted(ids(got)), want) {
			t.Fatalf("claimed %v, want the heads and the unordered call %v", ids(got), want)
		}
		for _, c := range got {
			if c.ID == "a1" && c.OrderKey != "A" {
				t.Fatalf("claimed a1 with OrderKey %q", c.OrderKey)
			}
		}
		if a2 := mustGet(t, s, "a2"); !a2.Queued() || a2.OrderKey != "A" {
			t.Fatalf("a2 = %+v, want queued in A", a2)
		}
		// The head fails and retries: its sequence waits, B goes on.
		finishOrdered(t, s, got[slices.IndexFunc(got, func(c *dispatch.Call) bool { return c.ID == "a1" })], dispatch.StatePending, T0)
		finishOrdered(t, s, got[slices.IndexFunc(got, func(c *dispatch.Call) bool { return c.ID == "b1" })], dispatch.StateDone, T0)
		mustInsert(t, s, ordered("b2", "B"))
		if got := mustClaimKey(t, s, "d", T0.Add(time.Second), 10); !slices.Equal(ids(got), []string{"b2"}) {
			t.Fatalf("claimed %v while a1 retries, want [b2]", ids(got))
		}
		heads, err := s.CallOrderHeads(ctx, &dispatch.CallOrderHeadsParams{Key: "d", Blocked: true, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(heads) != 1 || heads[0].OrderKey != "A" || heads[0].Head.ID != "a1" || heads[0].Queued != 2 ||
			heads[0].Head.Failures != 1 || heads[0].Head.Error != "503" {
			t.Fatalf("blocked heads = %v, want A at a1 with 2 queued, 1 failure", describeHeads(heads))
		}
		all, err := s.CallOrderHeads(ctx, &dispatch.CallOrderHeadsParams{Key: "d", Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if d := describeHeads(all); len(all) != 2 || all[1].OrderKey != "B" || all[1].Head.ID != "b2" {
			t.Fatalf("heads = %v, want A and B (head b2)", d)
		}
		if page, _ := s.CallOrderHeads(ctx, &dispatch.CallOrderHeadsParams{Key: "d", After: "A", Limit: 10}); len(page) != 1 {
			t.Fatalf("heads after A = %v, want B alone", describeHeads(page))
		}
		// The retry succeeds: a2 is next, then (a2 dead-lettered) a3.
		later := T0.Add(2 * time.Minute)
		a1 := mustClaimKey(t, s, "d", later, 10)
		if !slices.Equal(ids(a1), []string{"a1"}) {
			t.Fatalf("claimed %v when a1's retry is due, want [a1]", ids(a1))
		}
		finishOrdered(t, s, a1[0], dispatch.StateDone, later)
		a2 := mustClaimKey(t, s, "d", later, 10)
		if !slices.Equal(ids(a2), []string{"a2"}) {
			t.Fatalf("claimed %v after a1, want [a2]", ids(a2))
		}
		finishOrdered(t, s, a2[0], dispatch.StateFailed, later)
		if got := mustClaimKey(t, s, "d", later, 10); !slices.Equal(ids(got), []string{"a3"}) {
			t.Fatalf("claimed %v after a2 failed for good, want [a3]", ids(got))
		}
	})

	t.Run("ArrivalWhileRunning", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		mustInsert(t, s, ordered("x2", "A"))
		got := mustClaimKey(t, s, "d", T0, 10)
		// A call stored later, even with a lower id (another replica's
		// clock), waits for the one that runs.
		mustInsert(t, s, ordered("x1", "A"), ordered("x3", "A"))
		if more := mustClaimKey(t, s, "d", T0, 10); len(more) != 0 {
			t.Fatalf("claimed %v while x2 runs, want none", ids(more))
		}
		finishOrdered(t, s, got[0], dispatch.StateDone, T0)
		if next := mustClaimKey(t, s, "d", T0, 10); !slices.Equal(ids(next), []string{"x1"}) {
			t.Fatalf("claimed %v after x2, want [x1] (lowest id)", ids(next))
		}
	})

	t.Run("HeadOfDeadProcess", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		mustInsert(t, s, ordered("y2", "A"))
		first := mustClaimKey(t, s, "d", T0, 10)
		// Its process dies: the lease expires and is released. A call
		// with a lower id (another replica's clock) is stored meanwhile,
		// parked behind it.
		later := T0.Add(2 * time.Minute)
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: later}); err != nil || n != 1 {
			t.Fatalf("release the dead process's lease: %d, %v", n, err)
		}
		mustInsert(t, s, ordered("y1", "A"), ordered("y3", "A"))
		again := mustClaimKey(t, s, "d", later, 10)
		if !slices.Equal(ids(again), []string{"y2"}) {
			t.Fatalf("claimed %v after y2's lease was released, want [y2]: it keeps its turn", ids(again))
		}
		// The dead process's attempt ends late: refused, it must leave the
		// sequence as it is (y2 runs again; y1 waits for it).
		stale := &dispatch.CallFinishParams{ID: "y2", Attempt: first[0].Attempt, State: dispatch.StateDone,
			Status: dispatch.StatusOK, Now: later, OrderKey: "A"}
		if res := mustFinish(t, s, stale); res.Applied {
			t.Fatal("the finish of an attempt taken over was applied")
		}
		if more := mustClaimKey(t, s, "d", later, 10); len(more) != 0 {
			t.Fatalf("claimed %v while y2 runs again, after a stale finish of it; want none", ids(more))
		}
		finishOrdered(t, s, again[0], dispatch.StateDone, later)
		if next := mustClaimKey(t, s, "d", later, 10); !slices.Equal(ids(next), []string{"y1"}) {
			t.Fatalf("claimed %v after y2, want [y1]", ids(next))
		}
	})

	t.Run("SuspendedChildren", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		mustInsert(t, s, newCall("p1", "f", `{}`, T0), newCall("p2", "f", `{}`, T0))
		parents := mustClaim(t, s, "o", T0, 10)
		for _, p := range parents {
			child := ordered(p.ID+".0.0", "A")
			child.ParentID, child.Function = p.ID, "g"
			ok, err := s.CallSuspend(ctx, &dispatch.CallSuspendParams{ID: p.ID, Attempt: p.Attempt, Children: []*dispatch.Call{child}, Now: T0})
			if err != nil || !ok {
				t.Fatalf("suspend %s: %v %v", p.ID, ok, err)
			}
		}
		got, err := s.CallClaim(ctx, &dispatch.CallClaimParams{Key: "d", Owner: "o", Functions: []string{"g"}, Limit: 10, Now: T0, LeaseUntil: T0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].ID != "p1.0.0" {
			t.Fatalf("claimed %v, want [p1.0.0]", ids(got))
		}
		p := &dispatch.CallFinishParams{ID: got[0].ID, Attempt: got[0].Attempt, ParentID: "p1", State: dispatch.StateDone,
			Status: dispatch.StatusOK, Now: T0, OrderKey: "A"}
		mustFinish(t, s, p)
		if c := mustGet(t, s, "p2.0.0"); c.Queued() || c.State != dispatch.StatePending {
			t.Fatalf("p2.0.0 = %v queued %v after p1.0.0, want runnable", c.State, c.Queued())
		}
	})

	t.Run("TakeAndRedrive", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		mustInsert(t, s, ordered("r1", "A"), ordered("r2", "A"), ordered("r3", "A"))
		got := mustClaimKey(t, s, "d", T0, 10)
		finishOrdered(t, s, got[0], dispatch.StatePending, T0) // r1 retries later
		// The operator skips the blocked head: taken, failed for good.
		taken, err := s.CallTake(ctx, &dispatch.CallTakeParams{ID: "r1", Owner: "op", Now: T0, LeaseUntil: T0.Add(time.Minute)})
		if err != nil || taken == nil || taken.State != dispatch.StateRunning || taken.OrderKey != "A" {
			t.Fatalf("take r1 = %+v, %v", taken, err)
		}
		if again, err := s.CallTake(ctx, &dispatch.CallTakeParams{ID: "r1", Owner: "op", Now: T0, LeaseUntil: T0.Add(time.Minute)}); err != nil || again != nil {
			t.Fatalf("take r1 twice = %+v, %v; want nil", again, err)
		}
		finishOrdered(t, s, taken, dispatch.StateFailed, T0)
		next := mustClaimKey(t, s, "d", T0, 10)
		if !slices.Equal(ids(next), []string{"r2"}) {
			t.Fatalf("claimed %v after r1 was skipped, want [r2]", ids(next))
		}
		// r1 re-driven while r2 runs: out of its sequence, at once.
		done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: []string{"r1"}, Now: T0})
		if err != nil || len(done) != 1 {
			t.Fatalf("redrive r1 = %v, %v", done, err)
		}
		again := mustClaimKey(t, s, "d", T0, 10)
		if len(again) != 1 || again[0].ID != "r1" || again[0].OrderKey != "" || !again[0].OutOfOrder {
			t.Fatalf("claimed %+v, want r1 out of order", again)
		}
		// A parked call can be taken too (a skip of a queued call).
		if c, err := s.CallTake(ctx, &dispatch.CallTakeParams{ID: "r3", Owner: "op", Now: T0, LeaseUntil: T0.Add(time.Minute)}); err != nil || c == nil {
			t.Fatalf("take parked r3 = %v, %v", c, err)
		}
	})

	t.Run("Runtime", func(t *testing.T) {
		t.Parallel()
		exerciseOrderRuntime(t, open(t, t.Name()))
	})
}

func describeHeads(hs []*dispatch.OrderHead) []string {
	var out []string
	for _, h := range hs {
		out = append(out, fmt.Sprintf("%s:%s(failures %d, %q, queued %d)", h.OrderKey, h.Head.ID, h.Head.Failures, h.Head.Error, h.Queued))
	}
	return out
}

// seqItem is an input in a sequence of key "d".
type seqItem struct {
	Seq  string `json:"s"`
	N    int    `json:"n"`
	Fail int    `json:"f,omitempty"` // attempts that fail before one succeeds
}

func (seqItem) DispatchKey() string        { return "d" }
func (i seqItem) DispatchOrderKey() string { return i.Seq }

// exerciseOrderRuntime runs ordered calls, some failing a few times, on
// many workers, parents gathering them in batches: each sequence must run
// one call at a time, and succeed in the order its calls were dispatched.
// The parents are eager, as fanout's handleEvent: a parent that gathered
// later, on a retry, would store its children after those of parents
// dispatched after it, and the order of a sequence is that of its calls'
// creation (see dispatch.Call.OrderKey).
func exerciseOrderRuntime(t *testing.T, s dispatch.Store) {
	ctx := context.Background()
	const seqs, perSeq = 8, 12
	var mu sync.Mutex
	running := map[string]bool{}
	done := map[string][]int{}
	tries := map[string]int{}
	var errs []string
	child := dispatch.Func("orderedChild", func(ctx context.Context, in seqItem) (int, error) {
		info, _ := dispatch.CallFromContext(ctx)
		mu.Lock()
		if running[in.Seq] {
			errs = append(errs, fmt.Sprintf("%s: %d runs while another call of its sequence runs", in.Seq, in.N))
		}
		running[in.Seq] = true
		tries[info.ID]++
		n := tries[info.ID]
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		mu.Lock()
		defer mu.Unlock()
		running[in.Seq] = false
		if n <= in.Fail {
			return 0, fmt.Errorf("%w: attempt %d", dispatch.ErrTemporary, n)
		}
		done[in.Seq] = append(done[in.Seq], in.N)
		return in.N, nil
	})
	parent := dispatch.Func("orderedParent", func(ctx context.Context, in []seqItem) (int, error) {
		out, err := child.Gather(ctx, in)
		return len(out), err
	}).Eager() // its children are stored with it: in the order parents are dispatched
	rt := StartRuntime(t, dispatch.Config{Store: s, Workers: 16,
		RetryPolicy: &dispatch.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}},
		child, parent)
	_ = rt
	var ids []string
	for n := range perSeq {
		// One batch a round: each parent gathers one call of every
		// sequence; a sequence's calls come from one parent after another.
		items := make([]seqItem, seqs)
		for i := range items {
			items[i] = seqItem{Seq: fmt.Sprintf("s%d", i), N: n}
			if rand.IntN(4) == 0 {
				items[i].Fail = 1 + rand.IntN(2)
			}
		}
		id, err := parent.Dispatch(ctx, items)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		if c := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed); c.State != dispatch.StateDone {
			t.Fatalf("parent %s: %v %s", id, c.State, c.Error)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatal(errors.New(fmt.Sprint(errs)))
	}
	for i := range seqs {
		seq := fmt.Sprintf("s%d", i)
		want := make([]int, perSeq)
		for n := range want {
			want[n] = n
		}
		if !slices.Equal(done[seq], want) {
			t.Errorf("sequence %s succeeded in the order %v, want %v", seq, done[seq], want)
		}
	}
}
