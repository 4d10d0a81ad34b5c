package dispatchtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
)

// scanner is the optional capability of reading the history of top-level
// calls (dispatch.CallScanParams).
type scanner interface {
	CallScan(ctx context.Context, p *dispatch.CallScanParams) (*dispatch.CallScanResult, error)
}

func mustScan(t testing.TB, s dispatch.Store, p dispatch.CallScanParams) *dispatch.CallScanResult {
	t.Helper()
	sc, ok := s.(scanner)
	if !ok {
		t.Skipf("%T has no CallScan", s)
	}
	if p.Function == "" {
		p.Function = "root"
	}
	res, err := sc.CallScan(context.Background(), &p)
	if err != nil {
		t.Fatalf("CallScan(%+v): %v", p, err)
	}
	return res
}

func scannedIDs(res *dispatch.CallScanResult) []string {
	out := make([]string, len(res.Calls))
	for i, c := range res.Calls {
		out[i] = c.Call.ID
	}
	return out
}

// exerciseHistory covers CallScan (listings of top-level calls with
// filters, bounded walks) and CallAttach (children given to a call after it
// ran), in the store and in the runtime.
func exerciseHistory(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	// history stores six roots r1..r6 (ids in time order) with tags, states,
	// inputs and children, and a call of another function.
	history := func(t *testing.T) dispatch.Store {
		s := open(t, t.Name())
		root := func(id, tag string, state dispatch.State, input string, at time.Duration) *dispatch.Call {
			c := &dispatch.Call{ID: id, Function: "root", Tag: tag, State: state, Input: []byte(input), RunAfter: T0,
				CreatedAt: T0.Add(at)}
			if state == dispatch.StateWaiting {
				c.Gathers, c.Waiting = 1, 1
			}
			if state == dispatch.StateDone {
				c.Output = []byte(`{}`)
			}
			return c
		}
		child := func(parent string, i int, key string, state dispatch.State) *dispatch.Call {
			c := &dispatch.Call{ID: dispatch.ChildID(parent, 0, i), Function: "child", Key: key, ParentID: parent, Index: i,
				State: state, Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0}
			if state == dispatch.StateDone {
				c.Output = []byte(`{}`)
			}
			return c
		}
		r1, r2 := root("r1", "order.paid", dispatch.StateDone, `{"type":"order.paid","who":"Alice"}`, 1*time.Second),
			root("r2", "order.refunded", dispatch.StateFailed, `{"type":"order.refunded","note":"100%_off"}`, 2*time.Second)
		r1.Gathers, r2.Gathers = 1, 1 // they fanned out
		mustInsert(t, s,
			r1,
			child("r1", 0, "a", dispatch.StateDone), child("r1", 1, "b", dispatch.StateDone),
			r2,
			child("r2", 0, "a", dispatch.StateFailed),
			root("r3", "", dispatch.StateDone, `{"untyped":true}`, 3*time.Second),
			root("r4", "user.created", dispatch.StateWaiting, `{"type":"user.created","name":"BOB"}`, 4*time.Second),
			child("r4", 0, "b", dispatch.StatePending),
			root("r5", "order.paid", dispatch.StatePending, `{"type":"order.paid","who":"carol"}`, 5*time.Second),
			root("r6", "order.paid", dispatch.StateDone, `{"type":"order.paid","pad":"`+strings.Repeat("x", 100)+`"}`, 6*time.Second),
			&dispatch.Call{ID: "r7", Function: "other", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0})
		return s
	}

	t.Run("ScanNewestFirst", func(t *testing.T) {
		t.Parallel()
		s := history(t)
		res := mustScan(t, s, dispatch.CallScanParams{Limit: 4, CountChildren: true})
		if got, want := scannedIDs(res), []string{"r6", "r5", "r4", "r3"}; !slices.Equal(got, want) || res.Next != "r3" {
			t.Fatalf("first page %v next %q, want %v next r3", got, res.Next, want)
		}
		r4 := res.Calls[2]
		if r4.Call.Tag != "user.created" || r4.Call.State != dispatch.StateWaiting || r4.Size != len(`{"type":"user.created","name":"BOB"}`) ||
			r4.Call.Input != nil || r4.Children[dispatch.StatePending] != 1 || !r4.Call.CreatedAt.Equal(T0.Add(4*time.Second)) {
			t.Fatalf("r4 scanned as %+v %+v, want its tag, state, size, time, no input, one pending child", r4, r4.Call)
		}
		res = mustScan(t, s, dispatch.CallScanParams{Limit: 4, Before: res.Next, CountChildren: true})
		if got, want := scannedIDs(res), []string{"r2", "r1"}; !slices.Equal(got, want) || res.Next != "" {
			t.Fatalf("second page %v next %q, want %v and the end", got, res.Next, want)
		}
		if c := res.Calls[1].Children; c[dispatch.StateDone] != 2 || c[dispatch.StateFailed] != 0 {
			t.Fatalf("r1's children by state %v, want 2 done", c)
		}
		res = mustScan(t, s, dispatch.CallScanParams{Ascending: true, After: "r2", Limit: 2})
		if got, want := scannedIDs(res), []string{"r3", "r4"}; !slices.Equal(got, want) || res.Next != "r4" {
			t.Fatalf("ascending after r2: %v next %q, want %v next r4", got, res.Next, want)
		}
	})

	t.Run("ScanFilters", func(t *testing.T) {
		t.Parallel()
		s := history(t)
		none := ""
		tests := []struct {
			name string
			p    dispatch.CallScanParams
			want []string
		}{
			{"Tag", dispatch.CallScanParams{Tags: []string{"order.paid"}}, []string{"r6", "r5", "r1"}},
			{"TagWithKey", dispatch.CallScanParams{Tags: []string{"order.paid"}, Key: &none}, []string{"r6", "r5", "r1"}},
			{"Tags", dispatch.CallScanParams{Tags: []string{"order.paid", "user.created"}}, []string{"r6", "r5", "r4", "r1"}},
			{"TagPrefix", dispatch.CallScanParams{TagPrefixes: []string{"order."}}, []string{"r6", "r5", "r2", "r1"}},
			{"TagOrPrefix", dispatch.CallScanParams{Tags: []string{"user.created"}, TagPrefixes: []string{"order.r"}}, []string{"r4", "r2"}},
			{"Failed", dispatch.CallScanParams{States: []dispatch.State{dispatch.StateFailed}}, []string{"r2"}},
			{"FailedWithKey", dispatch.CallScanParams{States: []dispatch.State{dispatch.StateFailed}, Key: &none}, []string{"r2"}},
			{"NotFinal", dispatch.CallScanParams{States: []dispatch.State{dispatch.StatePending, dispatch.StateRunning, dispatch.StateWaiting}}, []string{"r5", "r4"}},
			{"ChildKey", dispatch.CallScanParams{ChildKey: "b"}, []string{"r4", "r1"}},
			{"ContainsAnyCase", dispatch.CallScanParams{Contains: "bob"}, []string{"r4"}},
			{"ContainsLiteralWildcards", dispatch.CallScanParams{Contains: "100%_"}, []string{"r2"}},
			{"ContainsNoWildcard", dispatch.CallScanParams{Contains: "%"}, []string{"r2"}},
			{"Created", dispatch.CallScanParams{CreatedAfter: T0.Add(2 * time.Second), CreatedBefore: T0.Add(5 * time.Second)}, []string{"r4", "r3", "r2"}},
			{"Combined", dispatch.CallScanParams{TagPrefixes: []string{"order."}, States: []dispatch.State{dispatch.StateDone}, ChildKey: "a"}, []string{"r1"}},
			{"Nothing", dispatch.CallScanParams{Contains: "nowhere"}, nil},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				res := mustScan(t, s, tt.p)
				if got := scannedIDs(res); !slices.Equal(got, tt.want) || res.Next != "" {
					t.Fatalf("got %v next %q, want %v and the end", got, res.Next, tt.want)
				}
			})
		}
	})

	// ScanTypes: event types as fanout's listing and replays pass them
	// (typeFilter): "order.*" arrives as TagPrefixes ["order."], the * cut
	// and the dot kept; "a,b" as Tags; "*" (any typed event) as
	// TagPrefixes [""]; with Key "" and CountChildren. A prefix is
	// characters, not bytes, and all of them: each pattern has neighbours
	// it must not match (a dot less, another case, a LIKE wildcard taken
	// literally, a longer or shorter type).
	t.Run("ScanTypes", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		types := []string{"order.created", "orders.x", "order", "orderx", "order_1", "Order.created",
			"bestellung.größe", "bestellung.grün", "bestellung.gross", "📦.versandt", ""}
		idOf := map[string]string{}
		var calls []*dispatch.Call
		for i, typ := range types {
			id := fmt.Sprintf("e%02d", i)
			idOf[typ] = id
			calls = append(calls, &dispatch.Call{ID: id, Function: "root", Tag: typ, State: dispatch.StateDone,
				Input: []byte(`{}`), Output: []byte(`{}`), RunAfter: T0, CreatedAt: T0.Add(time.Duration(i) * time.Second)})
		}
		mustInsert(t, s, calls...)
		typed := slices.DeleteFunc(slices.Clone(types), func(typ string) bool { return typ == "" })
		tests := []struct {
			pattern        string // as a client writes it
			tags, prefixes []string
			want           []string // types, in any order
		}{
			{"order.*", nil, []string{"order."}, []string{"order.created"}},
			{"order*", nil, []string{"order"}, []string{"order.created", "orders.x", "order", "orderx", "order_1"}},
			{"order_*", nil, []string{"order_"}, []string{"order_1"}},
			{"Order.*", nil, []string{"Order."}, []string{"Order.created"}},
			{"order.*,orders.*", nil, []string{"order.", "orders."}, []string{"order.created", "orders.x"}},
			{"bestellung.grö*", nil, []string{"bestellung.grö"}, []string{"bestellung.größe"}},
			{"bestellung.gr*", nil, []string{"bestellung.gr"}, []string{"bestellung.größe", "bestellung.grün", "bestellung.gross"}},
			{"📦.*", nil, []string{"📦."}, []string{"📦.versandt"}},
			{"bestellung.größe", []string{"bestellung.größe"}, nil, []string{"bestellung.größe"}},
			{"bestellung.grö", []string{"bestellung.grö"}, nil, nil},
			{"bestellung.größe,order", []string{"bestellung.größe", "order"}, nil, []string{"bestellung.größe", "order"}},
			{"order.created,bestellung.grü*", []string{"order.created"}, []string{"bestellung.grü"}, []string{"order.created", "bestellung.grün"}},
			{"*", nil, []string{""}, typed},
		}
		for _, tt := range tests {
			t.Run(tt.pattern, func(t *testing.T) {
				none := ""
				res := mustScan(t, s, dispatch.CallScanParams{Tags: tt.tags, TagPrefixes: tt.prefixes, Key: &none, CountChildren: true})
				// Newest first: the types in the reverse of their order above.
				var want []string
				for i := len(types) - 1; i >= 0; i-- {
					if slices.Contains(tt.want, types[i]) {
						want = append(want, types[i])
					}
				}
				if len(want) != len(tt.want) {
					t.Fatalf("the case wants %q, which are not all stored types", tt.want)
				}
				var got []string
				for _, c := range res.Calls {
					got = append(got, c.Call.Tag)
					if c.Call.ID != idOf[c.Call.Tag] {
						t.Fatalf("scanned %s with type %q, which is %s's", c.Call.ID, c.Call.Tag, idOf[c.Call.Tag])
					}
				}
				if !slices.Equal(got, want) || res.Next != "" {
					t.Fatalf("type %q (Tags %q, TagPrefixes %q) matched %q next %q, want exactly %q and the end",
						tt.pattern, tt.tags, tt.prefixes, got, res.Next, want)
				}
			})
		}
	})

	t.Run("ScanBounded", func(t *testing.T) {
		t.Parallel()
		s := history(t)
		// Three calls examined, none matching: the scan says where it
		// stopped, and going on from there finds the match.
		res := mustScan(t, s, dispatch.CallScanParams{Contains: "alice", Scan: 3, Limit: 10})
		if len(res.Calls) != 0 || res.Next != "r4" || res.Scanned != 3 {
			t.Fatalf("bounded scan: %v next %q scanned %d, want none, next r4, 3 examined", scannedIDs(res), res.Next, res.Scanned)
		}
		res = mustScan(t, s, dispatch.CallScanParams{Contains: "alice", Scan: 3, Limit: 10, Before: res.Next})
		if got := scannedIDs(res); !slices.Equal(got, []string{"r1"}) || res.Next != "" {
			t.Fatalf("going on: %v next %q, want r1 and the end", got, res.Next)
		}
		// Inputs, and a bound on their bytes.
		res = mustScan(t, s, dispatch.CallScanParams{WithInput: true, MaxInputBytes: 50, Limit: 10})
		if got := scannedIDs(res); !slices.Equal(got, []string{"r6"}) || res.Next != "r6" ||
			!strings.Contains(string(res.Calls[0].Call.Input), strings.Repeat("x", 100)) {
			t.Fatalf("with inputs up to 50 bytes: %v next %q, want r6 alone with its input", got, res.Next)
		}
	})

	t.Run("Attach", func(t *testing.T) {
		t.Parallel()
		s := history(t)
		later := T0.Add(time.Hour)
		kid := func(parent, key, tag string) *dispatch.Call {
			return &dispatch.Call{ParentID: parent, Function: "child", Key: key, Tag: tag, Input: []byte(`{"k":"` + key + `"}`)}
		}
		mustInsert(t, s, &dispatch.Call{ID: "fresh", Function: "root", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0},
			&dispatch.Call{ID: "meta", Function: "root", Input: []byte(`{}`), RunAfter: T0, CreatedAt: T0, State: dispatch.StateDone,
				Meta: []byte("trace")})
		res, err := s.CallAttach(ctx, &dispatch.CallAttachParams{Unless: dispatch.AttachUnlessKey, Now: later, Calls: []*dispatch.Call{
			kid("r1", "c", ""), kid("r1", "a", ""), // r1 done, with children a and b
			kid("r2", "c", ""),                     // r2 failed
			kid("r4", "c", ""), kid("r4", "c", ""), // r4 waiting; the second c repeats the first
			kid("fresh", "c", ""), // pending, never ran: busy
			kid("gone", "c", ""),
			kid("meta", "c", ""), // done, no children yet
		}})
		if err != nil {
			t.Fatal(err)
		}
		ok := func(id string) dispatch.AttachResult {
			return dispatch.AttachResult{Outcome: dispatch.Attached, ID: id}
		}
		not := func(o dispatch.AttachOutcome) dispatch.AttachResult { return dispatch.AttachResult{Outcome: o} }
		want := []dispatch.AttachResult{ok("r1.1.0"), not(dispatch.AttachSkipped), ok("r2.1.0"), ok("r4.1.0"),
			not(dispatch.AttachSkipped), not(dispatch.AttachBusy), not(dispatch.AttachNoParent), ok("meta.0.0")}
		if !slices.Equal(res, want) {
			t.Fatalf("CallAttach = %v, want %v", res, want)
		}
		for _, tt := range []struct {
			id               string
			gathers, waiting int
		}{{"r1", 2, 1}, {"r2", 2, 1}, {"r4", 2, 2}, {"meta", 1, 1}} {
			c := mustGet(t, s, tt.id)
			if c.State != dispatch.StateWaiting || c.Gathers != tt.gathers || c.Waiting != tt.waiting || c.Error != "" {
				t.Fatalf("%s after attach: %v gathers %d waiting %d error %q, want waiting for %d with %d gathers",
					tt.id, c.State, c.Gathers, c.Waiting, c.Error, tt.waiting, tt.gathers)
			}
		}
		if c := mustGet(t, s, "meta.0.0"); c.State != dispatch.StatePending || c.Key != "c" || c.ParentID != "meta" ||
			string(c.Meta) != "trace" || string(c.Input) != `{"k":"c"}` || !c.RunAfter.Equal(later) || !c.CreatedAt.Equal(later) {
			t.Fatalf("attached child %+v, want pending at the attach's time with its parent's meta", c)
		}
		if kids, _ := s.CallListChildren(ctx, "r1"); len(kids) != 3 || kids[2].ID != "r1.1.0" || kids[2].Gather != 1 {
			t.Fatalf("r1's children %v, want a, b and the attached one in gather 1", ids(kids))
		}
		// Another attach of the same key is skipped; with a tag rule, a new
		// tag attaches and the same tag again does not.
		res, _ = s.CallAttach(ctx, &dispatch.CallAttachParams{Unless: dispatch.AttachUnlessKey, Now: later, Calls: []*dispatch.Call{kid("r1", "c", "")}})
		if res[0].Outcome != dispatch.AttachSkipped {
			t.Fatalf("attach again: %v, want skipped", res)
		}
		for _, wantOutcome := range []dispatch.AttachOutcome{dispatch.Attached, dispatch.AttachSkipped} {
			res, _ = s.CallAttach(ctx, &dispatch.CallAttachParams{Unless: dispatch.AttachUnlessKeyTag, Now: later,
				Calls: []*dispatch.Call{kid("r1", "c", "job-1")}})
			if res[0].Outcome != wantOutcome {
				t.Fatalf("attach with tag job-1: %v, want %v", res, wantOutcome)
			}
		}
		if c := mustGet(t, s, "r1"); c.Waiting != 2 || c.Gathers != 3 {
			t.Fatalf("r1 after a second attach: waiting %d gathers %d, want 2 and 3", c.Waiting, c.Gathers)
		}
		// The attached children run like any: the last one to finish makes
		// the parent runnable.
		var mine []*dispatch.Call
		claimed, err := s.CallClaim(ctx, &dispatch.CallClaimParams{Key: "c", Owner: "o", Functions: []string{"child"}, Limit: 10,
			Now: later, LeaseUntil: later.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range claimed {
			if c.ParentID == "r1" {
				mine = append(mine, c)
			}
		}
		if len(mine) != 2 {
			t.Fatalf("claimed %v of r1's attached children, want 2", ids(mine))
		}
		for i, c := range mine {
			res := mustFinish(t, s, &dispatch.CallFinishParams{ID: c.ID, Attempt: c.Attempt, ParentID: "r1", State: dispatch.StateDone,
				Output: []byte(`{}`), Now: later})
			if last := i == len(mine)-1; res.ParentResumed != last {
				t.Fatalf("finishing %s (last: %v) resumed the parent: %v", c.ID, last, res.ParentResumed)
			}
		}
		if c := mustGet(t, s, "r1"); c.State != dispatch.StatePending || c.Waiting != 0 {
			t.Fatalf("r1 once its attached children are done: %v waiting %d, want pending", c.State, c.Waiting)
		}
	})

	t.Run("RuntimeAttach", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		var runs atomic.Int64
		child := dispatch.Func("child", func(ctx context.Context, in item) (int, error) {
			if in.Fail {
				return 0, fmt.Errorf("%w: item %d refused", dispatch.ErrPermanent, in.N)
			}
			return in.N, nil
		})
		// parent fans out to N children, as fanout's handleEvent does.
		parent := dispatch.Func("parent", func(ctx context.Context, in item) (int, error) {
			runs.Add(1)
			items := make([]item, in.N)
			for i := range items {
				items[i] = item{N: i + 1}
			}
			out, err := child.Gather(ctx, items)
			return len(out), err
		})
		rt := StartRuntime(t, dispatch.Config{Store: s}, child, parent)
		one, err := parent.Dispatch(ctx, item{N: 1})
		if err != nil {
			t.Fatal(err)
		}
		none, err := parent.Dispatch(ctx, item{N: 0})
		if err != nil {
			t.Fatal(err)
		}
		WaitCall(t, s, one, dispatch.StateDone)
		WaitCall(t, s, none, dispatch.StateDone)
		attach := func(parent string, in item) dispatch.AttachResult {
			t.Helper()
			c, err := child.BuildCall(in)
			if err != nil {
				t.Fatal(err)
			}
			c.ParentID, c.Key = parent, fmt.Sprint("k", in.N)
			res, err := rt.Attach(ctx, &dispatch.CallAttachParams{Calls: []*dispatch.Call{c}, Unless: dispatch.AttachUnlessKey})
			if err != nil {
				t.Fatal(err)
			}
			return res[0]
		}
		// A failed attached child fails its done parent, which then is
		// not finished while the child runs, and is failed after.
		if res := attach(one, item{N: 7, Fail: true}); res.Outcome != dispatch.Attached {
			t.Fatalf("attach: %+v", res)
		}
		p := WaitCall(t, s, one, dispatch.StateFailed)
		if !strings.Contains(p.Error, "1 of 1 calls failed") || !strings.Contains(p.Error, "item 7 refused") {
			t.Fatalf("parent after a failed attached child: %q, want the child's failure", p.Error)
		}
		// A parent whose Gather was empty takes the attached children as
		// its first gather.
		if res := attach(none, item{N: 3}); res.Outcome != dispatch.Attached || res.ID != dispatch.ChildID(none, 0, 0) {
			t.Fatalf("attach to a parent that gathered nothing: %+v", res)
		}
		p = WaitCall(t, s, none, dispatch.StateDone)
		if string(p.Output) != "1" {
			t.Fatalf("parent output %s, want 1: its Gather returned the attached child", p.Output)
		}
		if runs.Load() < 4 {
			t.Fatalf("parents ran %d times, want each twice at least", runs.Load())
		}
	})
}
