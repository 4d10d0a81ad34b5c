package storeutil

import (
	"errors"
	"slices"
	"testing"

	"fanout/dispatch"
)

func TestResolveDedup(t *testing.T) {
	call := func(id, parent, key string) *dispatch.Call {
		return &dispatch.Call{ID: id, ParentID: parent, DedupKey: key}
	}
	tests := []struct {
		name    string
		calls   []*dispatch.Call
		held    map[string]string // key -> call holding it in the store
		wantIDs []string
		stored  []string
	}{
		{"NoKeys", []*dispatch.Call{call("a", "", ""), call("a.0.0", "a", "")}, nil,
			[]string{"a", "a.0.0"}, []string{"a", "a.0.0"}},
		{"NewKey", []*dispatch.Call{call("a", "", "k")}, nil, []string{"a"}, []string{"a"}},
		{"HeldKeyDropsCallAndChildren", []*dispatch.Call{call("a", "", "k"), call("a.0.0", "a", ""), call("b", "", "")},
			map[string]string{"k": "old"}, []string{"old", "", "b"}, []string{"b"}},
		{"TwiceInOneInsert", []*dispatch.Call{call("a", "", "k"), call("b", "", "k"), call("b.0.0", "b", "")}, nil,
			[]string{"a", "a", ""}, []string{"a"}},
		{"ChildKeysIgnored", []*dispatch.Call{call("a", "", ""), call("a.0.0", "a", "k")}, map[string]string{"k": "old"},
			[]string{"a", "a.0.0"}, []string{"a", "a.0.0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ids := make([]string, len(tc.calls))
			for i, c := range tc.calls {
				ids[i] = c.ID
			}
			claims := 0
			rows, err := ResolveDedup(tc.calls, ids, func(c *dispatch.Call) (string, error) {
				claims++
				if h, ok := tc.held[c.DedupKey]; ok {
					return h, nil
				}
				return c.ID, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var stored []string
			for _, c := range rows {
				stored = append(stored, c.ID)
			}
			if !slices.Equal(ids, tc.wantIDs) || !slices.Equal(stored, tc.stored) {
				t.Fatalf("ids %q stored %q, want %q and %q", ids, stored, tc.wantIDs, tc.stored)
			}
		})
	}
	t.Run("ClaimFails", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := ResolveDedup([]*dispatch.Call{call("a", "", "k")}, []string{"a"}, func(*dispatch.Call) (string, error) { return "", boom })
		if !errors.Is(err, boom) {
			t.Fatalf("err %v, want the claim's", err)
		}
	})
}
