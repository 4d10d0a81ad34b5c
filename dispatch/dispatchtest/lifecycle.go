package dispatchtest

import (
	"context"
	"testing"

	"fanout/dispatch"
)

// exerciseLifecycle covers Close: what was stored is there after reopening,
// and a closed store refuses work.
func exerciseLifecycle(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("Reopen", func(t *testing.T) {
		t.Parallel()
		key := t.Name()
		s := open(t, key)
		mustInsert(t, s, newCall("kept", "f", `{"x":1}`, T0))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, key)
		defer s.Close()
		if c := mustGet(t, s, "kept"); string(c.Input) != `{"x":1}` {
			t.Fatalf("after reopen got %+v", c)
		}
	})

	t.Run("ClosedStoreFails", func(t *testing.T) {
		t.Parallel()
		s := open(t, t.Name())
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{newCall("x", "f", `{}`, T0)}}); err == nil {
			t.Fatal("insert into a closed store succeeded")
		}
	})
}
