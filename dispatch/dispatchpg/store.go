// Package dispatchpg is the PostgreSQL store of the dispatch runtime, for
// several fanout replicas sharing one database.
//
// Every replica runs the same runtime on the same tables. What makes that
// safe:
//
//   - Claims lock the rows they take with FOR UPDATE SKIP LOCKED, one
//     statement per key claiming up to Limit calls: two replicas never take
//     the same call, and never wait for each other's claims.
//   - A claimed call carries a lease (owner, expiry). A live replica renews
//     the leases of the calls it runs; any replica hands back the calls
//     whose lease expired (their replica died). Unlike the SQLite store,
//     Open does not hand back running calls: they may belong to a live
//     replica.
//   - Every change that finishes an attempt is fenced by the attempt
//     number, so a replica that lost its lease cannot overwrite the call's
//     new owner.
//   - A parent whose children run as local calls in one replica
//     (dispatch.Call.Local) keeps their plan in its row, leased to that
//     replica. A local call's finish locks the parent before it writes the
//     child's row, and the release of an expired lease locks the parent
//     before it stores the children that have no row: each child is written
//     once, by one or the other (see localLockSQL and dropPlans). Open does
//     not drop plans, as it does not hand back running calls.
//   - Commits that create work runnable by anyone send a NOTIFY in the same
//     transaction (one per commit); every store LISTENs on a connection of
//     its own and wakes its runtime (dispatch.Notifier), which otherwise
//     polls.
//   - Migrations run at Open in one transaction under an advisory lock, so
//     replicas that start together migrate once.
//
// Durability is PostgreSQL's: a commit returns once its WAL is flushed
// (synchronous_commit=on, the server default; the store refuses to run
// with it off unless Config.AllowAsyncCommit says so). Concurrent commits
// share WAL flushes on the server, so the store needs no writer goroutine
// of its own: a pool of connections is its group commit.
//
// Every operation is bounded in time: waiting for a connection by the
// caller's context and Config.OpTimeout, running by Config.OpTimeout. A
// database that cannot be reached makes operations fail, never hang, and
// the runtime and the HTTP layer carry on without it (503 to ingest,
// deliveries paused until it is back).
package dispatchpg

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

//go:embed migration/*.sql
var migrations embed.FS

// Config configures a Store.
type Config struct {
	// URL is a PostgreSQL connection string (postgres://user:pass@host/db).
	// Pool settings in it (pool_max_conns, ...) and connect_timeout win
	// over the fields below; so does search_path, which places the tables
	// in a schema of their own.
	URL string
	// Logger receives the store's logs (default slog.Default()).
	Logger *slog.Logger
	// MaxConns is the size of the connection pool (default 16). Commits of
	// concurrent operations share WAL flushes on the server, so a few
	// connections beyond the cores help; every replica holds this many plus
	// one for LISTEN, so keep replicas × (MaxConns+1) under the server's
	// max_connections.
	MaxConns int32
	// ConnectTimeout bounds establishing a connection (default 5s).
	ConnectTimeout time.Duration
	// OpTimeout bounds one store operation: waiting for a connection, and
	// then running (default 10s, fanout's --ingest-timeout). A write whose commit is under way when
	// the caller's context ends still waits for its outcome, up to
	// OpTimeout, so that the caller is not told that something failed
	// when it is in fact stored.
	OpTimeout time.Duration
	// Channel is the LISTEN/NOTIFY channel (default "dispatch_calls", with
	// the schema appended when the tables are not in "public", so that
	// stores in different schemas of one database do not wake each other).
	Channel string
	// Writers is how many goroutines group-commit the store's hot writes
	// (finishing attempts, storing new calls), each with a connection of
	// the pool while it commits (default 4); MaxBatch caps the operations
	// of one commit (default 256).
	Writers, MaxBatch int
	// AllowAsyncCommit lets Open proceed when the connection's
	// synchronous_commit is off or local, which loses acknowledged
	// events when the server crashes. Off by default.
	AllowAsyncCommit bool
	// SyncEveryCommit makes every commit wait for its WAL flush, as before
	// lazy commits. By default, a group commit that carries only
	// operations whose loss costs at most a call run again (finishes,
	// snoozes, claims, lease renewals) runs with synchronous_commit off,
	// for that transaction alone (see writer.run): the server acknowledges
	// it before its WAL flush, and its WAL writer flushes it within
	// 3 × wal_writer_delay (600ms by default). A batch that also stores new
	// calls, and every other write, keep synchronous commit.
	//
	// Why it is safe: nothing a 2xx promised rides on such a commit; the
	// events an ingest acknowledged are inserts, which always wait for
	// their flush. The WAL is one ordered log and a synchronous commit
	// flushes everything before it, so a server crash loses only a suffix
	// of such commits made since the last flush, never one that a later
	// durable commit built on. What that loses is an attempt's outcome (the
	// call is found running with its lease, and runs again once the lease
	// expires: a repeated delivery, which at-least-once allows), a claim
	// (the call is pending again and claimed anew; the finish of the lost
	// attempt is fenced by its attempt number), or a lease renewal (the
	// lease expires sooner, and the call may run again elsewhere). A
	// crash of this process alone loses nothing: the server has the
	// commit.
	SyncEveryCommit bool
	// OnCommit, when set, is called after each group commit that
	// succeeded, with how many operations it carried and how long its
	// round trip took (WAL flush included), for an application's metrics.
	// It runs on a writer goroutine: keep it short.
	OnCommit func(ops int, took time.Duration)
}

