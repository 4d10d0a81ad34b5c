package dispatchtest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseList covers the reads for operators: CallList, CallCounts and
// CallBacklog.
func exerciseList(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("ListFailedByKey", func(t *testing.T) {
		t.Parallel()
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

	t.Run("CallCounts", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("a", "f", `{}`, T0), newCall("b", "f", `{}`, T0), newCall("c", "g", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: dispatch.StateDone})
		got, err := s.CallCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []dispatch.CallCount{{Function: "f", State: dispatch.StatePending, N: 1},
			{Function: "f", State: dispatch.StateDone, N: 1}, {Function: "g", State: dispatch.StatePending, N: 1}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("CallCounts = %v, want %v", got, want)
		}
	})

	t.Run("CallBacklog", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		if got, err := s.CallBacklog(ctx); err != nil || len(got) != 0 {
			t.Fatalf("CallBacklog of an empty store = %v, %v", got, err)
		}
		other := keyed("g1", "a", T0) // another function, the same key
		other.Function = "g"
		mustInsert(t, s,
			keyed("a1", "a", T0), keyed("a2", "a", T0.Add(time.Hour)), // a retry waiting counts
			keyed("b1", "b", T0), keyed("b2", "b", T0),
			keyed("c1", "c", T0), other)
		if running := mustClaimKey(t, s, "b", T0, 1); len(running) != 1 { // running: not a backlog
			t.Fatalf("claimed %d calls of b, want 1", len(running))
		}
		done := mustClaimKey(t, s, "c", T0, 1)
		if len(done) != 1 {
			t.Fatalf("claimed %d calls of c, want 1", len(done))
		}
		c := done[0]
		mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, State: dispatch.StateDone})
		got, err := s.CallBacklog(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := []dispatch.KeyCount{{Key: "a", N: 3}, {Key: "b", N: 1}}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("CallBacklog = %v, want %v", got, want)
		}
	})
}
