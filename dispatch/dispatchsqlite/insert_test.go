package dispatchsqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// TestInsert_NarrowStoresWhatWideDoes writes a table of call shapes with
// the statements that bind only the columns a chunk needs (the others
// written as literals) and with the wide statement that binds every
// column, each shape alone and all in one chunk, and compares the stored
// rows column by column, type included: a literal that stands for a value
// it does not store (an empty blob for NULL, empty text for NULL, NULL for 0) shows
// here.
func TestInsert_NarrowStoresWhatWideDoes(t *testing.T) {
	now := time.Unix(1_700_000_000, 123456789)
	later := now.Add(time.Second)
	shapes := []struct {
		name string
		call dispatch.Call
		plan *storeutil.LocalPlan
	}{
		{"Event", dispatch.Call{Function: "handleEvent", Input: []byte(`{"a":1}`), RunAfter: now, CreatedAt: now,
			Tag: "user.created", Meta: []byte{1, 2, 3}}, nil},
		{"Bare", dispatch.Call{Function: "f", Input: []byte(`{}`), CreatedAt: now}, nil},
		{"EmptyInput", dispatch.Call{Function: "f", Input: []byte{}, RunAfter: now, CreatedAt: now}, nil},
		{"Running", dispatch.Call{Function: "f", Key: "k", Input: []byte(`{}`), State: dispatch.StateRunning, Attempt: 1,
			LeaseOwner: "w1", LeaseExpires: later, RunAfter: now, CreatedAt: now}, nil},
		{"RunningNoOwner", dispatch.Call{Function: "f", Input: []byte(`{}`), State: dispatch.StateRunning, Attempt: 2,
			RunAfter: now, CreatedAt: now}, nil},
		{"Done", dispatch.Call{Function: "f", Key: "dest", Input: []byte(`{}`), State: dispatch.StateDone, Attempt: 1,
			Output: []byte(`{"ok":true}`), Status: dispatch.StatusOK, RunAfter: later, CreatedAt: now, UpdatedAt: later}, nil},
		{"DoneEmptyOutput", dispatch.Call{Function: "f", Input: []byte(`{}`), State: dispatch.StateDone, Attempt: 1,
			Output: []byte{}, RunAfter: now, CreatedAt: now}, nil},
		{"DoneNilOutput", dispatch.Call{Function: "f", Input: []byte(`{}`), State: dispatch.StateDone, Attempt: 1,
			RunAfter: now, CreatedAt: now, UpdatedAt: later}, nil},
		{"Failed", dispatch.Call{Function: "f", Key: "dest", Input: []byte(`{}`), State: dispatch.StateFailed, Attempt: 5,
			Failures: 5, Error: "HTTP 500", Status: 500, RunAfter: now, CreatedAt: now, UpdatedAt: later}, nil},
		{"Budget", dispatch.Call{Function: "f", Input: []byte(`{}`), RunAfter: later, CreatedAt: now, BudgetStart: later}, nil},
		{"Waiting", dispatch.Call{Function: "f", Input: []byte(`{}`), State: dispatch.StateWaiting, Gathers: 2, Waiting: 3,
			RunAfter: now, CreatedAt: now}, nil},
		{"Ordered", dispatch.Call{Function: "f", Key: "k", Input: []byte(`{}`), OrderKey: "o", OutOfOrder: true,
			RunAfter: now, CreatedAt: now}, nil},
		{"PlanParent", dispatch.Call{Function: "f", Input: []byte(`{}`), State: dispatch.StateWaiting, Gathers: 1,
			Waiting: 2, RunAfter: now, CreatedAt: now}, &storeutil.LocalPlan{Plan: []byte{9, 9}, Owner: "w2", Expires: later.UnixNano()}},
	}
	// Children: of a top-level call (parent_id '') and of a child (its id).
	children := []struct {
		name   string
		parent string
		call   dispatch.Call
	}{
		{"Child", "Event", dispatch.Call{Function: "deliver", Key: "dest", Input: []byte{}, State: dispatch.StateDone,
			Attempt: 1, Gather: 1, Index: 2, Status: dispatch.StatusOK, RunAfter: later, CreatedAt: now, UpdatedAt: later,
			Tag: "user.created", Meta: []byte{7}}},
		{"ChildFirst", "Bare", dispatch.Call{Function: "deliver", Input: []byte(`{}`), RunAfter: now, CreatedAt: now}},
		{"Grandchild", "Event.1.2", dispatch.Call{Function: "deliver", Input: []byte(`{}`), RunAfter: now, CreatedAt: now}},
	}

	// calls returns the table's calls, their ids prefixed with p.
	calls := func(p string) ([]*dispatch.Call, map[string]*storeutil.LocalPlan) {
		var out []*dispatch.Call
		plans := make(map[string]*storeutil.LocalPlan)
		for _, s := range shapes {
			c := s.call
			c.ID = p + s.name
			out = append(out, &c)
			if s.plan != nil {
				plans[c.ID] = s.plan
			}
		}
		for _, s := range children {
			c := s.call
			c.ParentID = p + s.parent
			c.ID = c.ParentID + "." + s.name
			out = append(out, &c)
		}
		return out, plans
	}

	ctx := context.Background()
	rows := func(t *testing.T, wide bool) map[string]string {
		s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.w.wideInserts = wide
		// Each call alone, then all in one chunk, then in chunks of 64
		// and fewer (the table repeated past insertChunk).
		alone, plans := calls("a-")
		for _, c := range alone {
			if err := s.w.do(ctx, func(tx *wtx) error {
				_, err := insert(tx, []*dispatch.Call{c}, false, plans)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		var many []*dispatch.Call
		manyPlans := make(map[string]*storeutil.LocalPlan)
		for i := 0; len(many) <= insertChunk; i++ {
			cs, ps := calls(fmt.Sprintf("m%02d-", i))
			many = append(many, cs...)
			for id, p := range ps {
				manyPlans[id] = p
			}
		}
		if err := s.w.do(ctx, func(tx *wtx) error {
			_, err := insert(tx, many, true, manyPlans)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if !wide && s.w.narrowInserts == 0 {
			t.Fatal("no narrow statement was used")
		}
		cols := make([]string, len(insertCols))
		for i, c := range insertCols {
			cols[i] = fmt.Sprintf("typeof(%[1]s) || ':' || quote(%[1]s)", c.name)
		}
		r, err := s.rdb.QueryContext(ctx, `SELECT id, `+strings.Join(cols, ` || ' | ' || `)+` FROM calls ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		out := make(map[string]string)
		for r.Next() {
			var id, row string
			if err := r.Scan(&id, &row); err != nil {
				t.Fatal(err)
			}
			out[id] = row
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}

	want, got := rows(t, true), rows(t, false)
	if len(want) != len(got) || len(want) < insertChunk {
		t.Fatalf("rows: wide %d, narrow %d", len(want), len(got))
	}
	for id, w := range want {
		if g := got[id]; g != w {
			t.Errorf("%s:\nnarrow %s\nwide   %s", id, g, w)
		}
	}
}

// TestInsert_NarrowStatementsBounded: past maxNarrowInserts statements of
// fewer than every column, a new shape gets the wide statement, and the
// shapes prepared before keep theirs.
func TestInsert_NarrowStatementsBounded(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var required uint32
	for i, c := range insertCols {
		if c.literal == bound {
			required |= 1 << i
		}
	}
	// Shapes of three column sets, 1 to insertChunk rows each.
	shape := func(i int) (rows int, mask uint32) {
		return 1 + i%insertChunk, required | 1<<(2+i/insertChunk)
	}
	var got []uint32
	err = s.w.do(ctx, func(tx *wtx) error {
		for i := range maxNarrowInserts + 10 {
			rows, mask := shape(i)
			_, m := tx.insertQuery(rows, false, mask)
			got = append(got, m)
		}
		rows, mask := shape(0)
		_, m := tx.insertQuery(rows, false, mask)
		got = append(got, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range got {
		_, want := shape(i)
		switch {
		case i == len(got)-1:
			_, want = shape(0) // prepared before the bound
		case i >= maxNarrowInserts:
			want = allColumns
		}
		if m != want {
			t.Errorf("shape %d: mask %x, want %x", i, m, want)
		}
	}
	if s.w.narrowInserts != maxNarrowInserts {
		t.Errorf("narrow statements %d, want %d", s.w.narrowInserts, maxNarrowInserts)
	}
}
