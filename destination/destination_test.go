package destination_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"fanout/destination"
	"fanout/destination/match"
	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/webhook"
)

func TestDestination_PausedAndKeys(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)
	old, cur := webhook.GenerateSecret(), webhook.GenerateSecret()
	d := &destination.Destination{Enabled: true, Secret: cur, PreviousSecret: old, PreviousSecretExpires: &later}
	if d.PausedAt(now) {
		t.Fatal("an enabled destination without a pause is paused")
	}
	if n := len(d.Keys(now)); n != 2 {
		t.Fatalf("%d keys during the grace period, want 2", n)
	}
	if n := len(d.Keys(later.Add(time.Second))); n != 1 {
		t.Fatalf("%d keys after the grace period, want 1", n)
	}
	d.CircuitOpenUntil = &later
	if !d.PausedAt(now) || d.PausedAt(later) {
		t.Fatal("an open circuit pauses until its time, not after")
	}
	d.CircuitOpenUntil, d.Enabled = nil, false
	if !d.PausedAt(now) {
		t.Fatal("a disabled destination is not paused")
	}
}

func TestDestination_PolicyAndDuration(t *testing.T) {
	t.Parallel()
	var d destination.Destination
	if err := json.Unmarshal([]byte(`{"retry":{"initial":"2s","max":600,"max_age":"48h"}}`), &d); err != nil {
		t.Fatal(err)
	}
	p, ok := d.Policy(dispatch.DefaultBackoff()).(*dispatch.Backoff)
	if !ok || p.Initial != 2*time.Second || p.Max != 10*time.Minute || p.MaxAge != 48*time.Hour || p.Min != dispatch.DefaultBackoff().Min {
		t.Fatalf("policy %+v", p)
	}
	b, _ := json.Marshal(d.Retry)
	if string(b) != `{"initial":"2s","max":"10m0s","max_age":"48h0m0s"}` {
		t.Fatalf("retry marshals to %s", b)
	}
	if (&destination.Destination{}).Policy(dispatch.DefaultBackoff()) != nil {
		t.Fatal("a destination without retry settings has its own policy")
	}
}

func openRegistry(t testing.TB) (*destination.Registry, *dispatchsqlite.Store, *atomic.Int32) {
	t.Helper()
	s, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var changes atomic.Int32
	r := destination.NewRegistry(destination.Config{Store: s, Guard: webhook.NewGuard(nil), Changed: func() { changes.Add(1) }})
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r, s, &changes
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, store, changes := openRegistry(t)

	id := destination.ConfiguredID("https://a.example/hook")
	for range 2 {
		if err := r.Ensure(ctx, id, "https://a.example/hook", "from --destination"); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(r.List()); n != 1 {
		t.Fatalf("Ensure twice made %d destinations, want 1", n)
	}
	if err := r.Ensure(ctx, "dst_x", "http://10.0.0.1/", ""); err == nil {
		t.Fatal("a private address was accepted")
	}

	b := &destination.Destination{URL: "https://b.example/", Enabled: true, Filter: []string{"order.*"}, MaxConcurrency: 5,
		RateLimit: destination.Throttle{Rate: 10}}
	if err := r.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := r.Matching(destination.DefaultTenant, "order.paid", nil, match.Envelope{}); len(got) != 2 {
		t.Fatalf("Matching(order.paid) = %d destinations, want 2", len(got))
	}
	if got := r.Matching(destination.DefaultTenant, "user.new", nil, match.Envelope{}); len(got) != 1 || got[0].ID != id {
		t.Fatalf("Matching(user.new) = %v, want only the unfiltered one", got)
	}
	kc := r.KeyConfig(b.ID)
	if kc.MaxConcurrency != 5 || kc.Rate != 10 || kc.Paused {
		t.Fatalf("KeyConfig = %+v", kc)
	}

	// Another replica's change is seen at the next refresh.
	doc, _ := store.DocGet(ctx, destination.DocKind, b.ID)
	var raw map[string]any
	_ = json.Unmarshal(doc.Data, &raw)
	raw["enabled"] = false
	doc.Data, _ = json.Marshal(raw)
	doc.UpdatedAt = time.Now()
	if err := store.DocUpdate(ctx, doc); err != nil {
		t.Fatal(err)
	}
	before := changes.Load()
	if err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _ := r.Get(b.ID); d.Enabled || changes.Load() == before || !r.KeyConfig(b.ID).Paused {
		t.Fatalf("after another replica disabled it: %+v (changes %d -> %d)", d, before, changes.Load())
	}

	// Update reads again after a conflicting change.
	calls := 0
	d, err := r.Update(ctx, b.ID, func(d *destination.Destination) error {
		calls++
		if calls == 1 { // someone else writes meanwhile
			other, _ := store.DocGet(ctx, destination.DocKind, b.ID)
			other.UpdatedAt = time.Now()
			if err := store.DocUpdate(ctx, other); err != nil {
				t.Fatal(err)
			}
		}
		d.Description = "changed"
		return nil
	})
	if err != nil || calls != 2 || d.Description != "changed" {
		t.Fatalf("Update = %+v, %v after %d tries; want it applied on the second", d, err, calls)
	}

	r.Trip(b.ID, "5 attempts in a row failed")
	if d, _ := r.Get(b.ID); d.CircuitOpenUntil == nil || !r.KeyConfig(b.ID).Paused {
		t.Fatalf("after Trip: %+v", d)
	}
	r.Gone(id, "410")
	if d, _ := r.Get(id); d.Enabled || d.Reason != "410" {
		t.Fatalf("after Gone: %+v", d)
	}
	if _, err := r.Update(ctx, "nope", func(*destination.Destination) error { return nil }); !errors.Is(err, destination.ErrNotFound) {
		t.Fatalf("Update of a missing destination: %v", err)
	}
	if err := r.Delete(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Get(b.ID); ok {
		t.Fatal("a deleted destination is still cached")
	}
}