// Store is a dispatch.Store on PostgreSQL.
type Store struct {
	pool    *pgxpool.Pool
	w       *writer
	connCfg *pgx.ConnConfig
	log     *slog.Logger
	timeout time.Duration
	hooks   testHooks
	channel string
	// onCommit is Config.OnCommit.
	onCommit func(ops int, took time.Duration)
	// syncEveryCommit is Config.SyncEveryCommit.
	syncEveryCommit bool
	// rows counts the rows written by committed transactions, by kind
	// (StoreStats.Rows).
	rows storeutil.RowCounter

	// notify fires when another process commits work that this one may
	// run. pids are the backends of this store's own pool: their
	// notifications are dropped, the runtime knows its own work.
	notify chan struct{}
	pids   sync.Map // uint32 -> struct{}
	// lastNotify is when a commit of this store last notified (unix
	// nanoseconds); trailing asks the notifier for one more.
	lastNotify   atomic.Int64
	trailing     chan struct{}
	notifierDone chan struct{}

	// retention is, per rule (done, failed), the seq up to which
	// CallDeleteFinished has nothing left to delete.
	retention struct {
		sync.Mutex
		mark [2]int64
	}

	closeOnce    sync.Once
	closed       chan struct{}
	listenCancel context.CancelFunc
	listenDone   chan struct{}
}

var (
	_ dispatch.Store         = (*Store)(nil)
	_ dispatch.DocStore      = (*Store)(nil)
	_ dispatch.StatsReporter = (*Store)(nil)
	_ dispatch.HistoryStore  = (*Store)(nil)
	_ dispatch.Notifier      = (*Store)(nil)
)

// errClosed is returned for operations after Close.
var errClosed = errors.New("dispatchpg: store is closed")

// migrationLock is the key of the advisory lock held while migrating.
const migrationLock int64 = 0x66616e6f75747067 // "fanoutpg"

