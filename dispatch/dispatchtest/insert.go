package dispatchtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseInsert covers CallInsertMany: inputs kept byte for byte, a batch
// stored whole or not at all, large and concurrent inserts, and dedup keys.
func exerciseInsert(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("TagAndMeta", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		parent := newCall("p", "parent", `{}`, T0)
		parent.Tag, parent.Meta = "order.paid", []byte("00-trace-01")
		parent.State, parent.Gathers, parent.Waiting = dispatch.StateWaiting, 1, 1
		child := &dispatch.Call{ID: "p.0.0", Function: "f", Input: []byte(`{}`), ParentID: "p", Meta: parent.Meta,
			RunAfter: T0, CreatedAt: T0}
		mustInsert(t, s, parent, child, newCall("plain", "f", `{}`, T0.Add(time.Hour)))
		if c := mustGet(t, s, "p"); c.Tag != "order.paid" || string(c.Meta) != "00-trace-01" {
			t.Fatalf("CallGet = tag %q meta %q, want them as stored", c.Tag, c.Meta)
		}
		if c := mustGet(t, s, "plain"); c.Tag != "" || len(c.Meta) != 0 {
			t.Fatalf("a call without them: tag %q meta %q", c.Tag, c.Meta)
		}
		kids, err := s.CallListChildren(ctx, "p")
		if err != nil || len(kids) != 1 || string(kids[0].Meta) != "00-trace-01" {
			t.Fatalf("CallListChildren = %v, %v; want the child with its meta", kids, err)
		}
		claimed := mustClaim(t, s, "o", T0, 10)
		if len(claimed) != 1 || string(claimed[0].Meta) != "00-trace-01" {
			t.Fatalf("claimed %v, want the child with its meta (a running call reads it)", claimed)
		}
		res := mustFinish(t, s, &dispatch.CallFinishParams{ID: "p.0.0", Attempt: claimed[0].Attempt, ParentID: "p",
			State: dispatch.StateDone, Output: []byte(`1`), Now: T0, ResumeOwner: "o", ResumeLeaseUntil: T0.Add(time.Minute)})
		if res.Parent == nil || string(res.Parent.Meta) != "00-trace-01" {
			t.Fatalf("resumed parent %+v, want it with its meta", res.Parent)
		}
	})

	t.Run("InsertAndGet", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		input := "{ \"a\" : [1, 2.50, \"<&>\"] }\n"
		mustInsert(t, s, newCall("c1", "f", input, T0), newCall("c2", "g", `{}`, T0.Add(time.Second)))
		c := mustGet(t, s, "c1")
		if got, want := string(c.Input), input; got != want {
			t.Fatalf("Input=%q, want %q (bytes must be kept exactly)", got, want)
		}
		if c.State != dispatch.StatePending || c.Attempt != 0 || c.Failures != 0 || c.Function != "f" {
			t.Fatalf("got %+v, want a pending call of f with no attempts", c)
		}
		if !c.RunAfter.Equal(T0) || !c.CreatedAt.Equal(T0) {
			t.Fatalf("RunAfter=%v CreatedAt=%v, want %v", c.RunAfter, c.CreatedAt, T0)
		}
		if _, err := s.CallGet(ctx, "nope"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("CallGet(unknown) err=%v, want ErrNotFound", err)
		}
	})

	t.Run("InsertIsAtomic", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		mustInsert(t, s, newCall("dup", "f", `{}`, T0))
		batch := []*dispatch.Call{newCall("a", "f", `{}`, T0), newCall("dup", "f", `{}`, T0), newCall("b", "f", `{}`, T0)}
		if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: batch}); err == nil {
			t.Fatal("CallInsertMany with an existing id: err=nil, want an error")
		}
		for _, id := range []string{"a", "b"} {
			if _, err := s.CallGet(ctx, id); !errors.Is(err, dispatch.ErrNotFound) {
				t.Fatalf("CallGet(%s) err=%v: part of a failed batch was stored", id, err)
			}
		}
		// The store still works after a failed batch.
		mustInsert(t, s, newCall("c", "f", `{}`, T0))
	})

	t.Run("InsertLargeBatch", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		var batch []*dispatch.Call
		for i := range 1000 {
			batch = append(batch, newCall(fmt.Sprintf("c%04d", i), "f", fmt.Sprintf(`{"i":%d}`, i), T0))
		}
		mustInsert(t, s, batch...)
		claimed := mustClaim(t, s, "o", T0, 2000)
		if got, want := len(claimed), 1000; got != want {
			t.Fatalf("claimed %d, want %d", got, want)
		}
	})

	t.Run("ConcurrentInserts", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20 {
					c := newCall(fmt.Sprintf("g%02d-%02d", g, i), "f", `{}`, T0)
					if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{c}}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if got := len(mustClaim(t, s, "o", T0, 5000)); got != 64*20 {
			t.Fatalf("stored %d calls, want %d", got, 64*20)
		}
	})

	t.Run("Dedup", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		defer s.Close()
		insert := func(since time.Time, calls ...*dispatch.Call) []string {
			t.Helper()
			got, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: calls, DedupSince: since})
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		withKey := func(id, key string, created time.Time) *dispatch.Call {
			c := newCall(id, "f", `{}`, created)
			c.DedupKey, c.CreatedAt = key, created
			return c
		}
		child := func(id, parent string) *dispatch.Call {
			c := newCall(id, "f", `{}`, T0)
			c.ParentID = parent
			return c
		}
		if got := insert(T0, withKey("e1", "k1", T0), child("e1.0.0", "e1"), withKey("e2", "", T0)); !slices.Equal(got, []string{"e1", "e1.0.0", "e2"}) {
			t.Fatalf("first insert = %v", got)
		}
		got := insert(T0, withKey("e3", "k1", T0.Add(time.Minute)), child("e3.0.0", "e3"), withKey("e4", "k2", T0),
			withKey("e5", "k2", T0), child("e5.0.0", "e5"))
		if want := []string{"e1", "", "e4", "e4", ""}; !slices.Equal(got, want) {
			t.Fatalf("insert with duplicates = %q, want %q", got, want)
		}
		for _, id := range []string{"e3", "e3.0.0", "e5", "e5.0.0"} {
			if _, err := s.CallGet(ctx, id); !errors.Is(err, dispatch.ErrNotFound) {
				t.Fatalf("duplicate %s was stored", id)
			}
		}
		// Past the window, the key is free again.
		if got := insert(T0.Add(time.Second), withKey("e6", "k1", T0.Add(time.Hour))); !slices.Equal(got, []string{"e6"}) {
			t.Fatalf("insert after the window = %v, want [e6]", got)
		}
		if got := insert(T0, withKey("e7", "k1", T0.Add(2*time.Hour))); !slices.Equal(got, []string{"e6"}) {
			t.Fatalf("the key now names e6: got %v", got)
		}
	})
}
