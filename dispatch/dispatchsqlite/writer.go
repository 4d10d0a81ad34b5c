package dispatchsqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// How lazy commits wait (see writer.doLazy): for their fsync, at most
// lazySyncWithin (a power cut repeats at most that much of the last
// finishes); for company, lazyGather.
const (
	lazySyncWithin = 100 * time.Millisecond
	lazyGather     = 2 * time.Millisecond
	// companyGap: lazy operations wait for company only while durable
	// commits come at least this often (see companyLikely).
	companyGap = 5 * time.Millisecond
)

// errClosed is returned for operations submitted after Close.
var errClosed = errors.New("dispatchsqlite: store is closed")

// writer owns the only write connection and group-commits operations: each
// commit takes every operation that queued up while the previous one was on
// its way to disk, so concurrent writers share an fsync.
//
// It talks to the SQLite driver directly (database/sql's Raw), not through
// database/sql: the writer is the one serial section of the service, and
// database/sql's per-statement locking, argument conversion and Rows
// bookkeeping cost it a fifth of its time.
type writer struct {
	sqlConn  *sql.Conn
	conn     driverConn
	maxBatch int
	log      *slog.Logger
	ops      chan *op
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	// Statements prepared once on conn. Only the writer goroutine uses them.
	stmts map[string]driver.Stmt
	// The INSERT statements of calls built so far, and how many of them
	// bind fewer than every column (see insertQuery); wideInserts binds
	// every column, for tests.
	inserts       map[insertShape]string
	narrowInserts int
	wideInserts   bool

	commits atomic.Int64
	opsDone atomic.Int64
	// rows counts the rows committed transactions wrote, by kind; kinds
	// caches the kind of each statement (storeutil.RowKind).
	rows  storeutil.RowCounter
	kinds map[string]string
	// onCommit is Config.OnCommit.
	onCommit func(ops int, took time.Duration)

	// Lazy commits (see doLazy). durable is the synchronous mode of
	// commits a 2xx depends on (Config.Synchronous); mode is the one the
	// connection has now. wal is the write-ahead log, opened for the
	// fsyncs of lazy commits that no durable commit followed within
	// syncWithin (unsynced says there are some). gatherLazy is how long a
	// commit of lazy operations alone waits for company.
	durable    string
	mode       string
	walPath    string
	wal        *os.File
	unsynced   bool
	syncWithin time.Duration
	gatherLazy time.Duration
	// When the last durable commit began, and how long after the one
	// before it (companyLikely, with companyGap). Only the writer
	// goroutine uses them.
	companyGap  time.Duration
	lastDurable time.Time
	durableGap  time.Duration
	lazySyncs   atomic.Int64
	allDurable  bool // Config.SyncEveryCommit
	wrote       bool // the last commit wrote rows (and so WAL frames)
}

// driverConn is what the writer needs of the driver's connection.
type driverConn interface {
	driver.ConnPrepareContext
	driver.ExecerContext
}

// op is one unit of work in a group commit. fn may run more than once (the
// group is replayed with savepoints when one of its operations fails), so it
// must derive its results only from what it reads and writes in tx.
type op struct {
	ctx context.Context
	fn  func(tx *wtx) error
	// lazy: the operation's commit need not be on disk when it returns
	// (see doLazy); patient: it may also wait for company (doLazy with
	// gather).
	lazy, patient bool
	err           error
	done          chan struct{}
}

func newWriter(conn *sql.Conn, maxBatch int, log *slog.Logger) *writer {
	return &writer{
		durable:    "FULL",
		mode:       "FULL",
		syncWithin: lazySyncWithin,
		gatherLazy: lazyGather,
		companyGap: companyGap,
		sqlConn:    conn,
		maxBatch:   maxBatch,
		log:        log,
		ops:        make(chan *op, maxBatch),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		stmts:      make(map[string]driver.Stmt),
		inserts:    make(map[insertShape]string),
		kinds:      make(map[string]string),
	}
}

// do runs fn in the next group commit and returns once that commit is durable
// (nil) or has failed (the error; nothing fn wrote is kept).
func (w *writer) do(ctx context.Context, fn func(tx *wtx) error) error {
	return w.submit(&op{ctx: ctx, fn: fn, done: make(chan struct{})})
}

