package dispatchpg

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"fanout/dispatch"
)

// CallSuspend implements dispatch.Store.
func (s *Store) CallSuspend(ctx context.Context, p *dispatch.CallSuspendParams) (bool, error) {
	var applied bool
	now := p.Now.UnixNano()
	cols := toColumns(p.Children, p.Now)
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		applied = false
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
				cols.runnable++
			}
		}
		if cols.runnable > 0 {
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
// that counts the child off or, for the last one, makes the parent
// runnable: leased to $16 until $17, or pending when $16 is null. Siblings
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
			state = CASE WHEN c.waiting > 1 THEN 2 WHEN $21::boolean THEN 3 WHEN $16::text IS NULL THEN 0 ELSE 1 END,
			attempt = CASE WHEN c.waiting > 1 THEN c.attempt WHEN $21::boolean THEN c.attempt + 1
				WHEN $16::text IS NULL THEN c.attempt ELSE c.attempt + 1 END,
			lease_owner = CASE WHEN c.waiting > 1 OR $21::boolean THEN NULL ELSE $16::text END,
			lease_expires = CASE WHEN c.waiting > 1 OR $21::boolean OR $16::text IS NULL THEN NULL ELSE $17::bigint END,
			output = CASE WHEN c.waiting <= 1 AND $21::boolean THEN $22::bytea ELSE c.output END,
			status = CASE WHEN c.waiting <= 1 AND $21::boolean THEN $23::smallint ELSE c.status END,
			error = CASE WHEN c.waiting <= 1 AND $21::boolean THEN NULL ELSE c.error END,
			run_after = CASE WHEN c.waiting > 1 THEN c.run_after ELSE $7 END,
			updated_at = $7
		WHERE c.id = $18 AND c.state = 2 AND $19::boolean AND EXISTS (SELECT 1 FROM me)
			AND (NOT $21::boolean OR c.parent_id IS NULL)
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
		p.FinishParent, nonNil(p.ParentOutput), int16(dispatch.StatusOK)}
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

// CallRedrive implements dispatch.Store.
func (s *Store) CallRedrive(ctx context.Context, p *dispatch.CallRedriveParams) ([]string, error) {
	now := p.Now.UnixNano()
	var done []string
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		done = done[:0]
		for _, id := range p.IDs {
			var parent *string
			err := tx.QueryRow(ctx, `SELECT parent_id FROM calls WHERE id = $1 AND state = 4 FOR UPDATE`, id).Scan(&parent)
			if errors.Is(err, pgx.ErrNoRows) {
				continue // not failed (any more), or unknown
			}
			if err != nil {
				return err
			}
			if parent != nil {
				// The parent waits for this call again: one more if it is
				// waiting, from scratch if it had failed.
				tag, err := tx.Exec(ctx, `UPDATE calls SET
						waiting = CASE state WHEN 2 THEN waiting + 1 ELSE 1 END,
						state = 2, error = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = $1
					WHERE id = $2 AND state IN (2, 4)`, now, *parent)
				if err != nil {
					return err
				}
				if tag.RowsAffected() == 0 {
					continue // the parent is about to finish: leave this call be
				}
			}
			if _, err := tx.Exec(ctx, `UPDATE calls SET state = 0, failures = 0, budget_start = $1, run_after = $1, updated_at = $1
				WHERE id = $2`, now, id); err != nil {
				return err
			}
			done = append(done, id)
		}
		if len(done) > 0 {
			_, err := tx.Exec(ctx, notifySQL, s.channel)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redrive calls: %w", err)
	}
	return done, nil
}
