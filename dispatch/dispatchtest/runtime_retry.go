package dispatchtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"fanout/dispatch"
)

// detailedError is a failure that describes itself for the attempt record.
type detailedError struct{ code int }

func (e *detailedError) Error() string           { return fmt.Sprintf("answered %d", e.code) }
func (e *detailedError) Status() dispatch.Status { return dispatch.StatusTemporary }
func (e *detailedError) Detail() any             { return map[string]int{"status_code": e.code} }

// exerciseRuntimeRetries runs the runtime's retries on the store, on a fake
// clock: the retry policy, Retry-After hints, spent budgets, permanent errors,
// panics and snoozes.
func exerciseRuntimeRetries(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("RetryOnFakeClock", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		clock := clockwork.NewFakeClockAt(T0)
		policy := &dispatch.Backoff{Initial: time.Minute, Max: time.Hour, MaxAttempts: 5, RandFunc: func() float64 { return 0.5 }}
		runs := make(chan int, 10)
		var n atomic.Int32
		flaky := dispatch.Func("flaky", func(ctx context.Context, in item) (string, error) {
			k := int(n.Add(1))
			runs <- k
			if k < 3 {
				return "", fmt.Errorf("%w: upstream busy (run %d)", dispatch.ErrTemporary, k)
			}
			return "ok", nil
		})
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, RetryPolicy: policy}, flaky)
		id, err := flaky.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		// Delays: jitter 0.5 of 1m, then 0.5 of 2m.
		wantAt := []time.Time{T0.Add(30 * time.Second), T0.Add(30*time.Second + time.Minute)}
		for i, at := range wantAt {
			receive(t, runs, fmt.Sprintf("run %d", i+1))
			c := WaitCall(t, s, id, dispatch.StatePending)
			for c.Failures != i+1 {
				c = WaitCall(t, s, id, dispatch.StatePending)
			}
			if !c.RunAfter.Equal(at) || !strings.Contains(c.Error, "upstream busy") || c.Status != dispatch.StatusTemporary {
				t.Fatalf("after failure %d: %+v, want pending until %v with the error", i+1, c, at)
			}
			clock.Advance(at.Sub(clock.Now()) - time.Second)
			select {
			case k := <-runs:
				t.Fatalf("run %d happened a second before its retry time", k)
			default:
			}
			clock.Advance(time.Second)
		}
		receive(t, runs, "run 3")
		c := WaitCall(t, s, id, dispatch.StateDone)
		if c.Attempt != 3 || c.Failures != 2 || string(c.Output) != `"ok"` {
			t.Fatalf("call %+v, want done on attempt 3 after 2 failures", c)
		}
	})

	t.Run("RetryAfterHint", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		clock := clockwork.NewFakeClockAt(T0)
		throttled := dispatch.Func("throttled", func(ctx context.Context, in item) (any, error) {
			return nil, dispatch.RetryAfter(fmt.Errorf("%w: 429", dispatch.ErrThrottled), 5*time.Minute)
		})
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, RetryPolicy: dispatch.DefaultBackoff()}, throttled)
		id, err := throttled.Dispatch(ctx, item{})
		if err != nil {
			t.Fatal(err)
		}
		c := WaitCall(t, s, id, dispatch.StatePending, dispatch.StateFailed)
		for c.Failures == 0 {
			c = WaitCall(t, s, id, dispatch.StatePending, dispatch.StateFailed)
		}
		if c.State != dispatch.StatePending || !c.RunAfter.Equal(T0.Add(5*time.Minute)) || c.Status != dispatch.StatusThrottled {
			t.Fatalf("call %+v, want a throttled retry at T0+5m as asked", c)
		}
	})

	t.Run("BudgetSpentAndPermanentErrors", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		policy := &dispatch.Backoff{Min: time.Millisecond, Initial: time.Millisecond, MaxAttempts: 3}
		always := dispatch.Func("always", func(ctx context.Context, in item) (any, error) {
			return nil, dispatch.ErrTimeout
		})
		final := dispatch.Func("final", func(ctx context.Context, in item) (any, error) {
			return nil, errors.New("bad request")
		})
		panics := dispatch.Func("panics", func(ctx context.Context, in item) (any, error) {
			panic("boom")
		})
		StartRuntime(t, dispatch.Config{Store: s, RetryPolicy: policy}, always, final, panics)
		cases := []struct {
			fn interface {
				Dispatch(context.Context, item) (string, error)
			}
			failures  int
			errSubstr string
		}{
			{always, 3, "gave up after 3 attempts"},
			{final, 1, "bad request"},
			{panics, 1, "panic: boom"},
		}
		for _, tc := range cases {
			id, err := tc.fn.Dispatch(ctx, item{})
			if err != nil {
				t.Fatal(err)
			}
			c := WaitCall(t, s, id, dispatch.StateDone, dispatch.StateFailed)
			if c.State != dispatch.StateFailed || c.Failures != tc.failures || !strings.Contains(c.Error, tc.errSubstr) {
				t.Fatalf("call %+v, want failed after %d attempts with %q", c, tc.failures, tc.errSubstr)
			}
		}
	})

	t.Run("SnoozeAndAttemptRecords", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		clock := clockwork.NewFakeClockAt(T0)
		var runs atomic.Int32
		ran := make(chan int32, 10)
		fn := dispatch.Func("sleepy", func(ctx context.Context, in keyedItem) (int, error) {
			n := runs.Add(1)
			ran <- n
			switch n {
			case 1:
				return 0, dispatch.Snooze(time.Minute)
			case 2:
				return 0, &detailedError{code: 502}
			}
			return 7, nil
		})
		policy := &dispatch.Backoff{Initial: 2 * time.Second, MaxAttempts: 5, RandFunc: func() float64 { return 0.5 }}
		StartRuntime(t, dispatch.Config{Store: s, Clock: clock, RetryPolicy: policy}, fn)
		id, err := fn.Dispatch(ctx, keyedItem{K: "s"})
		if err != nil {
			t.Fatal(err)
		}
		receive(t, ran, "run 1")
		c := WaitCall(t, s, id, dispatch.StatePending)
		for !c.RunAfter.Equal(T0.Add(time.Minute)) {
			c = WaitCall(t, s, id, dispatch.StatePending)
		}
		if c.Failures != 0 {
			t.Fatalf("snoozed call %+v, want no failure counted", c)
		}
		clock.Advance(time.Minute)
		receive(t, ran, "run 2")
		for c.Failures != 1 {
			c = WaitCall(t, s, id, dispatch.StatePending)
		}
		clock.Advance(time.Second)
		receive(t, ran, "run 3")
		WaitCall(t, s, id, dispatch.StateDone)
		atts, err := s.CallAttempts(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(atts) != 1 || atts[0].Attempt != 2 || atts[0].Error != "answered 502" {
			t.Fatalf("attempts %+v, want the failed attempt 2 only (a snooze is no attempt)", atts)
		}
		var detail map[string]int
		if err := json.Unmarshal(atts[0].Detail, &detail); err != nil || detail["status_code"] != 502 {
			t.Fatalf("attempt detail %s (%v), want the error's Detail", atts[0].Detail, err)
		}
	})
}