// doLazy is do for an operation whose loss in a power cut costs at most a
// repeated call: a finish, a claim, a lease renewed or released, a
// retention pass. Nothing a 2xx promised rides on it. Its commit is not
// fsynced by itself (synchronous NORMAL): it returns once committed, and
// is durable once the next commit that is fsynced (any durable one) is,
// or within syncWithin, when the writer fsyncs the log itself. The log is
// written in order and SQLite checksums its frames in a chain, so a power
// cut loses a suffix of lazy commits, never one between two that survive.
// With gather, a commit of such operations alone also waits up to
// gatherLazy for more while durable commits come often (companyLikely),
// so that finishes share the next event's commit; a claim, which work
// waits for, does not.
func (w *writer) doLazy(ctx context.Context, gather bool, fn func(tx *wtx) error) error {
	lazy := !w.allDurable
	return w.submit(&op{ctx: ctx, fn: fn, lazy: lazy, patient: lazy && gather, done: make(chan struct{})})
}

func (w *writer) submit(o *op) error {
	ctx := o.ctx
	select {
	case w.ops <- o:
	case <-w.stop:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued, wait for the outcome even if ctx ends: the operation may
	// already be part of a commit, and the caller must not believe it failed
	// when it is in fact stored.
	select {
	case <-o.done:
		return o.err
	case <-w.done:
		select {
		case <-o.done:
			return o.err
		default:
			return errClosed
		}
	}
}

// start runs the writer's loop on the driver connection until close.
func (w *writer) start() error {
	ready := make(chan error, 1)
	go func() {
		defer close(w.done)
		err := w.sqlConn.Raw(func(dc any) error {
			conn, ok := dc.(driverConn)
			if !ok {
				return fmt.Errorf("dispatchsqlite: driver connection %T cannot prepare and execute", dc)
			}
			w.conn = conn
			ready <- nil
			w.loop()
			return nil
		})
		if err != nil {
			select {
			case ready <- err:
			default:
			}
			w.drain()
		}
		_ = w.sqlConn.Close()
	}()
	return <-ready
}

func (w *writer) loop() {
	batch := make([]*op, 0, w.maxBatch)
	// syncTimer fires when lazy commits have waited syncWithin for an
	// fsync; gatherTimer ends the wait of lazy operations for company.
	syncTimer := time.NewTimer(time.Hour)
	syncTimer.Stop()
	gatherTimer := time.NewTimer(time.Hour)
	gatherTimer.Stop()
	for {
		select {
		case o := <-w.ops:
			batch = append(batch[:0], o)
		case <-syncTimer.C:
			w.syncLazy()
			continue
		case <-w.stop:
			w.drain()
			w.syncLazy()
			for _, s := range w.stmts {
				_ = s.Close()
			}
			if w.wal != nil {
				_ = w.wal.Close()
			}
			return
		}
	collect:
		for len(batch) < w.maxBatch {
			select {
			case o := <-w.ops:
				batch = append(batch, o)
			default:
				break collect
			}
		}
		if w.gatherLazy > 0 && allPatient(batch) && len(batch) < w.maxBatch && w.companyLikely() {
			gatherTimer.Reset(w.gatherLazy)
		gather:
			for len(batch) < w.maxBatch {
				select {
				case o := <-w.ops:
					batch = append(batch, o)
					if !o.patient {
						break gather // a durable operation, or a claim, does not wait
					}
				case <-gatherTimer.C:
					break gather
				case <-w.stop:
					break gather
				}
			}
			gatherTimer.Stop()
		}
		lazy := allLazy(batch)
		if !lazy {
			now := time.Now()
			w.durableGap, w.lastDurable = now.Sub(w.lastDurable), now
		}
		committed := w.commit(batch, lazy)
		switch {
		case !committed:
		case lazy && !w.unsynced && w.durable != "NORMAL":
			w.unsynced = true
			syncTimer.Reset(w.syncWithin)
		case !lazy && w.wrote:
			// Its fsync made every earlier commit durable. A commit that
			// wrote nothing (an attach to busy parents, an operation that
			// failed alone) fsyncs nothing: the lazy ones still wait.
			w.unsynced = false
			syncTimer.Stop()
		}
	}
}

// companyLikely reports whether lazy operations should wait for company:
// when the last two durable commits began within companyGap of each other
// and the last one within companyGap of now, a durable operation (the next
// event's) is likely to come within gatherLazy, and the finishes share its
// commit and its fsync. At 400 events/s that saves more than the wait costs
// (without it, 1.06x the CPU per event); at 100 events/s nothing comes, and
// the wait is a timer and a wake-up for nothing (docs/BENCHMARKS.md, issue
// 24). Only the writer goroutine calls it.
func (w *writer) companyLikely() bool {
	return w.durableGap < w.companyGap && time.Since(w.lastDurable) < w.companyGap
}

func allPatient(batch []*op) bool {
	for _, o := range batch {
		if !o.patient {
			return false
		}
	}
	return true
}

func allLazy(batch []*op) bool {
	for _, o := range batch {
		if !o.lazy {
			return false
		}
	}
	return true
}

// syncLazy fsyncs the write-ahead log when lazy commits wait for it.
// SQLite's own connection would see an error of this fsync on its next
// one too (Linux reports a writeback error to every open file): a durable
// commit after a failed fsync fails, and is answered as such.
func (w *writer) syncLazy() {
	if !w.unsynced {
		return
	}
	w.unsynced = false
	if w.wal == nil {
		f, err := os.OpenFile(w.walPath, os.O_RDWR, 0)
		if err != nil {
			w.log.Error("open the write-ahead log to fsync it", "err", err)
			return
		}
		w.wal = f
	}
	if err := w.wal.Sync(); err != nil {
		w.log.Error("fsync the write-ahead log; the last finishes may repeat after a power cut", "err", err)
		return
	}
	w.lazySyncs.Add(1)
}

// setMode sets the connection's synchronous mode for the next commit.
func (w *writer) setMode(lazy bool) error {
	mode := w.durable
	if lazy {
		mode = "NORMAL"
	}
	if mode == w.mode {
		return nil
	}
	if err := w.execRaw("PRAGMA synchronous = " + mode); err != nil {
		return fmt.Errorf("set synchronous %s: %w", mode, err)
	}
	w.mode = mode
	return nil
}

// drain fails the operations still queued at Close.
func (w *writer) drain() {
	for {
		select {
		case o := <-w.ops:
			o.err = errClosed
			close(o.done)
		default:
			return
		}
	}
}

func (w *writer) close() error {
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
	return nil
}

// commit runs a group in one transaction. The fast path runs the operations
// back to back; if one of them fails, the transaction is rolled back and the
// group replayed with a savepoint around each operation, so that the failure
// of one (a duplicate id, say) fails only that one.
func (w *writer) commit(batch []*op, lazy bool) (committed bool) {
	w.wrote = false
	live := batch[:0:0]
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			close(o.done)
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return false
	}
	if err := w.setMode(lazy); err != nil {
		for _, o := range live {
			o.err = err
			close(o.done)
		}
		return false
	}
	err := w.run1(live, false)
	if errors.Is(err, errReplay) {
		err = w.run1(live, true)
	}
	for _, o := range live {
		if o.err == nil {
			o.err = err
		}
		close(o.done)
	}
	return err == nil
}

