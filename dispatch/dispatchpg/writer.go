package dispatchpg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

// writer group-commits the store's hot writes (finishing attempts, storing
// new calls): each of a few goroutines takes every operation that queued
// up while its previous commit was on its way to disk and sends them as one
// pipelined batch, which PostgreSQL runs as one transaction (the statements
// of a batch up to its single Sync form an implicit transaction): one round
// trip and one WAL flush for the lot.
//
// Why: every commit waits for its WAL flush, and flushes are serialized on
// the server. With one commit per operation, four per event (its insert,
// two deliveries, the parent's finish), fanout on PostgreSQL was bound by
// commits, not by CPU (backends waiting on WALWrite in pg_stat_activity).
//
// Operations of a batch lock rows in the order of their lock key (the
// parent a finish counts off, or the call itself), so that two batches,
// of this process or of another replica, cannot deadlock on each other.
// When a batch fails, its operations are replayed one by one, each in a
// transaction of its own, so that one bad operation (an id that exists)
// fails alone. When the batch's answer is lost (the connection broke while
// it was sent, or during COMMIT), the batch may have committed: an
// operation that can tell (verify) looks once the database answers again,
// and is replayed only if it was not applied; the others are replayed,
// which they tolerate (a finish is fenced by its attempt).
type writer struct {
	s    *Store
	log  *slog.Logger
	ops  chan *wop
	stop chan struct{}
	// finished is closed once the loops returned and the queue was
	// drained.
	finished chan struct{}
	wg       sync.WaitGroup
	max      int
	once     sync.Once

	commits, opsDone, replays atomic.Int64
	// lazyCommits counts the commits that did not wait for their WAL
	// flush (see run).
	lazyCommits atomic.Int64
}

// asyncCommitSQL makes the commit of the transaction it runs in return
// before its WAL is flushed (see writer.run).
const asyncCommitSQL = `SELECT set_config('synchronous_commit', 'off', true)`

// wop is one operation of a group commit.
type wop struct {
	ctx context.Context
	// key orders the operations of a batch (see writer).
	key string
	// queue adds the operation's statements to b, with result callbacks
	// that record its outcome; it may run more than once (replay), so it
	// must reset what it records.
	queue func(b *pgx.Batch)
	// rows, instead of queue, makes the operation an insert of these rows:
	// the inserts of a batch go in one statement, first (a statement of
	// its own each cost the server more than its rows).
	rows *columns
	// verify, when set, tells whether the operation was applied by a
	// commit whose answer was lost.
	verify func(ctx context.Context, conn *pgxpool.Conn) (applied bool, err error)
	// notify says whether the commit must wake other processes;
	// notifyAfter, set by the operation's result callback, asks for a
	// notification once the commit is done.
	notify, notifyAfter bool
	// lazy says that the operation's commit need not wait for its WAL
	// flush (see writer.run): losing it in a server crash costs at most a
	// call run again.
	lazy bool
	// written counts what the operation's statements wrote, by kind
	// (StoreStats.Rows), as their result callbacks found; reset for each
	// run, added to the store's counts once its batch committed.
	written map[string]int64
	err     error
	done    chan struct{}
}

// wrote counts n rows of kind written by one of op's statements.
func (op *wop) wrote(kind string, n int64) {
	op.written = addRows(op.written, kind, n)
}

// addRows adds n rows of kind to rows, which it makes if need be.
func addRows(rows map[string]int64, kind string, n int64) map[string]int64 {
	if kind == "" || n <= 0 {
		return rows
	}
	if rows == nil {
		rows = make(map[string]int64)
	}
	rows[kind] += n
	return rows
}

func newWriter(s *Store, writers, maxBatch int) *writer {
	w := &writer{s: s, log: s.log, ops: make(chan *wop, maxBatch*writers), stop: make(chan struct{}),
		finished: make(chan struct{}), max: maxBatch}
	for range writers {
		w.wg.Add(1)
		go w.loop()
	}
	return w
}

// do runs op in the next group commit and returns once that commit is
// durable (nil) or failed. Once queued, it waits for the outcome even if
// ctx ends: the operation may be part of a commit under way, and its
// caller must not believe that it failed when it is stored.
func (w *writer) do(ctx context.Context, op *wop) error {
	op.ctx, op.done = ctx, make(chan struct{})
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-w.stop:
		return errClosed
	default:
	}
	select {
	case w.ops <- op:
	case <-w.stop:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-op.done:
		return op.err
	case <-w.finished:
		// Queued as the writer stopped: it may have been committed, or
		// never seen.
		select {
		case <-op.done:
			return op.err
		default:
			return errClosed
		}
	}
}

