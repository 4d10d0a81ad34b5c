package dispatchpg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"fanout/dispatch"
	"fanout/dispatch/dispatchpg"
	"fanout/dispatch/dispatchtest"
	"fanout/internal/pgtest"
)

var T0 = dispatchtest.T0

func openURL(t testing.TB, u string, cfg dispatchpg.Config) *dispatchpg.Store {
	t.Helper()
	cfg.URL = u
	if cfg.Logger == nil {
		cfg.Logger = quiet(t)
	}
	s, err := dispatchpg.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func call(id string, runAfter time.Time) *dispatch.Call {
	return &dispatch.Call{ID: id, Function: "f", Input: []byte(`{}`), RunAfter: runAfter, CreatedAt: T0}
}

func insert(t testing.TB, s dispatch.Store, calls ...*dispatch.Call) {
	t.Helper()
	if _, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatalf("CallInsertMany: %v", err)
	}
}

// Replicas that start together on an empty database migrate it once.
func TestOpen_ConcurrentMigrations(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	const replicas = 6
	var wg sync.WaitGroup
	errs := make(chan error, replicas)
	for range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := dispatchpg.Open(context.Background(), dispatchpg.Config{URL: u, Logger: quiet(t)})
			if err != nil {
				errs <- err
				return
			}
			errs <- s.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	conn := connect(t, u)
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("migration/*.up.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations found: %v", err)
	}
	if n != len(files) {
		t.Fatalf("migrations has %d rows, want %d (each migration applied once)", n, len(files))
	}
}

func connect(t testing.TB, u string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// Open must not hand back running calls: they may belong to a live replica.
// Only their expiry, or their owner, releases them.
func TestOpen_KeepsOtherReplicasLeases(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	a := openURL(t, u, dispatchpg.Config{})
	insert(t, a, call("c", T0))
	claimed, err := a.CallClaim(context.Background(), &dispatch.CallClaimParams{Owner: "replica-a", Functions: []string{"f"},
		Limit: 1, Now: T0, LeaseUntil: T0.Add(time.Minute)})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %v, %v", claimed, err)
	}
	b := openURL(t, u, dispatchpg.Config{})
	c, err := b.CallGet(context.Background(), "c")
	if err != nil {
		t.Fatal(err)
	}
	if c.State != dispatch.StateRunning || c.LeaseOwner != "replica-a" {
		t.Fatalf("after another replica opened, call %+v; want still running for replica-a", c)
	}
}

func waitNotify(t testing.TB, s *dispatchpg.Store, within time.Duration) bool {
	t.Helper()
	select {
	case <-s.Notify():
		return true
	case <-time.After(within):
		return false
	}
}

func drain(s *dispatchpg.Store) {
	select {
	case <-s.Notify():
	default:
	}
}

// Work committed by one replica wakes the others, not itself; work that is
// not runnable by others (leased on insert, or for later) wakes nobody.
func TestNotify(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	a := openURL(t, u, dispatchpg.Config{})
	b := openURL(t, u, dispatchpg.Config{})
	now := time.Now()
	tests := []struct {
		name   string
		calls  []*dispatch.Call
		wakesB bool
	}{
		{"Runnable", []*dispatch.Call{call("r1", now), call("r2", now)}, true},
		{"Later", []*dispatch.Call{call("l1", now.Add(time.Hour))}, false},
		{"Leased", []*dispatch.Call{{ID: "x1", Function: "f", Input: []byte(`{}`), RunAfter: now, CreatedAt: now,
			State: dispatch.StateRunning, Attempt: 1, LeaseOwner: "a", LeaseExpires: now.Add(time.Minute)}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			drain(a)
			drain(b)
			insert(t, a, tc.calls...)
			wait := 5 * time.Second
			if !tc.wakesB {
				wait = 300 * time.Millisecond
			}
			if got := waitNotify(t, b, wait); got != tc.wakesB {
				t.Fatalf("replica b notified = %v, want %v", got, tc.wakesB)
			}
			if waitNotify(t, a, 100*time.Millisecond) {
				t.Fatal("replica a was notified of its own work")
			}
		})
	}
	// Releasing expired leases makes calls runnable for anyone.
	drain(b)
	if n, err := a.CallLeaseRelease(context.Background(), &dispatch.CallLeaseReleaseParams{Now: now.Add(2 * time.Minute)}); err != nil || n != 1 {
		t.Fatalf("CallLeaseRelease = %d, %v", n, err)
	}
	if !waitNotify(t, b, 5*time.Second) {
		t.Fatal("released leases did not notify the other replica")
	}
}

