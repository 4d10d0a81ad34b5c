package dispatchpg

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

const claimColumns = `c.id, c.function, c.key, c.input, c.attempt, c.failures, c.run_after, c.budget_start, c.parent_id,
	c.gather, c.idx, c.gathers, c.created_at, c.meta,
	(SELECT p.input FROM calls p WHERE p.id = c.parent_id), c.order_key, c.out_of_order`

// scanClaimed makes a running call of a row of claimColumns.
func scanClaimed(row pgx.Row) (*dispatch.Call, error) {
	c := &dispatch.Call{State: dispatch.StateRunning}
	var runAfter, budget, created int64
	var parent, orderKey *string
	var outOfOrder *bool
	if err := row.Scan(&c.ID, &c.Function, &c.Key, &c.Input, &c.Attempt, &c.Failures, &runAfter, &budget, &parent,
		&c.Gather, &c.Index, &c.Gathers, &created, &c.Meta, &c.ParentInput, &orderKey, &outOfOrder); err != nil {
		return nil, err
	}
	if orderKey != nil {
		c.OrderKey = *orderKey
	}
	c.OutOfOrder = outOfOrder != nil && *outOfOrder
	c.RunAfter, c.BudgetStart, c.CreatedAt = fromNanos(runAfter), fromNanos(budget), fromNanos(created)
	if parent != nil {
		c.ParentID = *parent
	}
	return c, nil
}

// claimSQL leases up to $4 runnable calls of one key in one statement. Rows
// that another process is claiming right now are skipped, not waited for.
const claimSQL = `WITH picked AS (
		SELECT id FROM calls
		WHERE state = 0 AND key = $1 AND run_after <= $2 AND function = ANY($3::text[])
		ORDER BY run_after
		LIMIT $4
		FOR UPDATE SKIP LOCKED
	)
	UPDATE calls c SET state = 1, lease_owner = $5, lease_expires = $6, attempt = c.attempt + 1, updated_at = $2
	FROM picked WHERE c.id = picked.id
	RETURNING ` + claimColumns

// CallClaim implements dispatch.Store.
func (s *Store) CallClaim(ctx context.Context, p *dispatch.CallClaimParams) ([]*dispatch.Call, error) {
	if p.Limit <= 0 || len(p.Functions) == 0 {
		return nil, nil
	}
	// A claim is a write: it goes in the next group commit, with the
	// finishes and inserts of the moment, instead of a commit (and a WAL
	// flush) of its own. It never waits for a lock (SKIP LOCKED), so it
	// takes its place first in a batch (key "").
	var calls []*dispatch.Call
	args := []any{p.Key, p.Now.UnixNano(), p.Functions, p.Limit, p.Owner, p.LeaseUntil.UnixNano()}
	// A claim lost in a server crash costs a call claimed again (see
	// Config.SyncEveryCommit): lazy.
	op := &wop{lazy: true}
	op.queue = func(b *pgx.Batch) {
		calls = calls[:0]
		b.Queue(claimSQL, args...).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				c, err := scanClaimed(rows)
				if err != nil {
					return err
				}
				c.LeaseOwner, c.LeaseExpires = p.Owner, p.LeaseUntil
				calls = append(calls, c)
			}
			op.wrote("calls updated", int64(len(calls)))
			return rows.Err()
		})
	}
	err := s.w.do(ctx, op)
	if err != nil {
		return nil, fmt.Errorf("claim calls: %w", err)
	}
	slices.SortFunc(calls, func(a, b *dispatch.Call) int { return a.RunAfter.Compare(b.RunAfter) })
	return calls, nil
}

