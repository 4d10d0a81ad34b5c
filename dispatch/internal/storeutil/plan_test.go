package storeutil

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"fanout/dispatch"
)

func planChildren(gather int, created time.Time, specs ...[4]string) []*dispatch.Call {
	var out []*dispatch.Call
	for i, s := range specs {
		out = append(out, &dispatch.Call{ID: ChildID("p", gather, i), Function: s[0], Key: s[1], Tag: s[2],
			Input: []byte(s[3]), ParentID: "p", Gather: gather, Index: i, CreatedAt: created})
	}
	return out
}

func TestPlan_RoundTrip(t *testing.T) {
	created := time.Date(2026, 12, 7, 1, 2, 3, 456789, time.UTC)
	for _, tc := range []struct {
		name   string
		gather int
		total  int
		kids   []*dispatch.Call
	}{
		{"One", 0, 1, planChildren(0, created, [4]string{"publishEvent", "dest-1", "", "{}"})},
		{"SomeStored", 3, 5, planChildren(3, created, [4]string{"f", "k", "t", `{"a":1}`}, [4]string{"g", "", "", ""})},
		{"Empty strings", 0, 2, planChildren(0, time.Unix(0, 0).UTC(), [4]string{"", "", "", ""}, [4]string{"", "", "", ""})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := EncodePlan(tc.kids, tc.total)
			p, err := DecodePlan(b)
			if err != nil {
				t.Fatal(err)
			}
			if p.Gather != tc.gather || p.Total != tc.total || !p.CreatedAt.Equal(tc.kids[0].CreatedAt) || len(p.Children) != len(tc.kids) {
				t.Fatalf("decoded %+v", p)
			}
			for i, c := range p.Children {
				k := tc.kids[i]
				if c.Index != k.Index || c.Function != k.Function || c.Key != k.Key || c.Tag != k.Tag || !bytes.Equal(c.Input, k.Input) {
					t.Errorf("child %d decoded as %+v, want %+v", i, c, k)
				}
			}
			if g, total, err := PlanHead(b); err != nil || g != tc.gather || total != tc.total {
				t.Errorf("PlanHead = %d, %d, %v", g, total, err)
			}
			planned, err := PlannedCalls(&LocalParent{ID: "p", Plan: b}, func(id string) bool { return id == ChildID("p", tc.gather, 0) }, true)
			if err != nil || len(planned) != len(tc.kids)-1 {
				t.Fatalf("PlannedCalls without the first = %d calls, %v", len(planned), err)
			}
		})
	}
	if EncodePlan(nil, 3) != nil {
		t.Error("the plan of no children is not nil")
	}
}

func TestPlan_Corrupt(t *testing.T) {
	good := EncodePlan(planChildren(1, time.Now(), [4]string{"f", "k", "", "{}"}), 1)
	for _, b := range [][]byte{nil, {}, {9}, good[:len(good)-1], append(slices.Clone(good), 0), {1, 0x80}} {
		if _, err := DecodePlan(b); err == nil {
			t.Errorf("DecodePlan(%x) accepted a corrupt plan", b)
		}
	}
}

func TestSplitChildID(t *testing.T) {
	for _, tc := range []struct {
		id            string
		parent        string
		gather, index int
		ok            bool
	}{
		{"0193.0.1", "0193", 0, 1, true},
		{"0193.2.10.1.0", "0193.2.10", 1, 0, true},
		{"0193", "", 0, 0, false},
		{"0193.x.1", "", 0, 0, false},
		{".0.1", "", 0, 0, false},
		{"a.0.-1", "", 0, 0, false},
	} {
		p, g, i, ok := SplitChildID(tc.id)
		if ok != tc.ok || (ok && (p != tc.parent || g != tc.gather || i != tc.index)) {
			t.Errorf("SplitChildID(%q) = %q, %d, %d, %v", tc.id, p, g, i, ok)
		}
	}
}

// FuzzDecodePlan: whatever a plan column holds, decoding it does not panic,
// PlanHead agrees with it, and a plan built from any children decodes back
// to them.
func FuzzDecodePlan(f *testing.F) {
	f.Add(EncodePlan(planChildren(0, time.Unix(1, 2), [4]string{"f", "k", "t", "{}"}), 2), "f", "k", "{}", uint8(3))
	f.Add([]byte{1, 0, 0, 0, 1}, "", "", "", uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, fn, key, input string, n uint8) {
		if p, err := DecodePlan(b); err == nil {
			if g, total, err := PlanHead(b); err != nil || g != p.Gather || total != p.Total {
				t.Fatalf("PlanHead(%x) = %d, %d, %v; DecodePlan says %d, %d", b, g, total, err, p.Gather, p.Total)
			}
		}
		var kids []*dispatch.Call
		for i := range int(n%8) + 1 {
			kids = append(kids, &dispatch.Call{Function: fn, Key: key, Tag: input, Input: []byte(input), Index: i * 3,
				Gather: int(n), CreatedAt: time.Unix(0, int64(n)*1e9+int64(len(b)))})
		}
		p, err := DecodePlan(EncodePlan(kids, len(kids)+int(n)))
		if err != nil || len(p.Children) != len(kids) || p.Gather != int(n) || p.Total != len(kids)+int(n) {
			t.Fatalf("a plan of %d children decoded as %+v, %v", len(kids), p, err)
		}
		for i, c := range p.Children {
			if c.Function != fn || c.Key != key || c.Tag != input || string(c.Input) != input || c.Index != i*3 {
				t.Fatalf("child %d decoded as %+v", i, c)
			}
		}
	})
}