// Open connects to the database, migrates it, and starts listening for the
// work of other processes. It does not touch calls that are running: they
// may belong to another live replica, and are handed back only once their
// lease expires.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URL == "" {
		return nil, errors.New("dispatchpg: Config.URL is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 16
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 4
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 256
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 10 * time.Second
	}
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("dispatchpg: parse database URL: %w", err)
	}
	if !hasParam(cfg.URL, "pool_max_conns") {
		pcfg.MaxConns = cfg.MaxConns
	}
	if !hasParam(cfg.URL, "connect_timeout") {
		pcfg.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	}
	// A dead server must not leave a connection waiting for an answer
	// forever; every operation has a deadline besides (OpTimeout).
	if pcfg.ConnConfig.RuntimeParams == nil {
		pcfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "fanout"
	}
	s := &Store{
		connCfg:  pcfg.ConnConfig.Copy(),
		log:      cfg.Logger,
		timeout:  cfg.OpTimeout,
		notify:   make(chan struct{}, 1),
		trailing: make(chan struct{}, 1),
		closed:   make(chan struct{}),
	}
	pcfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		s.pids.Store(c.PgConn().PID(), struct{}{})
		return nil
	}
	pcfg.BeforeClose = func(c *pgx.Conn) { s.pids.Delete(c.PgConn().PID()) }

	octx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout+cfg.OpTimeout)
	defer cancel()
	s.pool, err = pgxpool.NewWithConfig(octx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("dispatchpg: %w", err)
	}
	if err := s.open(octx, &cfg); err != nil {
		s.pool.Close()
		return nil, err
	}
	s.onCommit = cfg.OnCommit
	s.syncEveryCommit = cfg.SyncEveryCommit
	s.w = newWriter(s, cfg.Writers, cfg.MaxBatch)
	lctx, lcancel := context.WithCancel(context.Background())
	s.listenCancel, s.listenDone = lcancel, make(chan struct{})
	ready := make(chan struct{})
	go s.listen(lctx, ready)
	s.notifierDone = make(chan struct{})
	go s.notifier(lctx)
	// Wait (briefly) for LISTEN to be in place, so that work committed
	// right after Open returns is heard; the runtime polls anyway.
	select {
	case <-ready:
	case <-time.After(cfg.ConnectTimeout):
		s.log.Warn("dispatchpg: LISTEN is not in place yet; relying on polling until it is")
	}
	return s, nil
}

func (s *Store) open(ctx context.Context, cfg *Config) error {
	var schema, syncCommit string
	if err := s.pool.QueryRow(ctx, `SELECT current_schema(), current_setting('synchronous_commit')`).Scan(&schema, &syncCommit); err != nil {
		return fmt.Errorf("dispatchpg: connect: %w", err)
	}
	switch syncCommit {
	case "on", "remote_write", "remote_apply":
	default:
		if !cfg.AllowAsyncCommit {
			return fmt.Errorf("dispatchpg: synchronous_commit is %q: acknowledged events would be lost in a server crash; "+
				"set it to on (or set Config.AllowAsyncCommit)", syncCommit)
		}
		s.log.Warn("dispatchpg: synchronous_commit is "+syncCommit+": a server crash loses the last acknowledged events", "synchronous_commit", syncCommit)
	}
	s.channel = cfg.Channel
	if s.channel == "" {
		s.channel = "dispatch_calls"
		if schema != "public" && schema != "" {
			s.channel = truncate("dispatch_calls_"+schema, 63)
		}
	}
	return s.migrate(ctx)
}

