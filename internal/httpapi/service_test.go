package httpapi

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/dispatch/dispatchsqlite"
	"fanout/internal/service"
	"fanout/webhook"
)

// testLimits are small limits, for tests that reach them.
var testLimits = Limits{MaxEventBytes: 64, MaxBatchBytes: 512, MaxBatchEvents: 4, IngestTimeout: 5 * time.Second}

// newTestService is the service over a real SQLite store in the test's
// directory, with a runtime that is not started: the tests of this
// package see exactly what ingest stored. (The app's tests build the whole
// app, through its constructor, in package app.)
func newTestService(t testing.TB) (*service.Service, *dispatchsqlite.Store) {
	t.Helper()
	store, err := dispatchsqlite.Open(context.Background(), dispatchsqlite.Config{Path: filepath.Join(t.TempDir(), "fanout.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dests := destination.NewRegistry(destination.Config{Store: store, Logger: log})
	if err := dests.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	fns := service.NewFunctions(dests, webhook.NewClient(webhook.Config{}), time.Now, nil)
	rt, err := dispatch.New(&dispatch.Config{Store: store, Keys: dests.KeyConfig, Logger: log}, fns.PublishEvent, fns.HandleEvent)
	if err != nil {
		t.Fatal(err)
	}
	return service.New(service.Config{Runtime: rt, Store: store, Fns: fns, Dests: dests}), store
}

// stored returns the events in the store (claiming them, which is fine for
// a store no runtime runs on).
func stored(t testing.TB, s dispatch.Store) []*dispatch.Call {
	t.Helper()
	calls, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{
		Owner: "test", Functions: []string{"handleEvent"}, Limit: 100000,
		Now: time.Now().Add(time.Hour), LeaseUntil: time.Now().Add(2 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	return calls
}
