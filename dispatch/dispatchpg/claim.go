package dispatchpg

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

const claimColumns = `c.id, c.function, c.key, c.input, c.attempt, c.failures, c.run_after, c.budget_start, c.parent_id,
	c.gather, c.idx, c.gathers, c.created_at, c.meta,
	(SELECT p.input FROM calls p WHERE p.id = c.parent_id)`

// scanClaimed makes a running call of a row of claimColumns.
func scanClaimed(row pgx.Row) (*dispatch.Call, error) {
	c := &dispatch.Call{State: dispatch.StateRunning}
	var runAfter, budget, created int64
	var parent *string
	if err := row.Scan(&c.ID, &c.Function, &c.Key, &c.Input, &c.Attempt, &c.Failures, &runAfter, &budget, &parent,
		&c.Gather, &c.Index, &c.Gathers, &created, &c.Meta, &c.ParentInput); err != nil {
		return nil, err
	}
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
	op := &wop{}
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

// CallLeaseRenew implements dispatch.Store.
func (s *Store) CallLeaseRenew(ctx context.Context, p *dispatch.CallLeaseRenewParams) error {
	if len(p.IDs) == 0 {
		return nil
	}
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		_, err := conn.Exec(ctx, `UPDATE calls SET lease_expires = $1
			WHERE id = ANY($2::text[]) AND state = 1 AND lease_owner = $3`, p.LeaseUntil.UnixNano(), p.IDs, p.Owner)
		return err
	})
	if err != nil {
		return fmt.Errorf("renew leases: %w", err)
	}
	return nil
}

// releaseSQL returns calls to pending and notifies, in the same statement,
// when there were any: other processes may run them.
func releaseSQL(where string) string {
	return `WITH r AS (
		UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL WHERE state = 1 AND ` + where + ` RETURNING 1
	), n AS (SELECT count(*) AS n FROM r)
	SELECT n, CASE WHEN n > 0 THEN pg_notify($2, '') END FROM n`
}

var (
	releaseOwnerSQL   = releaseSQL(`lease_owner = $1`)
	releaseExpiredSQL = releaseSQL(`lease_expires <= $1`)
)

// CallLeaseRelease implements dispatch.Store.
func (s *Store) CallLeaseRelease(ctx context.Context, p *dispatch.CallLeaseReleaseParams) (int, error) {
	var n int64
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		var row pgx.Row
		if p.Owner != "" {
			row = conn.QueryRow(ctx, releaseOwnerSQL, p.Owner, s.channel)
		} else {
			row = conn.QueryRow(ctx, releaseExpiredSQL, p.Now.UnixNano(), s.channel)
		}
		return row.Scan(&n, nil)
	})
	if err != nil {
		return 0, fmt.Errorf("release leases: %w", err)
	}
	return int(n), nil
}
