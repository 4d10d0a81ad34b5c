package dispatchpg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

// suspendSQL parks a running call ($4, fenced by its attempt $5) in a
// Gather and stores its children (insertSQL's arrays, $1-$23 renumbered as
// $6-$28), in one statement: one round trip, group-committed with the
// writer's other operations. It returns whether the call was parked and how
// many children were inserted. When some children existed already (a
// repeat), waiting must be counted from them under their locks, which this
// statement does not do: it then fails with errChildrenExist's text, and
// CallSuspend does it the long way, in a transaction of its own.
var suspendSQL = `WITH me AS (
		UPDATE calls SET state = 2, gathers = $1, waiting = $2, lease_owner = NULL, lease_expires = NULL, updated_at = $3
		WHERE id = $4 AND state = 1 AND attempt = $5
		RETURNING id
	), ins AS (
		INSERT INTO calls (id, function, key, input, state, attempt, failures, lease_owner, lease_expires,
			run_after, budget_start, parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at,
			tag, meta)
		SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::bytea[], $10::smallint[], $11::integer[], $12::integer[],
			$13::text[], $14::bigint[], $15::bigint[], $16::bigint[], $17::text[], $18::integer[], $19::integer[],
			$20::integer[], $21::integer[], $22::bytea[], $23::text[], $24::smallint[], $25::bigint[], $26::bigint[],
			$27::text[], $28::bytea[])
		WHERE EXISTS (SELECT 1 FROM me)
		ON CONFLICT (id) DO NOTHING
		RETURNING 1
	), n AS (SELECT (SELECT count(*) FROM me) AS applied, (SELECT count(*) FROM ins) AS inserted)
	SELECT applied, CASE WHEN applied > 0 AND inserted < $2 THEN ('` + errChildrenExist + ` ' || inserted)::int END FROM n`

// errChildrenExist starts the error suspendSQL raises when children of the
// gather existed already.
const errChildrenExist = "dispatchpg: children exist"

// CallSuspend implements dispatch.Store: one statement in the next group
// commit (suspendSQL); the long way, in a transaction of its own, when some
// of the children existed already.
func (s *Store) CallSuspend(ctx context.Context, p *dispatch.CallSuspendParams) (bool, error) {
	cols := toColumns(p.Children, p.Now)
	args := append([]any{p.Gather + 1, len(p.Children), p.Now.UnixNano(), p.ID, p.Attempt}, cols.args()...)
	var applied bool
	op := &wop{key: p.ID, notify: cols.runnable > 0}
	op.queue = func(b *pgx.Batch) {
		applied = false
		b.Queue(suspendSQL, args...).QueryRow(func(row pgx.Row) error {
			var n int64
			if err := row.Scan(&n, nil); err != nil {
				return err
			}
			applied = n > 0
			return nil
		})
	}
	err := s.w.do(ctx, op)
	if isChildrenExist(err) {
		return s.suspendTx(ctx, p, cols)
	}
	if err != nil {
		return false, fmt.Errorf("suspend call: %w", err)
	}
	return applied, nil
}

// isChildrenExist reports whether err is suspendSQL's refusal of children
// that existed already.
func isChildrenExist(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.Contains(pgErr.Message, errChildrenExist)
}

