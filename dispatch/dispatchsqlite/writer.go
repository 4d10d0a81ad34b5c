package dispatchsqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// errClosed is returned for operations submitted after Close.
var errClosed = errors.New("dispatchsqlite: store is closed")

// writer owns the only write connection and group-commits operations: each
// commit takes every operation that queued up while the previous one was on
// its way to disk, so concurrent writers share an fsync.
type writer struct {
	conn     *sql.Conn
	maxBatch int
	log      *slog.Logger
	ops      chan *op
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	// Statements prepared once on conn. Only the writer goroutine uses them.
	stmts map[string]*sql.Stmt

	commits atomic.Int64
	opsDone atomic.Int64
}

// op is one unit of work in a group commit. fn may run more than once (the
// group is replayed with savepoints when one of its operations fails), so it
// must derive its results only from what it reads and writes in tx.
type op struct {
	ctx  context.Context
	fn   func(tx *wtx) error
	err  error
	done chan struct{}
}

func newWriter(conn *sql.Conn, maxBatch int, log *slog.Logger) *writer {
	return &writer{
		conn:     conn,
		maxBatch: maxBatch,
		log:      log,
		ops:      make(chan *op, maxBatch),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		stmts:    make(map[string]*sql.Stmt),
	}
}

// do runs fn in the next group commit and returns once that commit is durable
// (nil) or has failed (the error; nothing fn wrote is kept).
func (w *writer) do(ctx context.Context, fn func(tx *wtx) error) error {
	o := &op{ctx: ctx, fn: fn, done: make(chan struct{})}
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

func (w *writer) run() {
	defer close(w.done)
	batch := make([]*op, 0, w.maxBatch)
	for {
		select {
		case o := <-w.ops:
			batch = append(batch[:0], o)
		case <-w.stop:
			w.drain()
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
		w.commit(batch)
	}
}

// drain fails the operations still queued at Close.
func (w *writer) drain() {
	for {
		select {
		case o := <-w.ops:
			o.err = errClosed
			close(o.done)
		default:
			for _, s := range w.stmts {
				_ = s.Close()
			}
			_ = w.conn.Close()
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
func (w *writer) commit(batch []*op) {
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
		return
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
}

var errReplay = errors.New("replay with savepoints")

func (w *writer) run1(ops []*op, savepoints bool) error {
	ctx := context.Background()
	tx := &wtx{w: w, ctx: ctx}
	if _, err := w.conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
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
		if _, err := w.conn.ExecContext(ctx, "SAVEPOINT op"); err != nil {
			w.rollback()
			return fmt.Errorf("savepoint: %w", err)
		}
		if err := o.fn(tx); err != nil {
			o.err = err
			if _, err := w.conn.ExecContext(ctx, "ROLLBACK TO op"); err != nil {
				w.rollback()
				return fmt.Errorf("rollback to savepoint: %w", err)
			}
		}
		if _, err := w.conn.ExecContext(ctx, "RELEASE op"); err != nil {
			w.rollback()
			return fmt.Errorf("release savepoint: %w", err)
		}
	}
	if _, err := w.conn.ExecContext(ctx, "COMMIT"); err != nil {
		w.rollback()
		for _, o := range ops {
			o.err = nil
		}
		return fmt.Errorf("commit: %w", err)
	}
	w.commits.Add(1)
	w.opsDone.Add(int64(len(ops)))
	return nil
}

func (w *writer) rollback() {
	if _, err := w.conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		// "no transaction is active" after SQLite rolled back by itself
		// (an I/O error, a full disk) is expected.
		w.log.Debug("rollback", "err", err)
	}
}

// wtx is the writer's transaction as operations see it.
type wtx struct {
	w   *writer
	ctx context.Context
}

// stmt returns the statement for query, prepared once on the writer's
// connection.
func (tx *wtx) stmt(query string) (*sql.Stmt, error) {
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

func (tx *wtx) exec(query string, args ...any) (sql.Result, error) {
	s, err := tx.stmt(query)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(tx.ctx, args...)
}

func (tx *wtx) query(query string, args ...any) (*sql.Rows, error) {
	s, err := tx.stmt(query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(tx.ctx, args...)
}