var errReplay = errors.New("replay with savepoints")

func (w *writer) execRaw(query string) error {
	_, err := w.conn.ExecContext(context.Background(), query, nil)
	return err
}

func (w *writer) run1(ops []*op, savepoints bool) error {
	tx := &wtx{w: w, ctx: context.Background(), rows: make(map[string]int64)}
	began := time.Now()
	if err := w.execRaw("BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	for _, o := range ops {
		o.err = nil
		if !savepoints {
			if err := o.fn(tx); err != nil {
				w.rollback()
				if len(ops) == 1 {
					o.err = err
					return nil
				}
				return errReplay
			}
			continue
		}
		if err := w.execRaw("SAVEPOINT op"); err != nil {
			w.rollback()
			return fmt.Errorf("savepoint: %w", err)
		}
		before := maps.Clone(tx.rows)
		if err := o.fn(tx); err != nil {
			o.err = err
			tx.rows = before // rolled back: it wrote nothing
			if err := w.execRaw("ROLLBACK TO op"); err != nil {
				w.rollback()
				return fmt.Errorf("rollback to savepoint: %w", err)
			}
		}
		if err := w.execRaw("RELEASE op"); err != nil {
			w.rollback()
			return fmt.Errorf("release savepoint: %w", err)
		}
	}
	if err := w.execRaw("COMMIT"); err != nil {
		w.rollback()
		for _, o := range ops {
			o.err = nil
		}
		return fmt.Errorf("commit: %w", err)
	}
	w.commits.Add(1)
	w.opsDone.Add(int64(len(ops)))
	w.rows.Add(tx.rows)
	w.wrote = len(tx.rows) > 0
	if w.onCommit != nil {
		w.onCommit(len(ops), time.Since(began))
	}
	return nil
}