// The listener reconnects after its connection is killed, wakes its
// runtime once (it may have missed notifications), and hears again.
func TestNotify_Reconnects(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	a := openURL(t, u, dispatchpg.Config{})
	b := openURL(t, u, dispatchpg.Config{})
	admin := connect(t, u)
	ctx := context.Background()
	tag, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN %' AND query LIKE '%'||$1||'%'`, b.Channel())
	if err != nil || tag.RowsAffected() == 0 {
		t.Fatalf("terminate the listener: %v (%d rows)", err, tag.RowsAffected())
	}
	if !waitNotify(t, b, 10*time.Second) {
		t.Fatal("no wake-up after the listener reconnected")
	}
	insert(t, a, call("after", time.Now()))
	if !waitNotify(t, b, 10*time.Second) {
		t.Fatal("no notification after the listener reconnected")
	}
}

// Replicas claiming the same key at once get disjoint calls, and together
// all of them.
func TestClaim_ConcurrentReplicasDisjoint(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	stores := []*dispatchpg.Store{openURL(t, u, dispatchpg.Config{}), openURL(t, u, dispatchpg.Config{}), openURL(t, u, dispatchpg.Config{})}
	const total = 2000
	var calls []*dispatch.Call
	for i := range total {
		calls = append(calls, call(fmt.Sprintf("c%05d", i), T0))
	}
	insert(t, stores[0], calls...)
	var mu sync.Mutex
	seen := map[string]string{}
	var wg sync.WaitGroup
	for i := range 9 {
		s := stores[i%len(stores)]
		owner := fmt.Sprintf("o%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := s.CallClaim(context.Background(), &dispatch.CallClaimParams{Owner: owner, Functions: []string{"f"},
					Limit: 37, Now: T0, LeaseUntil: T0.Add(time.Minute)})
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, c := range got {
					if prev, dup := seen[c.ID]; dup {
						t.Errorf("%s claimed by %s and %s", c.ID, prev, owner)
					}
					seen[c.ID] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != total {
		t.Fatalf("claimed %d distinct calls, want %d", len(seen), total)
	}
}

// Two replicas inserting the same dedup key at once store one call.
func TestDedup_ConcurrentReplicas(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	a := openURL(t, u, dispatchpg.Config{})
	b := openURL(t, u, dispatchpg.Config{})
	for round := range 20 {
		key := fmt.Sprintf("k%d", round)
		results := make([][]string, 2)
		var wg sync.WaitGroup
		for i, s := range []*dispatchpg.Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := call(fmt.Sprintf("%s-%d", key, i), T0)
				c.DedupKey = key
				got, err := s.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: []*dispatch.Call{c}, DedupSince: T0})
				if err != nil {
					t.Error(err)
				}
				results[i] = got
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		if results[0][0] != results[1][0] {
			t.Fatalf("round %d: the two inserts returned %v and %v, want the same call", round, results[0], results[1])
		}
	}
}