// suspendTx is CallSuspend when some children may exist already: their
// outcomes are counted under their locks.
func (s *Store) suspendTx(ctx context.Context, p *dispatch.CallSuspendParams, cols *columns) (bool, error) {
	var applied bool
	now := p.Now.UnixNano()
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		applied = false
		runnable := cols.runnable
		tag, err := tx.Exec(ctx, `UPDATE calls SET state = 2, gathers = $1, waiting = $2, lease_owner = NULL, lease_expires = NULL,
				updated_at = $3
			WHERE id = $4 AND state = 1 AND attempt = $5`, p.Gather+1, len(p.Children), now, p.ID, p.Attempt)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		applied = true
		tag, err = tx.Exec(ctx, insertSQL+` ON CONFLICT (id) DO NOTHING`, cols.args()...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() < int64(len(p.Children)) {
			// Some children existed already: count those still to wait
			// for. Locking them waits for a child that is finishing right
			// now, which saw this call running and so did not count itself
			// off: its outcome is read here instead.
			var left int
			if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state NOT IN (3, 4)) FROM (
					SELECT state FROM calls WHERE id > $3 AND id < $4 AND parent_id = $1 AND gather = $2 FOR UPDATE
				) kids`, p.ID, p.Gather, p.ID+"."+strconv.Itoa(p.Gather)+".", p.ID+"."+strconv.Itoa(p.Gather)+"/").Scan(&left); err != nil {
				return err
			}
			state := dispatch.StateWaiting
			if left == 0 {
				state = dispatch.StatePending
			}
			if _, err := tx.Exec(ctx, `UPDATE calls SET waiting = $1, state = $2, run_after = $3 WHERE id = $4`,
				left, int16(state), now, p.ID); err != nil {
				return err
			}
			if state == dispatch.StatePending {
				runnable++
			}
		}
		if runnable > 0 {
			_, err = tx.Exec(ctx, notifySQL, s.channel)
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("suspend call: %w", err)
	}
	return applied, nil
}

// finishSQL ends an attempt in one statement, and so one round trip and
// one commit: the call's update ($1-$9), the attempt's record when $15
// ($10-$14), and, for a final child ($19), one update of its parent ($18)
// that counts the child off or, for the last one, finishes the parent done
// with $22 (FinishParent, $21, if the parent still has the $24 gathers
// the runtime's run of it saw) or makes it runnable: leased to $16 until
// $17, or pending when $16 is null. Siblings
// finishing at once are serialized by the parent's row: the second waits
// for the first, then re-reads the row and counts from what it left. Its
// last column says whether it left a call runnable by anyone (a retry due
// at once, $20, or a parent resumed unleased): the writer then notifies
// other processes once the batch has committed.
const finishSQL = `WITH me AS (
		UPDATE calls SET state = $1, output = $2, error = $3, status = $4, run_after = $5,
			failures = failures + $6, lease_owner = NULL, lease_expires = NULL, updated_at = $7
		WHERE id = $8 AND state = 1 AND attempt = $9
		RETURNING id
	), rec AS (
		INSERT INTO attempts (call_id, attempt, started_at, duration_ns, status, error, detail)
		SELECT $8, $9, $10, $11, $12, $13, $14 FROM me WHERE $15::boolean
		ON CONFLICT (call_id, attempt) DO UPDATE SET started_at = excluded.started_at, duration_ns = excluded.duration_ns,
			status = excluded.status, error = excluded.error, detail = excluded.detail
	), par AS (
		UPDATE calls c SET
			waiting = CASE WHEN c.waiting > 1 THEN c.waiting - 1 ELSE 0 END,
			state = CASE WHEN c.waiting > 1 THEN 2 WHEN $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN 3 WHEN $16::text IS NULL THEN 0 ELSE 1 END,
			attempt = CASE WHEN c.waiting > 1 THEN c.attempt WHEN $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN c.attempt + 1
				WHEN $16::text IS NULL THEN c.attempt ELSE c.attempt + 1 END,
			lease_owner = CASE WHEN c.waiting > 1 OR ($21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL) THEN NULL ELSE $16::text END,
			lease_expires = CASE WHEN c.waiting > 1 OR ($21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL) OR $16::text IS NULL THEN NULL ELSE $17::bigint END,
			output = CASE WHEN c.waiting <= 1 AND $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN $22::bytea ELSE c.output END,
			status = CASE WHEN c.waiting <= 1 AND $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN $23::smallint ELSE c.status END,
			error = CASE WHEN c.waiting <= 1 AND $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN NULL ELSE c.error END,
			run_after = CASE WHEN c.waiting > 1 THEN c.run_after ELSE $7 END,
			updated_at = $7
		WHERE c.id = $18 AND c.state = 2 AND $19::boolean AND EXISTS (SELECT 1 FROM me)
		RETURNING c.state, c.id, c.function, c.key, CASE WHEN c.state = 1 THEN c.input END AS input, c.attempt, c.failures,
			c.run_after, c.budget_start, c.parent_id, c.gather, c.idx, c.gathers, c.created_at, c.meta
	), applied AS (SELECT count(*) AS n FROM me)
	SELECT applied.n, p.state, p.id, p.function, p.key, p.input, p.attempt, p.failures, p.run_after, p.budget_start,
		p.parent_id, p.gather, p.idx, p.gathers, p.created_at, p.meta,
		(applied.n > 0 AND $20::boolean) OR p.state IS NOT DISTINCT FROM 0
	FROM applied LEFT JOIN par p ON true`

// CallFinish implements dispatch.Store.
func (s *Store) CallFinish(ctx context.Context, p *dispatch.CallFinishParams) (*dispatch.CallFinishResult, error) {
	now := p.Now.UnixNano()
	var failed int32
	if p.State != dispatch.StateDone && !p.Snooze {
		failed = 1
	}
	var errText *string
	if p.Error != "" {
		errText = &p.Error
	}
	var output []byte
	if p.State == dispatch.StateDone {
		output = p.Output
		if output == nil {
			output = []byte{}
		}
	}
	runAfter := now
	if p.State == dispatch.StatePending {
		runAfter = p.RunAfter.UnixNano()
	}
	// A retry that is due at once may be run by anyone.
	notify := p.State == dispatch.StatePending && runAfter <= now && !p.Snooze
	var rec dispatch.Attempt
	if p.Record != nil {
		rec = *p.Record
	}
	var detail []byte
	if len(rec.Detail) > 0 {
		detail = rec.Detail
	}
	var resumeOwner *string
	var resumeUntil *int64
	if p.ResumeOwner != "" {
		until := p.ResumeLeaseUntil.UnixNano()
		resumeOwner, resumeUntil = &p.ResumeOwner, &until
	}
	var parent *string
	if p.ParentID != "" {
		parent = &p.ParentID
	}
	args := []any{int16(p.State), output, errText, int16(p.Status), runAfter, failed, now, p.ID, p.Attempt,
		rec.Started.UnixNano(), int64(rec.Duration), int16(rec.Status), rec.Error, detail, p.Record != nil,
		resumeOwner, resumeUntil, parent, p.ParentID != "" && p.State.Final(), notify,
		p.FinishParent, nonNil(p.ParentOutput), int16(dispatch.StatusOK), int32(p.ParentGathers)}
	// The operation locks the call, then its parent: batches order their
	// operations by the parent so that they lock parents in one order.
	key := p.ID
	if p.ParentID != "" {
		key = p.ParentID
	}
	res := &dispatch.CallFinishResult{}
	op := &wop{key: key}
	op.queue = func(b *pgx.Batch) {
		b.Queue(finishSQL, args...).QueryRow(func(row pgx.Row) error {
			runnable, err := scanFinish(row, p, res)
			op.notifyAfter = runnable
			return err
		})
	}
	err := s.w.do(ctx, op)
	if err != nil {
		return nil, fmt.Errorf("finish call: %w", err)
	}
	return res, nil
}

// scanFinish reads the row of finishSQL into res, and whether the finish
// left a call runnable by anyone.
func scanFinish(row pgx.Row, p *dispatch.CallFinishParams, res *dispatch.CallFinishResult) (runnable bool, err error) {
	var applied int64
	var state *int16
	var id, function, key, parentID *string
	var input, meta []byte
	var attempt, failures, gather, idx, gathers *int32
	var runAfter, budget, created *int64
	if err := row.Scan(&applied, &state, &id, &function, &key, &input, &attempt,
		&failures, &runAfter, &budget, &parentID, &gather, &idx, &gathers, &created, &meta, &runnable); err != nil {
		return false, err
	}
	*res = dispatch.CallFinishResult{Applied: applied > 0}
	if state == nil || *state == int16(dispatch.StateWaiting) {
		return runnable, nil // no parent, or not its last child
	}
	if *state == int16(dispatch.StateDone) {
		res.ParentFinished = true // FinishParent
		return runnable, nil
	}
	res.ParentResumed = true
	if *state != int16(dispatch.StateRunning) {
		return runnable, nil
	}
	c := &dispatch.Call{ID: *id, Function: *function, Key: *key, Input: input, State: dispatch.StateRunning,
		Attempt: int(*attempt), Failures: int(*failures), RunAfter: fromNanos(*runAfter), BudgetStart: fromNanos(*budget),
		Gather: int(*gather), Index: int(*idx), Gathers: int(*gathers), CreatedAt: fromNanos(*created),
		Meta: meta, LeaseOwner: p.ResumeOwner, LeaseExpires: p.ResumeLeaseUntil}
	if parentID != nil {
		c.ParentID = *parentID
	}
	res.Parent = c
	return runnable, nil
}

// redriveSQL re-drives the failed calls among $1 in one statement, and so
// one round trip whatever their number: each becomes pending at $2 with a
// fresh budget, and its parent, waiting or failed, waits for it again (one
// more per re-driven child). A call whose parent is pending or running
// (about to finish) is left be, and so is a failed parent re-driven with
// its own children: it waits for them instead. It returns the ids re-driven,
// in the order asked.
const redriveSQL = `WITH want AS (
		SELECT id, min(n) AS n FROM unnest($1::text[]) WITH ORDINALITY AS w(id, n) GROUP BY id
	), f AS (
		SELECT c.id, c.parent_id, want.n FROM calls c JOIN want ON c.id = want.id
		WHERE c.state = 4 ORDER BY c.id FOR UPDATE OF c
	), par AS (
		UPDATE calls p SET waiting = CASE p.state WHEN 2 THEN p.waiting + k.n ELSE k.n END,
			state = 2, error = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = $2
		FROM (SELECT parent_id, count(*) AS n FROM f WHERE parent_id IS NOT NULL GROUP BY parent_id) k
		WHERE p.id = k.parent_id AND p.state IN (2, 4)
		RETURNING p.id
	), me AS (
		UPDATE calls c SET state = 0, failures = 0, budget_start = $2, run_after = $2, updated_at = $2
		FROM f WHERE c.id = f.id AND (f.parent_id IS NULL OR f.parent_id IN (SELECT id FROM par))
			AND c.id NOT IN (SELECT id FROM par)
		RETURNING c.id, f.n
	)
	SELECT id FROM me ORDER BY n`

// CallRedrive implements dispatch.Store with redriveSQL, in a transaction
// of its own (it locks many rows: not in a group commit, whose operations
// lock one call and its parent each, in order).
func (s *Store) CallRedrive(ctx context.Context, p *dispatch.CallRedriveParams) ([]string, error) {
	if len(p.IDs) == 0 {
		return nil, nil
	}
	var done []string
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		rows, err := conn.Query(ctx, redriveSQL, p.IDs, p.Now.UnixNano())
		if err != nil {
			return err
		}
		done, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redrive calls: %w", err)
	}
	if len(done) > 0 {
		s.notifyAfter()
	}
	return done, nil
}
