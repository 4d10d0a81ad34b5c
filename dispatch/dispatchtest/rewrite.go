package dispatchtest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	"fanout/dispatch"
)

// exerciseRewrite covers CallRewriteInputs: only the children of one
// function are offered, with their parents' inputs, page by page in id
// order; only those the rewrite accepts change, and nothing else of them.
func exerciseRewrite(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("Pages", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		var calls []*dispatch.Call
		for _, p := range []string{"a", "b"} {
			calls = append(calls, newCall(p, "parent", `{"event":"`+p+`"}`, T0))
			for i := range 3 {
				c := newCall(fmt.Sprintf("%s.0.%d", p, i), "f", fmt.Sprintf(`{"copy":{"event":"%s"},"n":%d}`, p, i), T0)
				c.ParentID, c.Index, c.Key = p, i, fmt.Sprintf("k%d", i)
				calls = append(calls, c)
			}
			other := newCall(p+".1.0", "g", `{"copy":{"event":"`+p+`"}}`, T0)
			other.ParentID, other.Gather = p, 1
			calls = append(calls, other)
		}
		calls = append(calls, newCall("top", "f", `{"copy":{"event":"top"}}`, T0)) // no parent: never offered
		mustInsert(t, s, calls...)

		// The rewrite keeps "n" and drops the copy of the parent's input,
		// but leaves a.0.1 alone.
		var seen []string
		rewrite := func(c *dispatch.Call) ([]byte, bool) {
			seen = append(seen, c.ID)
			want := `{"event":"` + c.ParentID + `"}`
			if c.Function != "f" || string(c.ParentInput) != want || c.Key != fmt.Sprintf("k%c", c.ID[len(c.ID)-1]) ||
				c.State != dispatch.StatePending || !bytes.Contains(c.Input, []byte(want)) {
				t.Errorf("offered %+v (parent input %s)", c, c.ParentInput)
			}
			if c.ID == "a.0.1" {
				return nil, false
			}
			return []byte(fmt.Sprintf(`{"n":%c}`, c.ID[len(c.ID)-1])), true
		}
		after, rewritten, pages := "", 0, 0
		for {
			res, err := s.CallRewriteInputs(ctx, &dispatch.CallRewriteInputsParams{Function: "f", After: after, Limit: 4, Rewrite: rewrite})
			if err != nil {
				t.Fatal(err)
			}
			rewritten += res.Rewritten
			pages++
			if res.Next == "" {
				break
			}
			if res.Next <= after || pages > 3 {
				t.Fatalf("cursor %q after %q", res.Next, after)
			}
			after = res.Next
		}
		// A rewrite may run more than once for a call (a store may replay
		// its transaction): what matters is each call once, in order.
		seen = slices.Compact(seen)
		if want := []string{"a.0.0", "a.0.1", "a.0.2", "b.0.0", "b.0.1", "b.0.2"}; !slices.Equal(seen, want) || rewritten != 5 || pages != 2 {
			t.Fatalf("offered %v, rewrote %d in %d pages; want %v, 5 in 2", seen, rewritten, pages, want)
		}
		for _, id := range []string{"a.0.0", "a.0.2", "b.0.0", "b.0.1", "b.0.2"} {
			c := mustGet(t, s, id)
			if want := fmt.Sprintf(`{"n":%c}`, id[len(id)-1]); string(c.Input) != want || c.State != dispatch.StatePending ||
				c.ParentID != id[:1] || c.Key != fmt.Sprintf("k%c", id[len(id)-1]) || !c.RunAfter.Equal(T0) {
				t.Fatalf("rewritten call %+v, want input %s and the rest as it was", c, want)
			}
		}
		for id, in := range map[string]string{"a.0.1": `{"copy":{"event":"a"},"n":1}`, "a.1.0": `{"copy":{"event":"a"}}`,
			"top": `{"copy":{"event":"top"}}`, "a": `{"event":"a"}`} {
			if c := mustGet(t, s, id); string(c.Input) != in {
				t.Fatalf("call %s input %s, want %s untouched", id, c.Input, in)
			}
		}
	})
}