func (w *writer) close() {
	w.once.Do(func() {
		close(w.stop)
		w.wg.Wait()
		// Fail what is still queued.
		for drained := false; !drained; {
			select {
			case op := <-w.ops:
				op.err = errClosed
				close(op.done)
			default:
				drained = true
			}
		}
		close(w.finished)
	})
}

func (w *writer) loop() {
	defer w.wg.Done()
	batch := make([]*wop, 0, w.max)
	for {
		select {
		case op := <-w.ops:
			batch = append(batch[:0], op)
		case <-w.stop:
			return
		}
	collect:
		for len(batch) < w.max {
			select {
			case op := <-w.ops:
				batch = append(batch, op)
			default:
				break collect
			}
		}
		w.commit(batch)
	}
}

// commit runs a batch: all its operations in one transaction, or, if that
// fails, each on its own.
func (w *writer) commit(batch []*wop) {
	live := batch[:0:0]
	for _, op := range batch {
		if err := op.ctx.Err(); err != nil {
			op.err = err
			close(op.done)
			continue
		}
		live = append(live, op)
	}
	if len(live) == 0 {
		return
	}
	slices.SortStableFunc(live, func(a, b *wop) int { return cmp.Compare(a.key, b.key) })
	err := w.run(live)
	switch {
	case err == nil:
	case lostAnswer(err):
		w.replays.Add(1)
		w.log.Warn("dispatchpg: the answer to a group commit was lost; checking what it applied", "ops", len(live), "err", err)
		for _, op := range live {
			op.err = w.settle(op, err)
			close(op.done)
		}
		return
	case len(live) > 1:
		w.replays.Add(1)
		w.log.Debug("dispatchpg: group commit failed; replaying its operations one by one", "ops", len(live), "err", err)
		for _, op := range live {
			op.err = w.run([]*wop{op})
			close(op.done)
		}
		return
	}
	for _, op := range live {
		op.err = err
		close(op.done)
	}
}

// settle finds out what became of op after a commit whose answer was lost:
// applied (nil), not applied (run again, alone), or, when the database
// cannot be asked, an error that wraps dispatch.ErrOutcomeUnknown.
func (w *writer) settle(op *wop, lost error) error {
	if op.verify == nil {
		return w.run([]*wop{op})
	}
	applied, err := w.s.verify(op.ctx, op.verify)
	switch {
	case err != nil:
		return fmt.Errorf("%w: the commit's answer was lost (%v) and the database could not be asked: %v",
			dispatch.ErrOutcomeUnknown, lost, err)
	case applied:
		return nil
	}
	err = w.run([]*wop{op})
	if err != nil && lostAnswer(err) {
		return w.settle(op, err)
	}
	return err
}

// run sends ops as one batch, one implicit transaction, again when the
// server chose it as a deadlock's victim (see retryDeadlock).
func (w *writer) run(ops []*wop) error {
	return retryDeadlock(func() error { return w.runOnce(ops) })
}

// deadlockRetries bounds how many times a transaction that PostgreSQL
// rolled back to break a deadlock is run again.
const deadlockRetries = 5

// retryDeadlock runs fn, and again, after a short random pause, while it
// fails with a deadlock (SQLSTATE 40P01). Ordered calls take an advisory
// lock per sequence after their rows' writes (insert.go), in the order of
// a group commit's operations: two transactions that touch two sequences
// in opposite orders wait on each other, and PostgreSQL rolls one back
// whole, so running it again is safe and, the other one having gone
// through, soon succeeds.
func retryDeadlock(fn func() error) error {
	var err error
	for i := range deadlockRetries {
		if err = fn(); !isDeadlock(err) {
			return err
		}
		time.Sleep(time.Duration(1+rand.IntN(5<<i)) * time.Millisecond)
	}
	return err
}

// isDeadlock reports whether err is PostgreSQL's deadlock_detected.
func isDeadlock(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40P01"
}

