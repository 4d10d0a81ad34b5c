package dispatchtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"fanout/dispatch"
)

// exerciseDocs covers dispatch.DocStore, for the stores that keep documents.
func exerciseDocs(t *testing.T, open OpenFunc) {
	ctx := context.Background()

	t.Run("Docs", func(t *testing.T) {
		t.Parallel()
		store := open(t, t.Name())
		defer store.Close()
		s, ok := store.(dispatch.DocStore)
		if !ok {
			t.Skipf("%T keeps no documents (dispatch.DocStore)", store)
		}
		d := &dispatch.Doc{Kind: "dest", ID: "d1", Data: []byte(`{"url":"http://a"}`), CreatedAt: T0}
		if err := s.DocCreate(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := s.DocCreate(ctx, &dispatch.Doc{Kind: "dest", ID: "d1", Data: []byte(`{}`), CreatedAt: T0}); !errors.Is(err, dispatch.ErrDocExists) {
			t.Fatalf("second DocCreate err = %v, want ErrDocExists", err)
		}
		if err := s.DocCreate(ctx, &dispatch.Doc{Kind: "other", ID: "d1", Data: []byte(`{}`), CreatedAt: T0}); err != nil {
			t.Fatalf("the same id in another kind: %v", err)
		}
		got, err := s.DocGet(ctx, "dest", "d1")
		if err != nil || string(got.Data) != `{"url":"http://a"}` || got.Version != 1 || !got.CreatedAt.Equal(T0) {
			t.Fatalf("DocGet = %+v, %v", got, err)
		}
		got.Data, got.UpdatedAt = []byte(`{"url":"http://b"}`), T0.Add(time.Second)
		if err := s.DocUpdate(ctx, got); err != nil || got.Version != 2 {
			t.Fatalf("DocUpdate = %v, version %d; want nil, 2", err, got.Version)
		}
		stale := &dispatch.Doc{Kind: "dest", ID: "d1", Data: []byte(`{}`), Version: 1, UpdatedAt: T0}
		if err := s.DocUpdate(ctx, stale); !errors.Is(err, dispatch.ErrDocConflict) {
			t.Fatalf("stale DocUpdate err = %v, want ErrDocConflict", err)
		}
		if err := s.DocUpdate(ctx, &dispatch.Doc{Kind: "dest", ID: "nope", Version: 1}); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("DocUpdate of a missing doc err = %v, want ErrNotFound", err)
		}
		s.DocCreate(ctx, &dispatch.Doc{Kind: "dest", ID: "d0", Data: []byte(`{}`), CreatedAt: T0})
		list, err := s.DocList(ctx, "dest")
		if err != nil || len(list) != 2 || list[0].ID != "d0" || list[1].ID != "d1" || list[1].Version != 2 ||
			string(list[1].Data) != `{"url":"http://b"}` {
			t.Fatalf("DocList = %+v, %v", list, err)
		}
		if err := s.DocDelete(ctx, "dest", "d1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.DocGet(ctx, "dest", "d1"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("DocGet after delete err = %v", err)
		}
		if err := s.DocDelete(ctx, "dest", "d1"); !errors.Is(err, dispatch.ErrNotFound) {
			t.Fatalf("second DocDelete err = %v", err)
		}
	})
}
