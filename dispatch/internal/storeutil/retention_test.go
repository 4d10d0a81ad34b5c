package storeutil

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

func TestWalkRetention(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	before := t0.Add(time.Hour)
	// roots builds calls 1..n in this order of states, all old but where
	// a state is dispatch.StatePending+100 (a new call).
	roots := func(states ...dispatch.State) []RetentionRoot {
		out := make([]RetentionRoot, len(states))
		for i, st := range states {
			created := t0
			if st >= 100 {
				st, created = st-100, before
			}
			out[i] = RetentionRoot{Seq: int64(i + 1), ID: fmt.Sprint(i + 1), State: st, CreatedAt: created}
		}
		return out
	}
	many := func(n int, st dispatch.State) []dispatch.State { return slices.Repeat([]dispatch.State{st}, n) }
	done, failed, waiting, fresh := dispatch.StateDone, dispatch.StateFailed, dispatch.StateWaiting, dispatch.StateDone+100
	tests := []struct {
		name     string
		states   []dispatch.State
		mark     int64
		limit    int
		wantIDs  int
		wantMark int64
	}{
		{"AllDone", many(3, done), 0, 10, 3, 3},
		{"LimitMidPage", many(5, done), 0, 2, 2, 2},
		{"FromMark", many(5, done), 3, 10, 2, 5},
		{"StopsAtNew", append(many(2, done), fresh, done), 0, 10, 2, 2},
		{"OtherFinalPassed", []dispatch.State{failed, done, failed}, 0, 10, 1, 3},
		{"BlockedKeepsMark", []dispatch.State{done, waiting, done, done}, 0, 10, 3, 1},
		// More than a page of calls kept by the rule behind one that is not
		// finished: the walk goes on, the mark stays.
		{"BlockedBeforePages", append(append([]dispatch.State{waiting}, many(2*retentionPage+1, failed)...), done), 0, 10, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			all := roots(tc.states...)
			reads := 0
			ids, mark, err := WalkRetention(tc.mark, before, dispatch.StateDone, tc.limit, func(after int64, n int) ([]RetentionRoot, error) {
				if reads++; reads > len(all) {
					t.Fatal("the walk reads without end")
				}
				var page []RetentionRoot
				for _, r := range all {
					if r.Seq > after && len(page) < n {
						page = append(page, r)
					}
				}
				return page, nil
			})
			if err != nil || len(ids) != tc.wantIDs || mark != tc.wantMark {
				t.Fatalf("WalkRetention = %d ids, mark %d, %v; want %d ids, mark %d", len(ids), mark, err, tc.wantIDs, tc.wantMark)
			}
		})
	}
}