func hasParam(url, name string) bool {
	return strings.Contains(url, name+"=")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// migrate applies the embedded migrations the database lacks, all in one
// transaction under an advisory lock: replicas that start at once wait for
// the first one, then find nothing to do.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migration/*.up.sql")
	if err != nil {
		return fmt.Errorf("dispatchpg: migrate: %w", err)
	}
	slices.Sort(names)
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return fmt.Errorf("dispatchpg: migrate: lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS migrations (
			version    integer PRIMARY KEY,
			name       text    NOT NULL,
			applied_at bigint  NOT NULL
		)`); err != nil {
			return fmt.Errorf("dispatchpg: migrate: %w", err)
		}
		// Every migration not applied yet, in order, not only those past the
		// highest applied: migrations made on branches land in any order
		// (a database that has 004 may lack 003).
		rows, err := tx.Query(ctx, `SELECT version FROM migrations`)
		if err != nil {
			return fmt.Errorf("dispatchpg: migrate: %w", err)
		}
		applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return fmt.Errorf("dispatchpg: migrate: %w", err)
		}
		for _, name := range names {
			base := path.Base(name)
			version, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
			if err != nil {
				return fmt.Errorf("dispatchpg: migrate: bad migration name %s", base)
			}
			if slices.Contains(applied, int32(version)) {
				continue
			}
			body, err := migrations.ReadFile(name)
			if err != nil {
				return fmt.Errorf("dispatchpg: migrate: %w", err)
			}
			// Simple protocol: a migration is several statements.
			if _, err := tx.Exec(ctx, string(body), pgx.QueryExecModeSimpleProtocol); err != nil {
				return fmt.Errorf("dispatchpg: migrate %s: %w", base, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
				version, base, time.Now().UnixNano()); err != nil {
				return fmt.Errorf("dispatchpg: migrate %s: %w", base, err)
			}
			s.log.Info("dispatchpg: applied migration", "migration", base)
		}
		return nil
	})
}

// Close stops listening and closes the pool. It is safe to call more than
// once; operations after Close fail.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		if s.w != nil {
			s.w.close()
		}
		if s.listenCancel != nil {
			s.listenCancel()
			<-s.listenDone
			<-s.notifierDone
		}
		// Closing waits for connections to say goodbye; pgx gives one whose
		// last operation timed out 15s to do so (it sends the server a
		// cancel request first). A network that drops everything must not
		// hold a shutdown that long: the rest closes in the background.
		done := make(chan struct{})
		go func() { s.pool.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(closeWait):
			s.log.Warn("dispatchpg: connections still closing; leaving them behind", "after", closeWait)
		}
	})
	return nil
}

// closeWait bounds how long Close waits for the pool's connections.
const closeWait = 3 * time.Second

// Notify implements dispatch.Notifier: the channel fires (coalesced) when
// another process commits work that may be runnable here.
func (s *Store) Notify() <-chan struct{} { return s.notify }

// Channel returns the LISTEN/NOTIFY channel of the store.
func (s *Store) Channel() string { return s.channel }

// notifyGap is the shortest time between two notifying commits of a store.
// A NOTIFY makes its commit take a database-wide lock (commits that notify
// are serialized, WAL flush included), and one notification wakes every
// listener for all the work committed so far: a burst of commits needs one,
// not one each.
const notifyGap = 20 * time.Millisecond

// notifyNow reports whether a commit that makes work runnable should carry
// the NOTIFY itself (true), or leave it to one sent after it, within
// notifyGap, for a burst (false: call notifyAfter once it committed).
func (s *Store) notifyNow() bool {
	now := time.Now().UnixNano()
	last := s.lastNotify.Load()
	return now-last >= int64(notifyGap) && s.lastNotify.CompareAndSwap(last, now)
}

// notifyAfter asks for a notification after commits that skipped theirs:
// the notifier sends one when notifyGap has passed since the last one.
func (s *Store) notifyAfter() {
	select {
	case s.trailing <- struct{}{}:
	default:
	}
}

// notifier sends the notifications that commits of a burst left to it.
func (s *Store) notifier(ctx context.Context) {
	defer close(s.notifierDone)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.trailing:
		}
		wait := time.Duration(s.lastNotify.Load() + int64(notifyGap) - time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		s.lastNotify.Store(time.Now().UnixNano())
		err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
			_, err := conn.Exec(ctx, notifySQL, s.channel)
			return err
		})
		if err != nil && ctx.Err() == nil {
			s.log.Debug("dispatchpg: notify other replicas; they poll meanwhile", "err", err)
		}
	}
}

func (s *Store) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// listen holds a connection of its own that LISTENs on the channel, and
// reconnects after errors, backing off up to 5s. After a reconnection it
// wakes the runtime once: notifications sent meanwhile were missed.
func (s *Store) listen(ctx context.Context, ready chan struct{}) {
	defer close(s.listenDone)
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, func() {
			if first {
				close(ready)
				first = false
			} else {
				s.log.Info("dispatchpg: listening for other replicas' work again")
				s.wake()
			}
			backoff = 100 * time.Millisecond
		})
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("dispatchpg: lost the LISTEN connection; polling until it is back", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context, listening func()) error {
	cctx, cancel := context.WithTimeout(ctx, s.connCfg.ConnectTimeout+s.timeout)
	conn, err := pgx.ConnectConfig(cctx, s.connCfg)
	if err != nil {
		cancel()
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(cctx, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		cancel()
		return err
	}
	cancel()
	listening()
	for {
		// A bounded wait, then a ping: a connection to a server that
		// vanished without a word is noticed within a minute.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if _, own := s.pids.Load(n.PID); !own {
				s.wake()
			}
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, s.timeout)
			err = conn.Ping(pctx)
			cancel()
			if err == nil {
				continue
			}
		}
		return err
	}
}

// acquire gets a connection, waiting at most until ctx ends or OpTimeout.
func (s *Store) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	select {
	case <-s.closed:
		return nil, errClosed
	default:
	}
	actx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	conn, err := s.pool.Acquire(actx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return conn, nil
}

// write runs fn on a connection. Once it has one, fn runs under a context
// that the caller's cancellation does not reach, bounded by OpTimeout: a
// write that reached the server is seen through to its outcome, so that
// success is not reported as failure.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, conn *pgxpool.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	conn, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	return fn(wctx, conn)
}

// writeTx runs fn in a transaction (see write), and counts the rows it
// wrote once it committed.
func (s *Store) writeTx(ctx context.Context, fn func(ctx context.Context, tx *rtx) error) error {
	return retryDeadlock(func() error { return s.writeTxOnce(ctx, fn) })
}

// writeTxOnce is writeTx without its retry of a deadlock's victim.
func (s *Store) writeTxOnce(ctx context.Context, fn func(ctx context.Context, tx *rtx) error) error {
	return s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		if err := s.hooks.before(); err != nil {
			return err
		}
		var rows map[string]int64
		err := s.hooks.after(pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			t := &rtx{Tx: tx}
			err := fn(ctx, t)
			rows = t.rows
			return err
		}))
		if err == nil {
			s.rows.Add(rows)
		}
		return err
	})
}

// exec runs a statement on its own (it commits by itself), and counts the
// rows it wrote (see rtx).
func (s *Store) exec(ctx context.Context, conn *pgxpool.Conn, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := conn.Exec(ctx, sql, args...)
	if err == nil {
		s.rows.Add(addRows(nil, rowKind(sql), tag.RowsAffected()))
	}
	return tag, err
}

// rtx is a transaction of writeTx that counts the rows it writes, by kind
// (StoreStats.Rows): Exec counts the rows its statement affected under the
// kind its first words name (storeutil.RowKind); a statement that starts
// with WITH, or one run with Query, is counted by its caller (wrote).
type rtx struct {
	pgx.Tx
	rows map[string]int64
}

// Exec runs a statement, and counts the rows it wrote.
func (tx *rtx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := tx.Tx.Exec(ctx, sql, args...)
	if err == nil {
		tx.wrote(rowKind(sql), tag.RowsAffected())
	}
	return tag, err
}

// wrote counts n rows of kind.
func (tx *rtx) wrote(kind string, n int64) { tx.rows = addRows(tx.rows, kind, n) }

// rowKinds caches storeutil.RowKind by statement.
var rowKinds sync.Map

func rowKind(sql string) string {
	if k, ok := rowKinds.Load(sql); ok {
		return k.(string)
	}
	k := storeutil.RowKind(sql)
	rowKinds.Store(sql, k)
	return k
}

// read runs fn on a connection, bounded by the caller's context and
// OpTimeout.
func (s *Store) read(ctx context.Context, fn func(ctx context.Context, conn *pgxpool.Conn) error) error {
	conn, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return fn(rctx, conn)
}

// StoreStats implements dispatch.StatsReporter.
func (s *Store) StoreStats() dispatch.StoreStats {
	return dispatch.StoreStats{Commits: s.w.commits.Load(), Ops: s.w.opsDone.Load(), Replays: s.w.replays.Load(),
		ConnWaits: s.pool.Stat().EmptyAcquireCount(), Rows: s.rows.Snapshot()}
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
