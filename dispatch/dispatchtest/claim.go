package dispatchtest

import (
	"context"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseClaim covers CallClaim and CallKeys: what is runnable, oldest first,
// within a limit, by function and by key.
func exerciseClaim(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("WithParentInput", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("p", "parent", `{"payload": [1, 2]}`, T0.Add(time.Hour)),
			&dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", RunAfter: T0, CreatedAt: T0},
			newCall("top", "f", `{}`, T0))
		got := mustClaim(t, s, "o", T0, 10)
		if len(got) != 2 {
			t.Fatalf("claimed %v, want p.0.0 and top", ids(got))
		}
		for _, c := range got {
			want := ""
			if c.ID == "p.0.0" {
				want = `{"payload": [1, 2]}`
			}
			if string(c.ParentInput) != want {
				t.Fatalf("claimed %s with ParentInput %q, want %q (its parent's input, byte for byte)", c.ID, c.ParentInput, want)
			}
		}
	})

	t.Run("Claim", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s,
			newCall("late", "f", `{}`, T0.Add(time.Hour)),
			newCall("second", "f", `{}`, T0.Add(time.Second)),
			newCall("first", "f", `{}`, T0),
			newCall("other", "g", `{}`, T0),
			newCall("third", "f", `{}`, T0.Add(2*time.Second)),
		)
		now := T0.Add(5 * time.Second)
		got := mustClaim(t, s, "o1", now, 2)
		if want := []string{"first", "second"}; !slices.Equal(ids(got), want) {
			t.Fatalf("claimed %v, want %v (oldest first, limited)", ids(got), want)
		}
		for _, c := range got {
			if c.State != dispatch.StateRunning || c.Attempt != 1 || c.LeaseOwner != "o1" || string(c.Input) != "{}" {
				t.Fatalf("claimed call %+v, want running, attempt 1, owner o1, with its input", c)
			}
		}
		got = mustClaim(t, s, "o2", now, 10)
		if want := []string{"third"}; !slices.Equal(ids(got), want) {
			t.Fatalf("second claim got %v, want %v (running, future and other functions skipped)", ids(got), want)
		}
		got = mustClaim(t, s, "o2", now, 10, "f", "g")
		if want := []string{"other"}; !slices.Equal(ids(got), want) {
			t.Fatalf("claim of f and g got %v, want %v", ids(got), want)
		}
		if c := mustGet(t, s, "first"); c.State != dispatch.StateRunning || c.LeaseOwner != "o1" ||
			!c.LeaseExpires.Equal(now.Add(time.Minute)) {
			t.Fatalf("stored claimed call %+v, want running with o1's lease", c)
		}
	})

	t.Run("Keys", func(t *testing.T) {
		t.Parallel()
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
}
