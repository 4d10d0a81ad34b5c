package dispatchtest

import (
	"context"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseLeases covers leases: renewal, expiry, release by owner, a call
// taken over, and calls inserted already leased.
func exerciseLeases(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("Leases", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("a", "f", `{}`, T0), newCall("b", "f", `{}`, T0), newCall("c", "f", `{}`, T0))
		claimed := mustClaim(t, s, "o1", T0, 2) // a, b leased until T0+1m
		mustClaim(t, s, "o2", T0, 1)            // c
		if err := s.CallLeaseRenew(ctx, &dispatch.CallLeaseRenewParams{Owner: "o1", IDs: []string{"a"},
			LeaseUntil: T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		// Renewing a lease held by someone else changes nothing.
		if err := s.CallLeaseRenew(ctx, &dispatch.CallLeaseRenewParams{Owner: "o1", IDs: []string{"c"},
			LeaseUntil: T0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: T0.Add(2 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("released %d expired leases, want 2 (b and c; a was renewed)", n)
		}
		again := mustClaim(t, s, "o3", T0.Add(2*time.Minute), 10)
		if want := []string{"b", "c"}; !slices.Equal(sorted(ids(again)), want) {
			t.Fatalf("reclaimed %v, want %v", ids(again), want)
		}
		var b *dispatch.Call
		for _, c := range claimed {
			if c.ID == "b" {
				b = c
			}
		}
		if res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "b", Attempt: b.Attempt, State: dispatch.StateDone}); res.Applied {
			t.Fatal("the first owner finished a call that was taken over")
		}
		n, err = s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Owner: "o3"})
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("released %d calls of o3, want 2", n)
		}
		if c := mustGet(t, s, "a"); c.State != dispatch.StateRunning || c.LeaseOwner != "o1" {
			t.Fatalf("call a %+v, want still running for o1", c)
		}
	})

	t.Run("InsertLeased", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		c := newCall("c", "f", `{}`, T0)
		c.State, c.Attempt, c.LeaseOwner, c.LeaseExpires = dispatch.StateRunning, 1, "o", T0.Add(time.Minute)
		mustInsert(t, s, c)
		if got := mustClaim(t, s, "o2", T0, 10); len(got) != 0 {
			t.Fatal("a call inserted leased was claimed")
		}
		if n, err := s.CallLeaseRelease(ctx, &dispatch.CallLeaseReleaseParams{Now: T0.Add(2 * time.Minute)}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v; want the expired lease released", n, err)
		}
		got := mustClaim(t, s, "o2", T0.Add(2*time.Minute), 10)
		if len(got) != 1 || got[0].Attempt != 2 {
			t.Fatalf("reclaimed %+v, want attempt 2", got)
		}
	})
}
