package dispatchtest

import (
	"context"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseFinish covers CallFinish of a call without a parent: done, retried
// or failed, fenced by its attempt, snoozed, and the records of failed
// attempts.
func exerciseFinish(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("FinishDoneAndFence", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		stale := mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt + 1, State: dispatch.StateDone})
		if stale.Applied {
			t.Fatal("finish with a wrong attempt applied, want it fenced off")
		}
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StateDone,
			Output: []byte(`{"ok":true}`), Status: dispatch.StatusOK, Now: T0.Add(time.Second)})
		if !res.Applied || res.ParentResumed {
			t.Fatalf("finish = %+v, want applied, no parent", res)
		}
		got := mustGet(t, s, "c")
		if got.State != dispatch.StateDone || string(got.Output) != `{"ok":true}` || got.LeaseOwner != "" ||
			!got.UpdatedAt.Equal(T0.Add(time.Second)) {
			t.Fatalf("finished call %+v, want done with output, no lease", got)
		}
		again := mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StateFailed})
		if again.Applied {
			t.Fatal("second finish of a done call applied")
		}
	})

	t.Run("FinishRetryAndFail", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
		c := mustClaim(t, s, "o", T0, 1)[0]
		retryAt := T0.Add(time.Minute)
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StatePending,
			RunAfter: retryAt, Error: "503 from upstream", Status: dispatch.StatusTemporary})
		got := mustGet(t, s, "c")
		if got.State != dispatch.StatePending || got.Failures != 1 || !got.RunAfter.Equal(retryAt) ||
			got.Error != "503 from upstream" || got.Status != dispatch.StatusTemporary {
			t.Fatalf("retried call %+v, want pending at %v with 1 failure and the error", got, retryAt)
		}
		if early := mustClaim(t, s, "o", retryAt.Add(-time.Millisecond), 1); len(early) != 0 {
			t.Fatalf("claimed %v before its retry time", ids(early))
		}
		c = mustClaim(t, s, "o", retryAt, 1)[0]
		if c.Attempt != 2 || c.Failures != 1 {
			t.Fatalf("reclaimed attempt=%d failures=%d, want 2 and 1", c.Attempt, c.Failures)
		}
		mustFinish(t, s, &dispatch.CallFinishParams{ID: "c", Attempt: c.Attempt, State: dispatch.StateFailed,
			Error: "410 gone", Status: dispatch.StatusPermanent})
		got = mustGet(t, s, "c")
		if got.State != dispatch.StateFailed || got.Failures != 2 || got.Error != "410 gone" {
			t.Fatalf("failed call %+v, want failed with 2 failures", got)
		}
	})

	t.Run("AttemptsAndSnooze", func(t *testing.T) {
		t.Parallel()
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
}