// CallKeys skips through the runnable index: it does not read the history.
func TestCallKeys_LooseIndexScan(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	s := openURL(t, u, dispatchpg.Config{})
	conn := connect(t, u)
	ctx := context.Background()
	// 20,000 finished calls and a backlog of 5,000 on 3 keys.
	if _, err := conn.Exec(ctx, `INSERT INTO calls (id, function, key, input, state, run_after, budget_start, created_at, updated_at)
		SELECT 'd'||i, 'f', 'k'||(i % 50), '{}', 3, 0, 0, 0, 0 FROM generate_series(1, 20000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO calls (id, function, key, input, state, run_after, budget_start, created_at, updated_at)
		SELECT 'p'||i, 'f', 'k'||(i % 3), '{}', 0, i, 0, 0, 0 FROM generate_series(1, 5000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `ANALYZE calls`); err != nil {
		t.Fatal(err)
	}
	keys, err := s.CallKeys(ctx, time.Unix(0, 2))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys) // in no particular order
	if fmt.Sprint(keys) != "[k1 k2]" {
		t.Fatalf("CallKeys = %v, want [k1 k2]", keys)
	}
	rows, err := conn.Query(ctx, `EXPLAIN (ANALYZE, COSTS OFF, FORMAT TEXT) `+dispatchpg.KeysSQL, int64(2))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	if strings.Contains(text, "Seq Scan") || !strings.Contains(text, "calls_runnable") {
		t.Fatalf("CallKeys plan does not skip through calls_runnable:\n%s", text)
	}
	// One probe per key, newest first: not a join that reads the whole
	// backlog, nor a walk up through the entries claims left behind.
	if strings.Contains(text, "Hash") || strings.Contains(text, "Bitmap") || strings.Count(text, "Index Only Scan Backward") < 3 {
		t.Fatalf("CallKeys plan is not one backward probe per key:\n%s", text)
	}
	t.Logf("plan:\n%s", text)
}

// A database that cannot be reached makes operations fail within the
// store's timeouts, never hang; once it is back, they work again.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	p := pgtest.StartProxy(t, u)
	cfg := dispatchpg.Config{ConnectTimeout: 500 * time.Millisecond, OpTimeout: time.Second}
	s := openURL(t, p.URL, cfg)
	ctx := context.Background()
	insert(t, s, call("before", T0))

	tests := []struct {
		name string
		mode string
	}{
		{"Refused", "refuse"},   // the server is gone: connections are refused
		{"Silent", "blackhole"}, // the network drops everything: no answer at all
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.Set(tc.mode)
			start := time.Now()
			for i, op := range []func() error{
				func() error { _, err := s.CallGet(ctx, "before"); return err },
				func() error {
					_, err := s.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: []*dispatch.Call{call(tc.name, T0)}})
					return err
				},
				func() error { _, err := s.CallKeys(ctx, T0); return err },
			} {
				opStart := time.Now()
				if err := op(); err == nil {
					t.Fatalf("operation %d succeeded with the database %s", i, tc.mode)
				}
				if d := time.Since(opStart); d > 5*time.Second {
					t.Fatalf("operation %d took %v to fail, want it bounded by the timeouts", i, d)
				}
			}
			t.Logf("3 operations failed in %v", time.Since(start).Round(time.Millisecond))
			p.Set(pgtest.Forward)
			deadline := time.Now().Add(20 * time.Second)
			for {
				_, err := s.CallGet(ctx, "before")
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the store did not recover once the database was back: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	if _, err := s.CallGet(ctx, "Refused"); !errors.Is(err, dispatch.ErrNotFound) {
		t.Fatalf("an insert that failed was stored (err %v)", err)
	}
}

func TestOpen_Errors(t *testing.T) {
	t.Parallel()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	tests := []struct {
		name string
		cfg  dispatchpg.Config
		want string
	}{
		{"NoURL", dispatchpg.Config{}, "URL is required"},
		{"BadURL", dispatchpg.Config{URL: "postgres://%zz"}, "parse database URL"},
		{"Refused", dispatchpg.Config{URL: "postgres://postgres@" + addr + "/postgres?sslmode=disable"}, "connect"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			s, err := dispatchpg.Open(context.Background(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open error %q, want it to contain %q", err, tc.want)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("Open took %v to fail", d)
			}
		})
	}
}

// A release finds expired leases, of running calls and of parents that
// hold a plan of local calls, and the leases of one owner, through
// calls_leased: it does not read the history.
func TestRelease_OnLeasedIndex(t *testing.T) {
	t.Parallel()
	u := pgtest.NewURL(t)
	openURL(t, u, dispatchpg.Config{})
	conn := connect(t, u)
	ctx := context.Background()
	// 50,000 finished calls, 500 running, 50 parents with a plan.
	for _, q := range []string{
		`INSERT INTO calls (id, function, key, input, state, run_after, budget_start, created_at, updated_at)
			SELECT 'd'||i, 'f', 'k', '{}', 3, 0, 0, 0, 0 FROM generate_series(1, 50000) i`,
		`INSERT INTO calls (id, function, key, input, state, attempt, lease_owner, lease_expires, run_after, budget_start, created_at, updated_at)
			SELECT 'r'||i, 'f', 'k', '{}', 1, 1, 'o'||(i % 5), i, 0, 0, 0, 0 FROM generate_series(1, 500) i`,
		`INSERT INTO calls (id, function, key, input, state, attempt, lease_owner, lease_expires, plan, plan_total, run_after, budget_start, created_at, updated_at)
			SELECT 'p'||i, 'f', 'k', '{}', 2, 1, 'o'||(i % 5), i, '\x01', 1, 0, 0, 0, 0 FROM generate_series(1, 50) i`,
		`ANALYZE calls`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, sql string
		arg       any
	}{
		{"ReleaseExpired", dispatchpg.ReleaseExpiredSQL, int64(10)},
		{"ReleaseOwner", dispatchpg.ReleaseOwnerSQL, "o1"},
		{"ExpiredPlans", dispatchpg.ExpiredPlansSQL, int64(10)},
		{"OwnedPlans", dispatchpg.OwnedPlansSQL, "o1"},
	} {
		rows, err := conn.Query(ctx, `EXPLAIN (COSTS OFF) `+tc.sql, tc.arg)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(plan, "\n")
		if strings.Contains(text, "Seq Scan") || !strings.Contains(text, "calls_leased") {
			t.Errorf("%s does not use calls_leased:\n%s", tc.name, text)
		}
	}
}