func (w *writer) rollback() {
	if err := w.execRaw("ROLLBACK"); err != nil {
		// "no transaction is active" after SQLite rolled back by itself
		// (an I/O error, a full disk) is expected.
		w.log.Debug("rollback", "err", err)
	}
}

// wtx is the writer's transaction as operations see it.
type wtx struct {
	w    *writer
	ctx  context.Context
	args []driver.NamedValue
	// rows counts what the transaction wrote, by kind (StoreStats.Rows).
	rows map[string]int64
}

// count adds n rows written by query to the transaction's counts.
func (tx *wtx) count(query string, n int64) {
	kind, ok := tx.w.kinds[query]
	if !ok {
		kind = storeutil.RowKind(query)
		tx.w.kinds[query] = kind
	}
	if kind != "" && n > 0 {
		tx.rows[kind] += n
	}
}

// stmt returns the statement for query, prepared once on the writer's
// connection.
func (tx *wtx) stmt(query string) (driver.Stmt, error) {
	if s, ok := tx.w.stmts[query]; ok {
		return s, nil
	}
	s, err := tx.w.conn.PrepareContext(tx.ctx, query)
	if err != nil {
		return nil, err
	}
	tx.w.stmts[query] = s
	return s, nil
}

// named converts arguments to driver values: int64, string, []byte or nil.
func (tx *wtx) named(args []any) []driver.NamedValue {
	tx.args = tx.args[:0]
	for i, a := range args {
		switch v := a.(type) {
		case int:
			a = int64(v)
		case dispatch.State:
			a = int64(v)
		case dispatch.Status:
			a = int64(v)
		}
		tx.args = append(tx.args, driver.NamedValue{Ordinal: i + 1, Value: a})
	}
	return tx.args
}

// exec runs a statement and returns how many rows it changed.
func (tx *wtx) exec(query string, args ...any) (int64, error) {
	return tx.execNamed(query, tx.named(args))
}

// execNamed is exec of arguments that are driver values already.
func (tx *wtx) execNamed(query string, args []driver.NamedValue) (int64, error) {
	s, err := tx.stmt(query)
	if err != nil {
		return 0, err
	}
	res, err := s.(driver.StmtExecContext).ExecContext(tx.ctx, args)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	tx.count(query, n)
	return n, err
}

// query runs a statement and calls each for every row it returns. The row's
// values are int64, string, []byte or nil, valid during the call.
func (tx *wtx) query(query string, args []any, each func(row []driver.Value) error) error {
	s, err := tx.stmt(query)
	if err != nil {
		return err
	}
	rows, err := s.(driver.StmtQueryContext).QueryContext(tx.ctx, tx.named(args))
	if err != nil {
		return err
	}
	defer rows.Close()
	row := make([]driver.Value, len(rows.Columns()))
	for {
		if err := rows.Next(row); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		tx.count(query, 1) // a row an UPDATE ... RETURNING wrote, say
		if err := each(row); err != nil {
			return err
		}
	}
}

// queryRow returns the first row of a statement, or sql.ErrNoRows.
func (tx *wtx) queryRow(query string, args ...any) ([]driver.Value, error) {
	var out []driver.Value
	err := tx.query(query, args, func(row []driver.Value) error {
		if out == nil {
			out = append([]driver.Value(nil), row...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, sql.ErrNoRows
	}
	return out, nil
}

func asInt(v driver.Value) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case float64:
		return int64(n)
	}
	return 0
}

func asString(v driver.Value) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	}
	return ""
}

func asBytes(v driver.Value) []byte {
	switch b := v.(type) {
	case []byte:
		return b
	case string:
		return []byte(b)
	}
	return nil
}