// keysSQL is a loose index scan of calls_runnable, walked from its end:
// each step finds the key before the last one with one index probe, then
// one probe per key looks for a call that is runnable now, newest first.
//
// Why this shape (docs/BENCHMARKS.md, "CallKeys" under issue 12):
//
//   - The probe is a scalar subquery with LIMIT 1, not an EXISTS: the
//     planner turns an EXISTS into a semi-join, and when it believed the
//     backlog small (the statistics of a queue table are stale within
//     seconds) it read every runnable call of the table and hashed them by
//     key: 27-45 ms and 3,000-5,000 buffers at a backlog of 40,000-60,000.
//   - Both probes go newest first. A claim makes a pending call running,
//     which is never a HOT update (state is in the index's predicate): the
//     call's entry stays in calls_runnable, pointing at a dead row, until a
//     vacuum. Claims take the oldest calls first, so those dead entries pile
//     up at the low end of each key's run_after range, where a probe that
//     walks upwards starts: with 100,000-180,000 of them (a minute of
//     claims: autovacuum visits a database once a minute) it read 600-1,900
//     index pages, 1-8 ms, 120 ms once the backlog was nearly drained. The
//     newest calls of a backlog are alive: walked downwards, 30 pages.
const keysSQL = `WITH RECURSIVE k(key) AS (
		(SELECT key FROM calls WHERE state = 0 ORDER BY key DESC, run_after DESC LIMIT 1)
		UNION ALL
		SELECT (SELECT c.key FROM calls c WHERE c.state = 0 AND c.key < k.key ORDER BY c.key DESC, c.run_after DESC LIMIT 1)
		FROM k WHERE k.key IS NOT NULL
	)
	SELECT key FROM k
	WHERE key IS NOT NULL
	AND (SELECT true FROM calls c WHERE c.state = 0 AND c.key = k.key AND c.run_after <= $1 ORDER BY c.run_after DESC LIMIT 1)`

// CallKeys implements dispatch.Store.
func (s *Store) CallKeys(ctx context.Context, now time.Time) ([]string, error) {
	var keys []string
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		rows, err := conn.Query(ctx, keysSQL, now.UnixNano())
		if err != nil {
			return err
		}
		keys, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return keys, nil
}

// renewSQL extends the leases of calls ($2) that $3 still holds: running
// calls, and waiting parents of local calls (their plan's lease). It locks
// them in id order, as the release of plans does (see dropPlans), so that
// the two cannot deadlock.
const renewSQL = `UPDATE calls c SET lease_expires = $1
	FROM (SELECT id FROM calls WHERE id = ANY($2::text[]) AND lease_owner = $3 ORDER BY id FOR UPDATE) l
	WHERE c.id = l.id`

// CallLeaseRenew implements dispatch.Store, in a commit that does not wait
// for its WAL flush unless Config.SyncEveryCommit says so: a renewal lost in
// a server crash makes the lease expire sooner, and the call run again.
func (s *Store) CallLeaseRenew(ctx context.Context, p *dispatch.CallLeaseRenewParams) error {
	if len(p.IDs) == 0 {
		return nil
	}
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		// One batch, one implicit transaction, one round trip.
		b := &pgx.Batch{}
		if !s.syncEveryCommit {
			b.Queue(asyncCommitSQL)
		}
		var n int64
		b.Queue(renewSQL, p.LeaseUntil.UnixNano(), p.IDs, p.Owner).Exec(func(tag pgconn.CommandTag) error {
			n = tag.RowsAffected()
			return nil
		})
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		s.rows.Add(map[string]int64{"calls updated": n})
		return nil
	})
	if err != nil {
		return fmt.Errorf("renew leases: %w", err)
	}
	return nil
}

// releaseSQL returns running calls to pending.
func releaseSQL(where string) string {
	return `UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL
		WHERE state = 1 AND lease_owner IS NOT NULL AND ` + where
}

var (
	releaseOwnerSQL   = releaseSQL(`lease_owner = $1`)
	releaseExpiredSQL = releaseSQL(`lease_expires <= $1`)
)

