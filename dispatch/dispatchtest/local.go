package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseLocal covers local calls (dispatch.Call.Local): children stored
// in their parent's plan and written once, when they end; what the store
// shows of them meanwhile; the fence on their parent's lease; and the plan
// dropped after a crash, at shutdown, and when it completes.
func exerciseLocal(t *testing.T, open OpenFunc) {
	ctx := context.Background()
	lease := T0.Add(time.Minute)

	// planned inserts parent p, waiting at attempt 1 on n children of which
	// those in local run here (leased to owner "o"), the others stored
	// running, leased to "o" too.
	planned := func(t *testing.T, s dispatch.Store, n int, local ...int) []*dispatch.Call {
		t.Helper()
		p := newCall("p", "parent", `{"event":1}`, T0)
		p.State, p.Attempt, p.Gathers, p.Waiting, p.Meta = dispatch.StateWaiting, 1, 1, n, []byte(`meta`)
		calls := []*dispatch.Call{p}
		for i := range n {
			c := &dispatch.Call{ID: fmt.Sprintf("p.0.%d", i), Function: "f", Key: fmt.Sprintf("k%d", i),
				Input: []byte(fmt.Sprintf(`{"i":%d}`, i)), ParentID: "p", Index: i, Meta: p.Meta, RunAfter: T0,
				CreatedAt: T0, State: dispatch.StateRunning, Attempt: 1, LeaseOwner: "o", LeaseExpires: lease,
				Local: slices.Contains(local, i)}
			calls = append(calls, c)
		}
		mustInsert(t, s, calls...)
		return calls[1:]
	}
	finishLocal := func(t *testing.T, s dispatch.Store, c *dispatch.Call, p *dispatch.CallFinishParams) *dispatch.CallFinishResult {
		t.Helper()
		p.ID, p.Attempt, p.ParentID, p.Local = c.ID, 1, "p", c
		if p.ParentAttempt == 0 {
			p.ParentAttempt = 1
		}
		return mustFinish(t, s, p)
	}
	rows := func(s dispatch.Store) map[string]int64 {
		if r, ok := s.(dispatch.StatsReporter); ok {
			return r.StoreStats().Rows
		}
		return nil
	}

	t.Run("ShownWhileRunning", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		before := rows(s)
		planned(t, s, 3, 0, 1)
		if r := rows(s); r != nil && r["calls inserted"]-before["calls inserted"] != 2 {
			t.Errorf("inserting a parent with 2 local children and 1 stored wrote %d call rows, want 2 (rows %v)",
				r["calls inserted"]-before["calls inserted"], r)
		}
		if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 3 || p.Gathers != 1 {
			t.Fatalf("parent %+v, want waiting on 3 children", p)
		}
		kids, err := s.CallListChildren(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"p.0.0", "p.0.1", "p.0.2"}; !slices.Equal(ids(kids), want) {
			t.Fatalf("children %v, want %v", ids(kids), want)
		}
		for i, k := range kids {
			if k.State != dispatch.StateRunning || k.Key != fmt.Sprintf("k%d", i) || k.Function != "f" || k.ParentID != "p" ||
				k.Index != i || k.LeaseOwner != "o" || k.Attempt != 1 {
				t.Errorf("child %d shown as %+v, want running, leased to o, with its key", i, k)
			}
		}
		c := mustGet(t, s, "p.0.1")
		if c.State != dispatch.StateRunning || string(c.Input) != `{"i":1}` || c.Key != "k1" || c.ParentID != "p" ||
			!c.CreatedAt.Equal(T0) || string(c.Meta) != "meta" {
			t.Fatalf("local call read as %+v, want it running with its input, key, parent and meta", c)
		}
		for _, id := range []string{"p.0.3", "p.1.0", "q.0.0", "p"} {
			if id == "p" {
				continue
			}
			if _, err := s.CallGet(ctx, id); !errors.Is(err, dispatch.ErrNotFound) {
				t.Errorf("CallGet(%s) = %v, want ErrNotFound", id, err)
			}
		}
		list, err := s.CallList(ctx, &dispatch.CallListParams{Function: "f", State: dispatch.StateRunning, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"p.0.0", "p.0.1", "p.0.2"}; !slices.Equal(ids(list), want) {
			t.Fatalf("running calls listed %v, want %v", ids(list), want)
		}
		k1 := "k1"
		list, err = s.CallList(ctx, &dispatch.CallListParams{Function: "f", State: dispatch.StateRunning, Key: &k1, Limit: 10})
		if err != nil || !slices.Equal(ids(list), []string{"p.0.1"}) {
			t.Fatalf("running calls of k1 listed %v, %v; want [p.0.1]", ids(list), err)
		}
		list, err = s.CallList(ctx, &dispatch.CallListParams{Function: "f", State: dispatch.StateRunning, After: "p.0.0", Limit: 1})
		if err != nil || !slices.Equal(ids(list), []string{"p.0.1"}) {
			t.Fatalf("a page of running calls after p.0.0 listed %v, %v; want [p.0.1]", ids(list), err)
		}
		list, err = s.CallList(ctx, &dispatch.CallListParams{Function: "f", State: dispatch.StatePending, Limit: 10})
		if err != nil || len(list) != 0 {
			t.Fatalf("pending calls listed %v, %v; want none", ids(list), err)
		}
		counts, err := s.CallCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []dispatch.CallCount{{Function: "f", State: dispatch.StateRunning, N: 3},
			{Function: "parent", State: dispatch.StateWaiting, N: 1}}
		if !slices.Equal(counts, want) {
			t.Fatalf("CallCounts = %v, want %v", counts, want)
		}
	})

	t.Run("OneRowEach", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		kids := planned(t, s, 3, 0, 1, 2)
		before := rows(s)
		res := finishLocal(t, s, kids[0], &dispatch.CallFinishParams{State: dispatch.StateDone, Output: []byte(`"ok"`), Now: T0})
		if !res.Applied || res.ParentResumed {
			t.Fatalf("finish of a local call = %+v, want applied, the parent still waiting", res)
		}
		if r := rows(s); r != nil {
			if d := rowsDiff(before, r); !mapsEqual(d, map[string]int64{"calls inserted": 1}) {
				t.Errorf("finishing a local call wrote rows %v, want one call inserted and nothing else", d)
			}
		}
		c := mustGet(t, s, "p.0.0")
		if c.State != dispatch.StateDone || string(c.Output) != `"ok"` || string(c.Input) != `{"i":0}` || c.Key != "k0" ||
			c.Attempt != 1 || c.ParentID != "p" || string(c.Meta) != "meta" || c.LeaseOwner != "" {
			t.Fatalf("finished local call stored as %+v", c)
		}
		if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 3 {
			t.Fatalf("parent %+v, want waiting, its count untouched until its plan completes", p)
		}
		// A failed first attempt to retry is stored pending, with its record.
		res = finishLocal(t, s, kids[1], &dispatch.CallFinishParams{State: dispatch.StatePending, Error: "503",
			Status: dispatch.StatusTemporary, RunAfter: T0.Add(time.Minute), Now: T0,
			Record: &dispatch.Attempt{CallID: "p.0.1", Attempt: 1, Started: T0, Status: dispatch.StatusTemporary, Error: "503"}})
		if !res.Applied || res.ParentResumed {
			t.Fatalf("retry of a local call = %+v, want applied", res)
		}
		c = mustGet(t, s, "p.0.1")
		if c.State != dispatch.StatePending || c.Failures != 1 || c.Attempt != 1 || !c.RunAfter.Equal(T0.Add(time.Minute)) {
			t.Fatalf("retried local call stored as %+v, want pending at T0+1m after 1 failure", c)
		}
		if a, err := s.CallAttempts(ctx, "p.0.1"); err != nil || len(a) != 1 || a[0].Error != "503" {
			t.Fatalf("attempts of the retried call %v, %v", a, err)
		}
		// The last: the plan completes, and the parent waits for the retry.
		res = finishLocal(t, s, kids[2], &dispatch.CallFinishParams{State: dispatch.StateDone, Now: T0,
			FinishParent: true, ParentOutput: []byte(`"never"`), ParentGathers: 1})
		if !res.Applied || res.ParentResumed || res.ParentFinished {
			t.Fatalf("last local finish = %+v, want applied, the parent waiting for the retry", res)
		}
		if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 1 || p.LeaseOwner != "" {
			t.Fatalf("parent %+v, want waiting on 1 child, unleased", p)
		}
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: lease.Add(time.Hour)}); err != nil || n != 0 {
			t.Fatalf("release after the plan completed = %d, %v; want 0: no plan is left", n, err)
		}
		retried := mustClaimAll(t, s, "o2", T0.Add(time.Minute))
		if !slices.Equal(ids(retried), []string{"p.0.1"}) {
			t.Fatalf("claimed %v, want the retry", ids(retried))
		}
		res = mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.1", Attempt: retried[0].Attempt, ParentID: "p",
			State: dispatch.StateDone, Now: T0.Add(time.Minute)})
		if !res.ParentResumed {
			t.Fatalf("finish of the retry = %+v, want the parent resumed", res)
		}
		kids2, err := s.CallListChildren(ctx, "p")
		if err != nil || len(kids2) != 3 {
			t.Fatalf("children %v, %v", ids(kids2), err)
		}
		for _, k := range kids2 {
			if k.State != dispatch.StateDone {
				t.Errorf("child %s is %v, want done", k.ID, k.State)
			}
		}
	})

	t.Run("Fenced", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		kids := planned(t, s, 2, 0, 1)
		other := *kids[0]
		other.LeaseOwner = "zombie"
		for _, tc := range []struct {
			name string
			c    *dispatch.Call
			pa   int
		}{{"OtherOwner", &other, 1}, {"OtherParentAttempt", kids[0], 2}} {
			res := finishLocal(t, s, tc.c, &dispatch.CallFinishParams{State: dispatch.StateDone, ParentAttempt: tc.pa, Now: T0})
			if res.Applied {
				t.Errorf("%s: a finish outside the parent's lease was applied", tc.name)
			}
		}
		if c := mustGet(t, s, "p.0.0"); c.State != dispatch.StateRunning {
			t.Fatalf("after fenced finishes, the local call is %+v, want still running (planned)", c)
		}
	})

	for _, tc := range []struct {
		name    string
		release *dispatch.CallLeaseReleaseParams
	}{
		{"Expired", &dispatch.CallLeaseReleaseParams{Now: lease}},
		{"Owner", &dispatch.CallLeaseReleaseParams{Owner: "o"}},
	} {
		t.Run("Dropped"+tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t, t.Name())
			defer s.Close()
			kids := planned(t, s, 4, 0, 1, 2)
			finishLocal(t, s, kids[0], &dispatch.CallFinishParams{State: dispatch.StateDone, Now: T0})
			if tc.release.Owner == "" {
				// Not expired yet: nothing happens.
				if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: lease.Add(-time.Second)}); err != nil || n != 0 {
					t.Fatalf("release before expiry = %d, %v; want 0", n, err)
				}
				if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Owner: "other"}); err != nil || n != 0 {
					t.Fatalf("release of another owner = %d, %v; want 0", n, err)
				}
			}
			n, err := s.CallLeaseRelease(ctx, tc.release)
			if err != nil {
				t.Fatal(err)
			}
			if n != 3 {
				t.Fatalf("released %d, want 3: the 2 local calls without a row, and the stored one", n)
			}
			if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 3 || p.LeaseOwner != "" {
				t.Fatalf("parent %+v, want waiting on its 3 unfinished children, unleased", p)
			}
			for i, want := range []dispatch.State{dispatch.StateDone, dispatch.StatePending, dispatch.StatePending, dispatch.StatePending} {
				c := mustGet(t, s, fmt.Sprintf("p.0.%d", i))
				if c.State != want {
					t.Errorf("child %d is %v, want %v", i, c.State, want)
				}
				if i > 0 && (string(c.Input) != fmt.Sprintf(`{"i":%d}`, i) || c.Key != fmt.Sprintf("k%d", i) || c.Function != "f" ||
					string(c.Meta) != "meta" || c.Index != i) {
					t.Errorf("child %d stored as %+v, want its function, key, input and meta", i, c)
				}
			}
			// The process that held the plan finishes late: fenced.
			if res := finishLocal(t, s, kids[1], &dispatch.CallFinishParams{State: dispatch.StateDone, Now: T0}); res.Applied {
				t.Fatal("a local call finished after its parent's plan was dropped")
			}
			if c := mustGet(t, s, "p.0.1"); c.State != dispatch.StatePending {
				t.Fatalf("child 1 is %v after the late finish, want pending", c.State)
			}
			claimed := mustClaimAll(t, s, "o2", lease)
			if want := []string{"p.0.1", "p.0.2", "p.0.3"}; !slices.Equal(sorted(ids(claimed)), want) {
				t.Fatalf("claimed %v, want %v", ids(claimed), want)
			}
			var last *dispatch.CallFinishResult
			for _, c := range claimed {
				last = mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: "p",
					State: dispatch.StateDone, Now: lease})
			}
			if !last.ParentResumed {
				t.Fatal("the last child did not resume the parent")
			}
		})
	}

	t.Run("Renewed", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		planned(t, s, 2, 0, 1)
		if err := s.CallLeaseRenew(ctx, &dispatch.CallLeaseRenewParams{Owner: "o", IDs: []string{"p"},
			LeaseUntil: T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: lease.Add(time.Minute)}); err != nil || n != 0 {
			t.Fatalf("release after renewal = %d, %v; want 0", n, err)
		}
		if err := s.CallLeaseRenew(ctx, &dispatch.CallLeaseRenewParams{Owner: "zombie", IDs: []string{"p"},
			LeaseUntil: T0.Add(10 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: T0.Add(2 * time.Hour)}); err != nil || n != 2 {
			t.Fatalf("release after the renewed lease expired = %d, %v; want 2 (another owner cannot renew it)", n, err)
		}
	})

	t.Run("FinishParent", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		kids := planned(t, s, 2, 0, 1)
		finishLocal(t, s, kids[0], &dispatch.CallFinishParams{State: dispatch.StateDone, Now: T0})
		res := finishLocal(t, s, kids[1], &dispatch.CallFinishParams{State: dispatch.StateFailed, Error: "gone",
			Status: dispatch.StatusPermanent, Now: T0, FinishParent: true, ParentOutput: []byte(`"all"`), ParentGathers: 1})
		if !res.Applied || !res.ParentFinished {
			t.Fatalf("last local finish with FinishParent = %+v, want the parent finished", res)
		}
		p := mustGet(t, s, "p")
		if p.State != dispatch.StateDone || string(p.Output) != `"all"` || p.Attempt != 2 || p.LeaseOwner != "" {
			t.Fatalf("parent %+v, want done with the inline run's output at attempt 2", p)
		}
		if c := mustGet(t, s, "p.0.1"); c.State != dispatch.StateFailed || c.Error != "gone" {
			t.Fatalf("failed local call stored as %+v", c)
		}
	})

	t.Run("ResumeOwner", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		kids := planned(t, s, 2, 0, 1)
		finishLocal(t, s, kids[0], &dispatch.CallFinishParams{State: dispatch.StateDone, Output: []byte(`0`), Now: T0})
		res := finishLocal(t, s, kids[1], &dispatch.CallFinishParams{State: dispatch.StateDone, Output: []byte(`1`), Now: T0,
			ResumeOwner: "o", ResumeLeaseUntil: lease})
		if !res.ParentResumed || res.Parent == nil || res.Parent.ID != "p" || res.Parent.Attempt != 2 {
			t.Fatalf("last local finish with ResumeOwner = %+v, want the parent leased at attempt 2", res)
		}
		if res.ParentChildren != nil && len(res.ParentChildren) != 2 {
			t.Fatalf("ParentChildren %v, want both", ids(res.ParentChildren))
		}
	})

	t.Run("Suspend", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("p", "parent", `{}`, T0))
		p := mustClaim(t, s, "o", T0, 1, "parent")[0]
		var children []*dispatch.Call
		for i := range 3 {
			children = append(children, &dispatch.Call{ID: fmt.Sprintf("p.0.%d", i), Function: "f", Input: []byte(`{}`),
				ParentID: "p", Index: i, RunAfter: T0, CreatedAt: T0, State: dispatch.StateRunning, Attempt: 1,
				LeaseOwner: "o", LeaseExpires: lease, Local: i < 2})
		}
		children[2].State, children[2].Attempt, children[2].LeaseOwner = dispatch.StatePending, 0, ""
		ok, err := s.CallSuspend(ctx, &dispatch.CallSuspendParams{ID: "p", Attempt: p.Attempt, Gather: 0, Children: children, Now: T0})
		if err != nil || !ok {
			t.Fatalf("CallSuspend = %v, %v", ok, err)
		}
		kids, err := s.CallListChildren(ctx, "p")
		if err != nil || len(kids) != 3 || kids[0].State != dispatch.StateRunning || kids[2].State != dispatch.StatePending {
			t.Fatalf("children after a suspend with 2 local: %+v, %v", kids, err)
		}
		for i := range 2 {
			res := mustFinish(t, s, &dispatch.CallFinishParams{ID: children[i].ID, Attempt: 1, ParentID: "p",
				Local: children[i], ParentAttempt: p.Attempt, State: dispatch.StateDone, Now: T0})
			if !res.Applied || res.ParentResumed {
				t.Fatalf("local finish %d = %+v", i, res)
			}
		}
		c := mustClaim(t, s, "o", T0, 10)
		if len(c) != 1 || c[0].ID != "p.0.2" {
			t.Fatalf("claimed %v, want the stored child", ids(c))
		}
		if res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.2", Attempt: c[0].Attempt, ParentID: "p",
			State: dispatch.StateDone, Now: T0}); !res.ParentResumed {
			t.Fatalf("last finish = %+v, want the parent resumed", res)
		}
	})

	t.Run("AttachAndRedrive", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		kids := planned(t, s, 3, 0, 1, 2)
		// While its local calls run, the parent is busy for an attach:
		// their rows, which an attach checks for repeats, are to come.
		res, err := s.CallAttach(ctx, &dispatch.CallAttachParams{Calls: []*dispatch.Call{{ParentID: "p", Function: "f",
			Key: "k0", Input: []byte(`{}`)}}, Unless: dispatch.AttachUnlessKey, Now: T0})
		if err != nil || len(res) != 1 || res[0].Outcome != dispatch.AttachBusy {
			t.Fatalf("attach to a parent with a plan = %+v, %v; want busy", res, err)
		}
		// A local call that failed for good is re-driven while its
		// siblings still run: the parent keeps its plan's lease.
		finishLocal(t, s, kids[0], &dispatch.CallFinishParams{State: dispatch.StateFailed, Error: "410",
			Status: dispatch.StatusPermanent, Now: T0})
		if done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: []string{"p.0.0"}, Now: T0}); err != nil ||
			!slices.Equal(done, []string{"p.0.0"}) {
			t.Fatalf("redrive = %v, %v", done, err)
		}
		if p := mustGet(t, s, "p"); p.LeaseOwner != "o" {
			t.Fatalf("parent after a redrive of a child: %+v, want still leased to o", p)
		}
		finishLocal(t, s, kids[1], &dispatch.CallFinishParams{State: dispatch.StateDone, Now: T0})
		finishLocal(t, s, kids[2], &dispatch.CallFinishParams{State: dispatch.StateDone, Now: T0})
		if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 1 || p.LeaseOwner != "" {
			t.Fatalf("parent %+v, want waiting on the re-driven child alone", p)
		}
		c := mustClaimAll(t, s, "o", T0)
		if len(c) != 1 || c[0].ID != "p.0.0" {
			t.Fatalf("claimed %v, want the re-driven child", ids(c))
		}
		if r := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.0", Attempt: c[0].Attempt, ParentID: "p",
			State: dispatch.StateDone, Now: T0}); !r.ParentResumed {
			t.Fatalf("finish of the re-driven child = %+v, want the parent resumed", r)
		}
	})

	t.Run("FinishMany", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mf, ok := s.(dispatch.ManyFinisher)
		if !ok {
			t.Skip("the store does not implement dispatch.ManyFinisher")
		}
		kids := planned(t, s, 3, 0, 1, 2)
		params := func(owner string, last bool) []*dispatch.CallFinishParams {
			var ps []*dispatch.CallFinishParams
			for i, c := range kids {
				l := *c
				l.LeaseOwner = owner
				p := &dispatch.CallFinishParams{ID: c.ID, Attempt: 1, ParentID: "p", Local: &l, ParentAttempt: 1,
					State: dispatch.StateDone, Output: []byte(fmt.Sprint(i)), Now: T0}
				if last && i == len(kids)-1 {
					p.FinishParent, p.ParentOutput, p.ParentGathers = true, []byte(`"all"`), 1
				}
				ps = append(ps, p)
			}
			return ps
		}
		res, err := mf.CallFinishMany(ctx, params("zombie", true))
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Applied {
				t.Errorf("finish %d by another owner applied", i)
			}
		}
		before := rows(s)
		res, err = mf.CallFinishMany(ctx, params("o", true))
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if !r.Applied || r.ParentFinished != (i == 2) {
				t.Errorf("finish %d = %+v, want applied, the last finishing the parent", i, r)
			}
		}
		if r := rows(s); r != nil {
			if d := rowsDiff(before, r); !mapsEqual(d, map[string]int64{"calls inserted": 3, "calls updated": 1}) {
				t.Errorf("three local finishes together wrote %v, want 3 calls inserted and the parent updated", d)
			}
		}
		for i := range kids {
			if c := mustGet(t, s, kids[i].ID); c.State != dispatch.StateDone || string(c.Output) != fmt.Sprint(i) {
				t.Errorf("child %d stored as %+v", i, c)
			}
		}
		if p := mustGet(t, s, "p"); p.State != dispatch.StateDone || string(p.Output) != `"all"` || p.LeaseOwner != "" {
			t.Fatalf("parent %+v, want done with the inline output, unleased", p)
		}
	})

	t.Run("DuplicateParent", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		for i, id := range []string{"p", "q"} {
			p := newCall(id, "parent", `{}`, T0)
			p.DedupKey, p.State, p.Attempt, p.Gathers, p.Waiting = "same", dispatch.StateWaiting, 1, 1, 1
			c := &dispatch.Call{ID: id + ".0.0", Function: "f", Input: []byte(`{}`), ParentID: id, RunAfter: T0,
				CreatedAt: T0, State: dispatch.StateRunning, Attempt: 1, LeaseOwner: "o", LeaseExpires: lease, Local: true}
			got, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{p, c}, DedupSince: T0})
			if err != nil {
				t.Fatal(err)
			}
			if i == 1 && (got[0] != "p" || got[1] == c.ID) {
				t.Fatalf("insert of a duplicate = %v, want [p, not q.0.0]", got)
			}
		}
		if _, err := s.CallGet(ctx, "q.0.0"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("the local child of a duplicate: %v, want ErrNotFound", err)
		}
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Owner: "o"}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v; want 1 (p's child only)", n, err)
		}
	})
}

func mustClaimAll(t testing.TB, s dispatch.Store, owner string, now time.Time) []*dispatch.Call {
	t.Helper()
	var out []*dispatch.Call
	keys, err := s.CallKeys(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		calls, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{Key: k, Owner: owner,
			Functions: []string{"f"}, Limit: 100, Now: now, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, calls...)
	}
	return out
}

// rowsDiff returns what after counts beyond before.
func rowsDiff(before, after map[string]int64) map[string]int64 {
	d := make(map[string]int64)
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
