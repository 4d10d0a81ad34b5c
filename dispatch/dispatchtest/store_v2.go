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

// exerciseStoreKeys covers keys, dedup, attempts, snooze, listing, re-drive
// and documents.
func exerciseStoreKeys(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("Keys", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, keyed("a1", "a", T0), keyed("a2", "a", T0.Add(time.Second)), keyed("b1", "b", T0),
			keyed("c1", "c", T0.Add(time.Hour)), keyed("n1", "", T0))
		keys, err := s.CallKeys(ctx, T0.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"", "a", "b"}; !slices.Equal(sorted(keys), want) {
			t.Fatalf("CallKeys = %q, want %q (c has nothing runnable yet)", keys, want)
		}
		got := mustClaimKey(t, s, "a", T0.Add(time.Second), 10)
		if want := []string{"a1", "a2"}; !slices.Equal(ids(got), want) || got[0].Key != "a" {
			t.Fatalf("claim of key a = %v, want %v with their key", ids(got), want)
		}
		if got := mustClaimKey(t, s, "", T0, 10); !slices.Equal(ids(got), []string{"n1"}) {
			t.Fatalf("claim of key \"\" = %v, want [n1]", ids(got))
		}
		keys, _ = s.CallKeys(ctx, T0.Add(2*time.Hour))
		if want := []string{"b", "c"}; !slices.Equal(sorted(keys), want) {
			t.Fatalf("CallKeys later = %q, want %q", keys, want)
		}
		if c := mustGet(t, s, "b1"); c.Key != "b" || !c.BudgetStart.Equal(T0) {
			t.Fatalf("stored %+v, want key b and budget starting at creation", c)
		}
	})

	t.Run("Dedup", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		insert := func(since time.Time, calls ...*dispatch.Call) []string {
			t.Helper()
			got, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: calls, DedupSince: since})
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		withKey := func(id, key string, created time.Time) *dispatch.Call {
			c := newCall(id, "f", `{}`, created)
			c.DedupKey, c.CreatedAt = key, created
			return c
		}
		child := func(id, parent string) *dispatch.Call {
			c := newCall(id, "f", `{}`, T0)
			c.ParentID = parent
			return c
		}
		if got := insert(T0, withKey("e1", "k1", T0), child("e1.0.0", "e1"), withKey("e2", "", T0)); !slices.Equal(got, []string{"e1", "e1.0.0", "e2"}) {
			t.Fatalf("first insert = %v", got)
		}
		got := insert(T0, withKey("e3", "k1", T0.Add(time.Minute)), child("e3.0.0", "e3"), withKey("e4", "k2", T0),
			withKey("e5", "k2", T0), child("e5.0.0", "e5"))
		if want := []string{"e1", "", "e4", "e4", ""}; !slices.Equal(got, want) {
			t.Fatalf("insert with duplicates = %q, want %q", got, want)
		}
		for _, id := range []string{"e3", "e3.0.0", "e5", "e5.0.0"} {
			if _, err := s.CallGet(ctx, id); !errors.Is(err, dispatch.ErrNotFound) {
				t.Fatalf("duplicate %s was stored", id)
			}
		}
		// Past the window, the key is free again.
		if got := insert(T0.Add(time.Second), withKey("e6", "k1", T0.Add(time.Hour))); !slices.Equal(got, []string{"e6"}) {
			t.Fatalf("insert after the window = %v, want [e6]", got)
		}
		if got := insert(T0, withKey("e7", "k1", T0.Add(2*time.Hour))); !slices.Equal(got, []string{"e6"}) {
			t.Fatalf("the key now names e6: got %v", got)
		}
	})

	t.Run("AttemptsAndSnooze", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StatePending,
			RunAfter: T0.Add(time.Second), Error: "503", Status: dispatch.StatusTemporary,
			Record: &dispatch.Attempt{Started: T0, Duration: 250 * time.Millisecond, Status: dispatch.StatusTemporary,
				Error: "destination answered 503", Detail: []byte(`{"status_code":503}`)}})
		c = mustClaim(t, s, "o", T0.Add(time.Second), 1)[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StatePending,
			RunAfter: T0.Add(2 * time.Second), Snooze: true})
		if got := mustGet(t, s, "c"); got.Failures != 1 || got.State != dispatch.StatePending {
			t.Fatalf("snoozed call %+v, want pending with its 1 failure, not 2", got)
		}
		atts, err := s.CallAttempts(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		if len(atts) != 1 || atts[0].Attempt != 1 || atts[0].Duration != 250*time.Millisecond ||
			atts[0].Error != "destination answered 503" || string(atts[0].Detail) != `{"status_code":503}` ||
			!atts[0].Started.Equal(T0) || atts[0].Status != dispatch.StatusTemporary {
			t.Fatalf("CallAttempts = %+v, want the one recorded failure", atts)
		}
	})

	t.Run("ListFailedByKey", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		for i := range 5 {
			key := "a"
			if i%2 == 1 {
				key = "b"
			}
			c := keyed(fmt.Sprintf("c%d", i), key, T0)
			c.CreatedAt = T0.Add(time.Duration(i) * time.Minute)
			mustInsert(t, s, c)
			got := mustClaimKey(t, s, key, T0, 1)
			mustFinish(t, s, &dispatch.CallFinishParams{ID: got[0].ID, Attempt: 1, State: dispatch.StateFailed, Error: "410"})
		}
		mustInsert(t, s, keyed("pending", "a", T0))
		list := func(p dispatch.CallListParams) []string {
			t.Helper()
			p.Function, p.State = "f", dispatch.StateFailed
			got, err := s.CallList(ctx, &p)
			if err != nil {
				t.Fatal(err)
			}
			return ids(got)
		}
		a := "a"
		tests := []struct {
			name string
			p    dispatch.CallListParams
			want []string
		}{
			{"All", dispatch.CallListParams{Limit: 10}, []string{"c0", "c1", "c2", "c3", "c4"}},
			{"Key", dispatch.CallListParams{Key: &a, Limit: 10}, []string{"c0", "c2", "c4"}},
			{"Page", dispatch.CallListParams{Key: &a, Limit: 2}, []string{"c0", "c2"}},
			{"After", dispatch.CallListParams{Key: &a, After: "c2", Limit: 2}, []string{"c4"}},
			{"Since", dispatch.CallListParams{CreatedAfter: T0.Add(2 * time.Minute), Limit: 10}, []string{"c2", "c3", "c4"}},
			{"Before", dispatch.CallListParams{CreatedBefore: T0.Add(2 * time.Minute), Limit: 10}, []string{"c0", "c1"}},
		}
		for _, tc := range tests {
			if got := list(tc.p); !slices.Equal(got, tc.want) {
				t.Errorf("%s: CallList = %v, want %v", tc.name, got, tc.want)
			}
		}
	})

	t.Run("Redrive", func(t *testing.T) {
		s := open(t, t.Name())
		defer s.Close()
		// p gathered two children; one succeeded, one failed for good, so p failed.
		mustInsert(t, s, &dispatch.Call{ID: "p", Function: "parent", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0,
			State: dispatch.StateWaiting, Gathers: 1, Waiting: 2},
			&dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", RunAfter: T0, CreatedAt: T0},
			&dispatch.Call{ID: "p.0.1", Function: "f", Input: []byte(`{}`), ParentID: "p", Index: 1, RunAfter: T0, CreatedAt: T0},
			newCall("top", "f", `{}`, T0))
		for _, c := range mustClaim(t, s, "o", T0, 10) {
			state := dispatch.StateFailed
			if c.ID == "p.0.0" {
				state = dispatch.StateDone
			}
			mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: c.ParentID, State: state,
				Error: "gone", Status: dispatch.StatusPermanent})
		}
		pc := mustClaim(t, s, "o", T0, 10, "parent")[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "p", Attempt: pc.Attempt, State: dispatch.StateFailed, Error: "1 of 2 calls failed"})

		later := T0.Add(time.Hour)
		done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: []string{"p.0.1", "p.0.0", "top", "nope"}, Now: later})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"p.0.1", "top"}; !slices.Equal(done, want) {
			t.Fatalf("CallRedrive = %v, want %v (only failed calls)", done, want)
		}
		c := mustGet(t, s, "p.0.1")
		if c.State != dispatch.StatePending || c.Failures != 0 || !c.BudgetStart.Equal(later) || !c.RunAfter.Equal(later) {
			t.Fatalf("re-driven child %+v, want pending now with a fresh budget", c)
		}
		if p := mustGet(t, s, "p"); p.State != dispatch.StateWaiting || p.Waiting != 1 {
			t.Fatalf("parent %+v, want waiting for the re-driven child", p)
		}
		child := mustClaim(t, s, "o", later, 10)
		if want := []string{"p.0.1", "top"}; !slices.Equal(sorted(ids(child)), want) {
			t.Fatalf("claimed %v after re-drive, want %v", ids(child), want)
		}
		for _, c := range child {
			if c.ID != "p.0.1" {
				continue
			}
			res := mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: "p", State: dispatch.StateDone})
			if !res.ParentResumed {
				t.Fatal("the re-driven child finished but its parent did not resume")
			}
		}
		// A call whose parent is running is left alone.
		p := mustClaim(t, s, "o", later, 10, "parent")[0]
		mustInsert(t, s, &dispatch.Call{ID: "p.1.0", Function: "f", Input: []byte(`{}`), ParentID: "p", Gather: 1,
			RunAfter: T0, CreatedAt: T0, State: dispatch.StateFailed})
		if done, err := s.CallRedrive(ctx, &dispatch.CallRedriveParams{IDs: []string{"p.1.0"}, Now: later}); err != nil || len(done) != 0 {
			t.Fatalf("re-drive under a running parent (attempt %d) = %v, %v; want nothing", p.Attempt, done, err)
		}
	})

	t.Run("Docs", func(t *testing.T) {
		store := open(t, t.Name())
		defer store.Close()
		s, ok := store.(dispatch.DocStore)
		if !ok {
			t.Skipf("%T keeps no documents (dispatch.DocStore)", store)
		}
		d := &dispatch.Doc{Kind: "dest", ID: "d1", Data: []byte(`{"url":"http://a"}`), CreatedAt: T0}
		if err := s.DocCreate(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := s.DocCreate(ctx, &dispatch.Doc{Kind: "dest", ID: "d1", Data: []byte(`{}`), CreatedAt: T0}); !errors.Is(err, dispatch.ErrDocExists) {
			t.Fatalf("second DocCreate err = %v, want ErrDocExists", err)
		}
		if err := s.DocCreate(ctx, &dispatch.Doc{Kind: "other", ID: "d1", Data: []byte(`{}`), CreatedAt: T0}); err != nil {
			t.Fatalf("the same id in another kind: %v", err)
		}
		got, err := s.DocGet(ctx, "dest", "d1")
		if err != nil || string(got.Data) != `{"url":"http://a"}` || got.Version != 1 || !got.CreatedAt.Equal(T0) {
			t.Fatalf("DocGet = %+v, %v", got, err)
		}
		got.Data, got.UpdatedAt = []byte(`{"url":"http://b"}`), T0.Add(time.Second)
		if err := s.DocUpdate(ctx, got); err != nil || got.Version != 2 {
			t.Fatalf("DocUpdate = %v, version %d; want nil, 2", err, got.Version)
		}
		stale := &dispatch.Doc{Kind: "dest", ID: "d1", Data: []byte(`{}`), Version: 1, UpdatedAt: T0}
		if err := s.DocUpdate(ctx, stale); !errors.Is(err, dispatch.ErrDocConflict) {
			t.Fatalf("stale DocUpdate err = %v, want ErrDocConflict", err)
		}
		if err := s.DocUpdate(ctx, &dispatch.Doc{Kind: "dest", ID: "nope", Version: 1}); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("DocUpdate of a missing doc err = %v, want ErrNotFound", err)
		}
		s.DocCreate(ctx, &dispatch.Doc{Kind: "dest", ID: "d0", Data: []byte(`{}`), CreatedAt: T0})
		list, err := s.DocList(ctx, "dest")
		if err != nil || len(list) != 2 || list[0].ID != "d0" || list[1].ID != "d1" || list[1].Version != 2 ||
			string(list[1].Data) != `{"url":"http://b"}` {
			t.Fatalf("DocList = %+v, %v", list, err)
		}
		if err := s.DocDelete(ctx, "dest", "d1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.DocGet(ctx, "dest", "d1"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("DocGet after delete err = %v", err)
		}
		if err := s.DocDelete(ctx, "dest", "d1"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("second DocDelete err = %v", err)
		}
	})
}