// CallLeaseRelease implements dispatch.Store: in one transaction, running
// calls are returned to pending, then plans of local calls are dropped
// (dropPlans), and other processes are notified if any call became
// runnable.
func (s *Store) CallLeaseRelease(ctx context.Context, p *dispatch.CallLeaseReleaseParams) (int, error) {
	var n int64
	now := p.Now
	if now.IsZero() {
		now = time.Now() // a release by owner need not say when
	}
	err := s.writeTx(ctx, func(ctx context.Context, tx *rtx) error {
		var tag pgconn.CommandTag
		var err error
		if p.Owner != "" {
			tag, err = tx.Exec(ctx, releaseOwnerSQL, p.Owner)
		} else {
			tag, err = tx.Exec(ctx, releaseExpiredSQL, p.Now.UnixNano())
		}
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		stored, runnable, err := dropPlans(ctx, tx, p.Owner, now)
		if err != nil {
			return err
		}
		n += stored
		if n > 0 || runnable {
			_, err = tx.Exec(ctx, notifySQL, s.channel)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("release leases: %w", err)
	}
	return int(n), nil
}

// dropPlans ends the plans of local calls (dispatch.Call.Local) leased to
// owner, or, with no owner, whose lease expired at now. Each planned child
// without a row is stored pending, to run again with its id, and its parent
// waits, unleased, for its children not final (runnable at once if none is
// left). It returns how many children it stored, and whether it made a
// parent runnable. Unlike the SQLite store, Open does not drop plans: they
// may belong to a live replica, and expire if not.
//
// Why it is safe against a local finish of the same plan committing at the
// same moment (see localLockSQL): the parents are locked first, in a
// statement of their own, and their children listed in a later one, which
// under READ COMMITTED sees every transaction that committed before it
// began. A local finish holds its parent's lock from before it writes the
// child's row until it commits, so once a parent is locked here, every
// local finish of its plan has either committed (its row is listed, and
// not stored again) or waits for this transaction, and then finds no plan
// (fenced: its outcome is dropped, and the child runs again). A parent
// whose lock is held right now is skipped when the leases expired (SKIP
// LOCKED): the transaction never waits for a lock after it released
// running calls, so it cannot close a deadlock with a group commit, and a
// later pass drops the plan if it is still there. A release by owner (a
// shutdown, after its calls ended) waits, in id order. The rows are
// inserted without ON CONFLICT: one that exists would mean that the lock
// did not do its job, which must fail loudly, not be papered over.
func dropPlans(ctx context.Context, tx *rtx, owner string, now time.Time) (stored int64, runnable bool, err error) {
	var rows pgx.Rows
	if owner != "" {
		rows, err = tx.Query(ctx, ownedPlansSQL, owner)
	} else {
		rows, err = tx.Query(ctx, expiredPlansSQL, now.UnixNano())
	}
	if err != nil {
		return 0, false, err
	}
	var parents []*storeutil.LocalParent
	for rows.Next() {
		lp := &storeutil.LocalParent{}
		var expires int64
		if err := rows.Scan(&lp.ID, &lp.Plan, &lp.Meta, &lp.LeaseOwner, &expires); err != nil {
			rows.Close()
			return 0, false, err
		}
		lp.LeaseExpires = fromNanos(expires)
		parents = append(parents, lp)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(parents) == 0 {
		return 0, false, err
	}
	ids := make([]string, len(parents))
	for i, lp := range parents {
		ids[i] = lp.ID
	}
	// A statement after the locks: it sees the rows of every local finish
	// that committed before them.
	have, err := childIDs(ctx, tx, ids)
	if err != nil {
		return 0, false, err
	}
	var insert []*dispatch.Call
	for _, lp := range parents {
		calls, err := storeutil.MaterializeCalls(lp, func(id string) bool { return have[id] }, now)
		if err != nil {
			return 0, false, err
		}
		for _, c := range calls {
			// Runnable since they were planned: claims, oldest first,
			// take them in their place (a release by owner may have no
			// time of its own, see CallLeaseRelease).
			c.RunAfter = c.CreatedAt
		}
		insert = append(insert, calls...)
	}
	if len(insert) > 0 {
		tag, err := tx.Exec(ctx, insertSQL, toColumns(insert, nil, now).args()...)
		if err != nil {
			return 0, false, err
		}
		stored = tag.RowsAffected()
	}
	// Each parent waits for its children not final, counted after the
	// insert (a later statement again).
	rows, err = tx.Query(ctx, `WITH up AS (
			UPDATE calls c SET plan = NULL, plan_total = NULL, lease_owner = NULL, lease_expires = NULL,
				updated_at = $2, run_after = $2, waiting = k.lft, state = CASE WHEN k.lft = 0 THEN 0 ELSE 2 END
			FROM (SELECT p.id, (SELECT count(*) FROM calls ch WHERE ch.id > (p.id || '.') COLLATE "C"
					AND ch.id < (p.id || '/') COLLATE "C" AND ch.parent_id = p.id AND ch.state NOT IN (3, 4)) AS lft
				FROM unnest($1::text[]) AS p(id)) k
			WHERE c.id = k.id
			RETURNING c.state
		)
		SELECT count(*), count(*) FILTER (WHERE state = 0) FROM up`, ids, now.UnixNano())
	if err != nil {
		return stored, false, err
	}
	var updated, pending int64
	for rows.Next() {
		if err := rows.Scan(&updated, &pending); err != nil {
			rows.Close()
			return stored, false, err
		}
	}
	rows.Close()
	tx.wrote("calls updated", updated)
	return stored, pending > 0, rows.Err()
}

// The parents whose plans a release drops, locked (see dropPlans): on
// calls_leased, which holds every leased row.
const (
	ownedPlansSQL = `SELECT id, plan, meta, lease_owner, lease_expires FROM calls
		WHERE lease_owner = $1 AND plan IS NOT NULL ORDER BY id FOR UPDATE`
	expiredPlansSQL = `SELECT id, plan, meta, lease_owner, lease_expires FROM calls
		WHERE lease_owner IS NOT NULL AND lease_expires <= $1 AND plan IS NOT NULL ORDER BY id FOR UPDATE SKIP LOCKED`
)

// childIDs returns the ids of the children that have a row, of parents.
func childIDs(ctx context.Context, tx *rtx, parents []string) (map[string]bool, error) {
	rows, err := tx.Query(ctx, `SELECT c.id FROM unnest($1::text[]) AS p(id)
		JOIN calls c ON c.id > (p.id || '.') COLLATE "C" AND c.id < (p.id || '/') COLLATE "C" AND c.parent_id = p.id`, parents)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	have := make(map[string]bool, len(ids))
	for _, id := range ids {
		have[id] = true
	}
	return have, err
}

// takeSQL leases one pending call ($1), whatever its run_after.
const takeSQL = `UPDATE calls c SET state = 1, lease_owner = $2, lease_expires = $3, attempt = c.attempt + 1, updated_at = $4
	WHERE c.id = $1 AND c.state = 0
	RETURNING ` + claimColumns

// CallTake implements dispatch.Store.
func (s *Store) CallTake(ctx context.Context, p *dispatch.CallTakeParams) (*dispatch.Call, error) {
	var c *dispatch.Call
	op := &wop{key: p.ID}
	op.queue = func(b *pgx.Batch) {
		c = nil
		b.Queue(takeSQL, p.ID, p.Owner, p.LeaseUntil.UnixNano(), p.Now.UnixNano()).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var err error
				if c, err = scanClaimed(rows); err != nil {
					return err
				}
				c.LeaseOwner, c.LeaseExpires = p.Owner, p.LeaseUntil
				op.wrote("calls updated", 1)
			}
			return rows.Err()
		})
	}
	if err := s.w.do(ctx, op); err != nil {
		return nil, fmt.Errorf("take call: %w", err)
	}
	return c, nil
}