// runOnce sends ops as one batch, one implicit transaction.
func (w *writer) runOnce(ops []*wop) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.s.timeout)
	defer cancel()
	conn, err := w.s.pool.Acquire(ctx)
	if err != nil {
		return notSent{err}
	}
	defer conn.Release()
	b := &pgx.Batch{}
	notify := false
	lazy := !w.s.syncEveryCommit
	var inserts []*columns
	for _, op := range ops {
		if op.rows != nil {
			inserts = append(inserts, op.rows)
		}
		lazy = lazy && op.lazy && op.rows == nil
		op.written = nil
	}
	if lazy {
		// Only finishes, claims and the like: the commit need not wait
		// for its WAL flush (see Config.SyncEveryCommit for why that is
		// safe). A batch that carries anything else, an insert of new
		// calls above all, keeps synchronous commit. set_config(...,
		// true) is SET LOCAL as a function: it lasts until the end of the
		// batch's transaction (the implicit one of a pipelined batch),
		// which reads it when it commits.
		b.Queue(asyncCommitSQL)
	}
	// inserted counts the rows of the batch's insert (wop.rows).
	var inserted int64
	var rows *columns
	switch len(inserts) {
	case 0:
	case 1:
		rows = inserts[0]
	default:
		rows = &columns{}
		for _, r := range inserts {
			rows.add(r)
		}
	}
	if rows != nil {
		b.Queue(insertSQL, rows.args()...).Exec(func(tag pgconn.CommandTag) error {
			inserted = tag.RowsAffected()
			return nil
		})
	}
	for _, op := range ops {
		op.notifyAfter = false
		if op.rows == nil {
			op.queue(b)
		}
		notify = notify || op.notify
	}
	inline := notify && w.s.notifyNow()
	if inline {
		b.Queue(notifySQL, w.s.channel)
	}
	start := time.Now()
	if err := w.s.hooks.before(); err != nil {
		return err
	}
	err = w.s.hooks.after(conn.SendBatch(ctx, b).Close())
	if err == nil {
		w.commits.Add(1)
		w.opsDone.Add(int64(len(ops)))
		if lazy {
			w.lazyCommits.Add(1)
		}
		w.s.rows.Add(addRows(nil, "calls inserted", inserted))
		for _, op := range ops {
			w.s.rows.Add(op.written)
		}
		if w.s.onCommit != nil {
			w.s.onCommit(len(ops), time.Since(start))
		}
		after := notify && !inline
		for _, op := range ops {
			after = after || op.notifyAfter
		}
		if after {
			w.s.notifyAfter()
		}
	} else if errors.Is(err, context.DeadlineExceeded) {
		w.log.Warn("dispatchpg: group commit timed out", "ops", len(ops), "after", time.Since(start))
	}
	return err
}

// notSent is the error of a batch that never reached the server.
type notSent struct{ err error }

func (e notSent) Error() string { return e.err.Error() }
func (e notSent) Unwrap() error { return e.err }

// lostAnswer reports whether err leaves a write's outcome unknown: it may
// have committed. The server's own errors roll the transaction back, and a
// write that was never sent changed nothing; anything else (the connection
// broke, the operation timed out while the server worked) may have
// committed.
func lostAnswer(err error) bool {
	var pgErr *pgconn.PgError
	var ns notSent
	return err != nil && !errors.As(err, &pgErr) && !errors.As(err, &ns) && !pgconn.SafeToRetry(err)
}

// verify asks the database, once it answers again, whether a write whose
// answer was lost was applied, for up to the store's OpTimeout.
func (s *Store) verify(ctx context.Context, check func(ctx context.Context, conn *pgxpool.Conn) (bool, error)) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		var applied bool
		err := func() error {
			conn, err := s.pool.Acquire(ctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			applied, err = check(ctx, conn)
			return err
		}()
		if err == nil {
			return applied, nil
		}
		select {
		case <-ctx.Done():
			return false, err
		case <-time.After(wait):
		}
	}
}

// testHooks let a test fail a write before it is sent, or replace its
// outcome once sent (an answer lost after COMMIT): the group commit's and
// writeTx's. Unset, they cost an atomic load.
type testHooks struct {
	beforeSend atomic.Pointer[func() error]
	afterSend  atomic.Pointer[func(error) error]
}

func (h *testHooks) before() error {
	if f := h.beforeSend.Load(); f != nil {
		return (*f)()
	}
	return nil
}

func (h *testHooks) after(err error) error {
	if f := h.afterSend.Load(); f != nil {
		return (*f)(err)
	}
	return err
}
