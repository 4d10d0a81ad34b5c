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
	"fanout/dispatch/internal/storeutil"
)

// suspendSQL parks a running call ($4, fenced by its attempt $5) in a
// Gather and stores its children (insertSQL's arrays, $1-$27 renumbered as
// $6-$32), in one statement: one round trip, group-committed with the
// writer's other operations. Local children (dispatch.Call.Local) are not
// among the rows: the call keeps their plan ($35, of $36 children in all)
// and is leased to their owner ($33) until $34; $37 is how many rows the
// children have, $38-$40 the range of the gather's ids and the gather. It
// returns whether the call was parked and how many children were inserted.
// When some children existed already (a repeat), waiting must be counted
// from them under their locks, which this statement does not do: it then
// fails with errChildrenExist's text, and CallSuspend does it the long way,
// in a transaction of its own. With a plan, a child that existed is one
// whose row is in the gather before the insert (a local one has none to
// conflict with).
var suspendSQL = `WITH me AS (
		UPDATE calls SET state = 2, gathers = $1, waiting = $2, lease_owner = $33, lease_expires = $34, plan = $35,
			plan_total = $36, updated_at = $3
		WHERE id = $4 AND state = 1 AND attempt = $5
		RETURNING id
	), ins AS (
		INSERT INTO calls (id, function, key, input, state, attempt, failures, lease_owner, lease_expires,
			run_after, budget_start, parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at,
			tag, meta, plan, plan_total, order_key, out_of_order)
		SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::bytea[], $10::smallint[], $11::integer[], $12::integer[],
			$13::text[], $14::bigint[], $15::bigint[], $16::bigint[], $17::text[], $18::integer[], $19::integer[],
			$20::integer[], $21::integer[], $22::bytea[], $23::text[], $24::smallint[], $25::bigint[], $26::bigint[],
			$27::text[], $28::bytea[], $29::bytea[], $30::integer[], $31::text[], $32::boolean[])
		WHERE EXISTS (SELECT 1 FROM me)
		ON CONFLICT (id) DO NOTHING
		RETURNING 1
	), n AS (SELECT (SELECT count(*) FROM me) AS applied, (SELECT count(*) FROM ins) AS inserted,
		CASE WHEN $35::bytea IS NULL THEN 0 ELSE (SELECT count(*) FROM calls
			WHERE id > $38 AND id < $39 AND parent_id = $4 AND gather = $40) END AS existed)
	SELECT applied, CASE WHEN applied > 0 AND (inserted < $37 OR existed > 0) THEN ('` + errChildrenExist + ` ' || inserted)::int END,
		inserted
	FROM n`

// errChildrenExist starts the error suspendSQL raises when children of the
// gather existed already.
const errChildrenExist = "dispatchpg: children exist"

// CallSuspend implements dispatch.Store: one statement in the next group
// commit (suspendSQL); the long way, in a transaction of its own, when some
// of the children existed already.
func (s *Store) CallSuspend(ctx context.Context, p *dispatch.CallSuspendParams) (bool, error) {
	rows, plans := storeutil.SplitLocal(p.Children)
	cols := toColumns(rows, nil, p.Now)
	var owner *string
	var expires *int64
	var plan []byte
	var total *int32
	if lp := plans[p.ID]; lp != nil {
		owner, expires, plan, total = &lp.Owner, &lp.Expires, lp.Plan, &lp.Total
	}
	gather := p.ID + "." + strconv.Itoa(p.Gather) + "."
	args := append([]any{p.Gather + 1, len(p.Children), p.Now.UnixNano(), p.ID, p.Attempt}, cols.args()...)
	args = append(args, owner, expires, plan, total, len(rows), gather, gather[:len(gather)-1]+"/", p.Gather)
	var applied bool
	op := &wop{key: p.ID, notify: cols.runnable > 0 || len(cols.ordered) > 0}
	op.queue = func(b *pgx.Batch) {
		applied = false
		b.Queue(suspendSQL, args...).QueryRow(func(row pgx.Row) error {
			var n, inserted int64
			if err := row.Scan(&n, nil, &inserted); err != nil {
				return err
			}
			applied = n > 0
			op.wrote("calls updated", n)
			op.wrote("calls inserted", inserted)
			return nil
		})
		queuePark(b, cols)
	}
	err := s.w.do(ctx, op)
	if isChildrenExist(err) {
		return s.suspendTx(ctx, p)
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
// outcomes are counted under their locks. Local children get no plan then:
// they are stored running, leased as given (their finish finds their rows,
// see CallFinish), like the others.
func (s *Store) suspendTx(ctx context.Context, p *dispatch.CallSuspendParams) (bool, error) {
	var applied bool
	now := p.Now.UnixNano()
	cols := toColumns(p.Children, nil, p.Now)
	err := s.writeTx(ctx, func(ctx context.Context, tx *rtx) error {
		applied = false
		runnable := cols.runnable
		tag, err := tx.Exec(ctx, `UPDATE calls SET state = 2, gathers = $1, waiting = $2, lease_owner = NULL, lease_expires = NULL,
				plan = NULL, plan_total = NULL, updated_at = $3
			WHERE id = $4 AND state = 1 AND attempt = $5`, p.Gather+1, len(p.Children), now, p.ID, p.Attempt)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		applied = true
		tag, err = tx.Exec(ctx, insertSQL+` ON CONFLICT (id) DO NOTHING`, cols.args()...)
		if err != nil {
			return err
		}
		if len(cols.ordered) > 0 {
			runnable++ // a head, perhaps: wake the others to look
			if _, err := tx.Exec(ctx, lockSQL, cols.sequences); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, parkSQL, cols.ordered); err != nil {
				return err
			}
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
// one commit: the call's update ($1-$9; with $25, only while it is leased
// to $25, see localOwner), the attempt's record when $15 ($10-$14), and,
// for a final child ($19), one update of its parent ($18) that counts the
// child off or, for the last one, finishes the parent done with $22
// (FinishParent, $21, if the parent still has the $24 gathers the runtime's
// run of it saw) or makes it runnable: leased to $16 until $17, or pending
// when $16 is null. A parent that keeps counting keeps its lease: that of
// its plan of local calls, if it has one (a stored sibling of theirs
// finished). Siblings finishing at once are serialized by the
// parent's row: the second waits for the first, then re-reads the row and
// counts from what it left. Its last columns say whether it left a call
// runnable by anyone (a retry due at once, $20, or a parent resumed
// unleased): the writer then notifies other processes once the batch has
// committed; and how many rows it wrote: the call's, the record's, the
// parent's.
const finishSQL = `WITH me AS (
		UPDATE calls SET state = $1, output = $2, error = $3, status = $4, run_after = $5,
			failures = failures + $6, lease_owner = NULL, lease_expires = NULL, updated_at = $7
		WHERE id = $8 AND state = 1 AND attempt = $9 AND ($25::text IS NULL OR lease_owner = $25::text)
		RETURNING id
	), rec AS (
		INSERT INTO attempts (call_id, attempt, started_at, duration_ns, status, error, detail)
		SELECT $8, $9, $10, $11, $12, $13, $14 FROM me WHERE $15::boolean
		ON CONFLICT (call_id, attempt) DO UPDATE SET started_at = excluded.started_at, duration_ns = excluded.duration_ns,
			status = excluded.status, error = excluded.error, detail = excluded.detail
		RETURNING 1
	), par AS (
		UPDATE calls c SET
			waiting = CASE WHEN c.waiting > 1 THEN c.waiting - 1 ELSE 0 END,
			state = CASE WHEN c.waiting > 1 THEN 2 WHEN $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN 3 WHEN $16::text IS NULL THEN 0 ELSE 1 END,
			attempt = CASE WHEN c.waiting > 1 THEN c.attempt WHEN $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN c.attempt + 1
				WHEN $16::text IS NULL THEN c.attempt ELSE c.attempt + 1 END,
			lease_owner = CASE WHEN c.waiting > 1 THEN c.lease_owner WHEN $21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL THEN NULL
				ELSE $16::text END,
			lease_expires = CASE WHEN c.waiting > 1 THEN c.lease_expires WHEN ($21::boolean AND c.gathers = $24::integer AND c.parent_id IS NULL)
				OR $16::text IS NULL THEN NULL ELSE $17::bigint END,
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
		(applied.n > 0 AND $20::boolean) OR p.state IS NOT DISTINCT FROM 0,
		applied.n, (SELECT count(*) FROM rec), (SELECT count(*) FROM par)
	FROM applied LEFT JOIN par p ON true`

// A local call's finish (dispatch.CallFinishParams.Local) is three
// statements of one operation, in this order:
//
//  1. finishSQL, fenced by the call's owner as well as its attempt: it
//     applies only if the call has a row already, stored running when its
//     parent's plan was dropped and claimed since by the same owner, or
//     stored by suspendTx. Without a row, it does nothing (and locks
//     nothing).
//  2. localLockSQL locks the parent, if it still holds the plan at the
//     parent's attempt, leased to the call's owner.
//  3. localSQL stores the call with its outcome (one row) if the parent
//     holds the plan, and completes the plan if this was its last call
//     without a row.
//
// Why a statement of its own to lock the parent: under READ COMMITTED
// each statement sees the database as it was when the statement began.
// Whoever adds a row to the plan's gather or drops the plan (a sibling's
// local finish, in another batch; the release of an expired lease, by
// another replica) holds the parent's lock while it does, until it
// commits. Once statement 2 has the lock, statement 3 begins after every
// such transaction committed, and so sees every row of the gather and
// whether the plan is still there: its count of the gather's rows is
// exact, so the plan completes exactly once, and a plan dropped meanwhile
// fences the finish (statement 2, waiting for the lock, re-reads the
// parent once the drop committed, and finds no plan; statement 3 then
// finds none either). Locking in statement 3 itself would not do: its
// snapshot would be taken before the wait, blind to the rows the holder
// of the lock added. The drop does the same the other way round (see
// dropPlans): it locks the parent, then lists its children in a later
// statement, and so sees the row of every local finish that committed
// before, while those that come after wait for it and are fenced. The
// operation's key is the parent, as for a stored child's finish, so the
// batches lock parents in one order; and a parent is locked before the
// child's new row is written, which no one else can hold.
const localLockSQL = `SELECT 1 FROM calls WHERE id = $1 AND state = 2 AND attempt = $2 AND lease_owner = $3
	AND plan IS NOT NULL FOR UPDATE`

// localSQL stores a local call with its outcome, if its parent ($1) still
// holds its plan at attempt $2 leased to $3 (locked by localLockSQL, and so
// stable): the call's row ($5-$21, of gather $4), its record when $22
// ($23-$27). If the gather then has as many rows as the plan has children
// in all (plan_total), the plan is complete: the parent's plan and lease
// are dropped and it waits for its children not final, and with none left
// it is finished done (FinishParent $30, with $31, if it still has the $33
// gathers the runtime's run of it saw) or made runnable (leased to $28
// until $29, or pending when $28 is null), as finishSQL does for a last
// child. The counts read the parent's children as the statement began
// (the new row is not among them: it is added). It returns finishSQL's
// columns; $34 says whether the call itself is runnable by anyone (a retry
// due at once). A row of the call that exists already is left as it is,
// and the finish not applied: the finish is being replayed after a commit
// whose answer was lost, which stored it (the plan is there, and the row
// too, only then: the parent's lock keeps a drop from storing it).
const localSQL = `WITH par AS (
		SELECT plan_total FROM calls
		WHERE id = $1 AND state = 2 AND attempt = $2 AND lease_owner = $3 AND plan IS NOT NULL
	), ins AS (
		INSERT INTO calls (id, function, key, input, state, attempt, failures, run_after, budget_start, parent_id,
			gather, idx, output, error, status, created_at, updated_at, tag, meta)
		SELECT $5, $6, $7, $8, $9, $10, $11, $12, $13, $1, $4, $14, $15, $16, $17, $18, $19, $20, $21 FROM par
		ON CONFLICT (id) DO NOTHING
		RETURNING state
	), rec AS (
		INSERT INTO attempts (call_id, attempt, started_at, duration_ns, status, error, detail)
		SELECT $5, $10, $23, $24, $25, $26, $27 FROM ins WHERE $22::boolean
		ON CONFLICT (call_id, attempt) DO UPDATE SET started_at = excluded.started_at, duration_ns = excluded.duration_ns,
			status = excluded.status, error = excluded.error, detail = excluded.detail
		RETURNING 1
	), kids AS (
		SELECT count(*) FILTER (WHERE gather = $4) + 1 AS rows,
			count(*) FILTER (WHERE state NOT IN (3, 4)) + (SELECT count(*) FROM ins WHERE state NOT IN (3, 4)) AS lft
		FROM calls WHERE id > ($1 || '.') COLLATE "C" AND id < ($1 || '/') COLLATE "C" AND parent_id = $1
			AND EXISTS (SELECT 1 FROM ins)
	), up AS (
		UPDATE calls c SET plan = NULL, plan_total = NULL,
			waiting = k.lft,
			state = CASE WHEN k.lft > 0 THEN 2 WHEN $30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL THEN 3
				WHEN $28::text IS NULL THEN 0 ELSE 1 END,
			attempt = CASE WHEN k.lft > 0 THEN c.attempt WHEN $30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL THEN c.attempt + 1
				WHEN $28::text IS NULL THEN c.attempt ELSE c.attempt + 1 END,
			lease_owner = CASE WHEN k.lft > 0 OR ($30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL) THEN NULL ELSE $28::text END,
			lease_expires = CASE WHEN k.lft > 0 OR ($30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL) OR $28::text IS NULL THEN NULL
				ELSE $29::bigint END,
			output = CASE WHEN k.lft = 0 AND $30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL THEN $31::bytea ELSE c.output END,
			status = CASE WHEN k.lft = 0 AND $30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL THEN $32::smallint ELSE c.status END,
			error = CASE WHEN k.lft = 0 AND $30::boolean AND c.gathers = $33::integer AND c.parent_id IS NULL THEN NULL ELSE c.error END,
			run_after = CASE WHEN k.lft > 0 THEN c.run_after ELSE $19 END,
			updated_at = $19
		FROM kids k, par
		WHERE c.id = $1 AND k.rows >= par.plan_total
		RETURNING c.state, c.id, c.function, c.key, CASE WHEN c.state = 1 THEN c.input END AS input, c.attempt, c.failures,
			c.run_after, c.budget_start, c.parent_id, c.gather, c.idx, c.gathers, c.created_at, c.meta
	), applied AS (SELECT count(*) AS n FROM ins)
	SELECT applied.n, p.state, p.id, p.function, p.key, p.input, p.attempt, p.failures, p.run_after, p.budget_start,
		p.parent_id, p.gather, p.idx, p.gathers, p.created_at, p.meta,
		(applied.n > 0 AND $34::boolean) OR p.state IS NOT DISTINCT FROM 0,
		0, (SELECT count(*) FROM rec), (SELECT count(*) FROM up)
	FROM applied LEFT JOIN up p ON true`

// CallFinish implements dispatch.Store: finishSQL, and for a local call
// localLockSQL and localSQL after it, in the next group commit.
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
	// localOwner is the owner a local call's row must be leased to: only
	// the process it is leased to may finish it as a stored call.
	var localOwner *string
	if p.Local != nil {
		localOwner = &p.Local.LeaseOwner
	}
	args := []any{int16(p.State), output, errText, int16(p.Status), runAfter, failed, now, p.ID, p.Attempt,
		rec.Started.UnixNano(), int64(rec.Duration), int16(rec.Status), rec.Error, detail, p.Record != nil,
		resumeOwner, resumeUntil, parent, p.ParentID != "" && p.State.Final(), notify,
		p.FinishParent, nonNil(p.ParentOutput), int16(dispatch.StatusOK), int32(p.ParentGathers), localOwner}
	var local []any
	if c := p.Local; c != nil {
		var tag *string
		if c.Tag != "" {
			tag = &c.Tag
		}
		var meta []byte
		if len(c.Meta) > 0 {
			meta = c.Meta
		}
		created := c.CreatedAt.UnixNano()
		budget := c.BudgetStart.UnixNano()
		if c.BudgetStart.IsZero() {
			budget = created
		}
		local = []any{p.ParentID, p.ParentAttempt, c.LeaseOwner, int32(c.Gather),
			p.ID, c.Function, c.Key, nonNil(c.Input), int16(p.State), p.Attempt, failed, runAfter, budget, int32(c.Index),
			output, errText, int16(p.Status), created, now, tag, meta,
			p.Record != nil, rec.Started.UnixNano(), int64(rec.Duration), int16(rec.Status), rec.Error, detail,
			resumeOwner, resumeUntil, p.FinishParent, nonNil(p.ParentOutput), int16(dispatch.StatusOK), int32(p.ParentGathers),
			notify}
	}
	// The operation locks the call, then its parent: batches order their
	// operations by the parent so that they lock parents in one order.
	key := p.ID
	if p.ParentID != "" {
		key = p.ParentID
	}
	res := &dispatch.CallFinishResult{}
	// A finish lost in a server crash costs the call run again (see
	// Config.SyncEveryCommit): lazy.
	unpark := p.OrderKey != "" && p.State.Final()
	op := &wop{key: key, lazy: true, notify: unpark}
	op.queue = func(b *pgx.Batch) {
		*res = dispatch.CallFinishResult{}
		op.notifyAfter = false
		b.Queue(finishSQL, args...).QueryRow(func(row pgx.Row) error {
			return scanFinish(row, p, res, op)
		})
		if unpark {
			// The next of its sequence (see lockSQL).
			b.Queue(unlockSQL, p.ID, p.OrderKey)
			b.Queue(unparkSQL, p.ID, p.OrderKey, now, p.Attempt)
		}
		if local == nil {
			return
		}
		b.Queue(localLockSQL, p.ParentID, p.ParentAttempt, p.Local.LeaseOwner)
		b.Queue(localSQL, local...).QueryRow(func(row pgx.Row) error {
			var r dispatch.CallFinishResult
			if err := scanFinish(row, p, &r, op); err != nil {
				return err
			}
			if r.Applied {
				*res = r
				op.wrote("calls inserted", 1)
			}
			return nil
		})
	}
	err := s.w.do(ctx, op)
	if err != nil {
		return nil, fmt.Errorf("finish call: %w", err)
	}
	return res, nil
}

// scanFinish reads the row of finishSQL (or localSQL) into res, and counts
// what it wrote and whether it left a call runnable by anyone in op.
func scanFinish(row pgx.Row, p *dispatch.CallFinishParams, res *dispatch.CallFinishResult, op *wop) error {
	var applied int64
	var state *int16
	var id, function, key, parentID *string
	var input, meta []byte
	var attempt, failures, gather, idx, gathers *int32
	var runAfter, budget, created *int64
	var runnable bool
	var updated, recorded, parents int64
	if err := row.Scan(&applied, &state, &id, &function, &key, &input, &attempt,
		&failures, &runAfter, &budget, &parentID, &gather, &idx, &gathers, &created, &meta, &runnable,
		&updated, &recorded, &parents); err != nil {
		return err
	}
	op.wrote("calls updated", updated+parents)
	op.wrote("attempts inserted", recorded)
	op.notifyAfter = op.notifyAfter || runnable
	*res = dispatch.CallFinishResult{Applied: applied > 0}
	if state == nil || *state == int16(dispatch.StateWaiting) {
		return nil // no parent, or not its last child
	}
	if *state == int16(dispatch.StateDone) {
		res.ParentFinished = true // FinishParent
		return nil
	}
	res.ParentResumed = true
	if *state != int16(dispatch.StateRunning) {
		return nil
	}
	c := &dispatch.Call{ID: *id, Function: *function, Key: *key, Input: input, State: dispatch.StateRunning,
		Attempt: int(*attempt), Failures: int(*failures), RunAfter: fromNanos(*runAfter), BudgetStart: fromNanos(*budget),
		Gather: int(*gather), Index: int(*idx), Gathers: int(*gathers), CreatedAt: fromNanos(*created),
		Meta: meta, LeaseOwner: p.ResumeOwner, LeaseExpires: p.ResumeLeaseUntil}
	if parentID != nil {
		c.ParentID = *parentID
	}
	res.Parent = c
	return nil
}

// redriveSQL re-drives the failed calls among $1 in one statement, and so
// one round trip whatever their number: each becomes pending at $2 with a
// fresh budget, and its parent, waiting or failed, waits for it again (one
// more per re-driven child). A call whose parent is pending or running
// (about to finish) is left be, and so is a failed parent re-driven with
// its own children: it waits for them instead. A waiting parent keeps the
// lease of its plan of local calls, if it has one (a failed parent, or a
// waiting one without a plan, has no lease). It returns the ids re-driven,
// in the order asked, and how many parents it updated (a row with a null
// id when it re-drove none).
const redriveSQL = `WITH want AS (
		SELECT id, min(n) AS n FROM unnest($1::text[]) WITH ORDINALITY AS w(id, n) GROUP BY id
	), f AS (
		SELECT c.id, c.parent_id, want.n FROM calls c JOIN want ON c.id = want.id
		WHERE c.state = 4 ORDER BY c.id FOR UPDATE OF c
	), par AS (
		UPDATE calls p SET waiting = CASE p.state WHEN 2 THEN p.waiting + k.n ELSE k.n END,
			state = 2, error = NULL, updated_at = $2
		FROM (SELECT parent_id, count(*) AS n FROM f WHERE parent_id IS NOT NULL GROUP BY parent_id) k
		WHERE p.id = k.parent_id AND p.state IN (2, 4)
		RETURNING p.id
	), me AS (
		UPDATE calls c SET state = 0, failures = 0, budget_start = $2, run_after = $2, updated_at = $2,
			out_of_order = CASE WHEN c.order_key IS NOT NULL THEN true ELSE c.out_of_order END, order_key = NULL
		FROM f WHERE c.id = f.id AND (f.parent_id IS NULL OR f.parent_id IN (SELECT id FROM par))
			AND c.id NOT IN (SELECT id FROM par)
		RETURNING c.id, f.n
	)
	SELECT me.id, (SELECT count(*) FROM par) FROM (SELECT 1) one LEFT JOIN me ON true ORDER BY me.n`

// CallRedrive implements dispatch.Store with redriveSQL, in a transaction
// of its own (it locks many rows: not in a group commit, whose operations
// lock one call and its parent each, in order).
func (s *Store) CallRedrive(ctx context.Context, p *dispatch.CallRedriveParams) ([]string, error) {
	if len(p.IDs) == 0 {
		return nil, nil
	}
	var done []string
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		done = done[:0]
		rows, err := conn.Query(ctx, redriveSQL, p.IDs, p.Now.UnixNano())
		if err != nil {
			return err
		}
		var parents int64
		for rows.Next() {
			var id *string
			if err := rows.Scan(&id, &parents); err != nil {
				rows.Close()
				return err
			}
			if id != nil {
				done = append(done, *id)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		s.rows.Add(addRows(addRows(nil, "calls updated", int64(len(done))), "calls updated", parents))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redrive calls: %w", err)
	}
	if len(done) > 0 {
		s.notifyAfter()
	}
	return done, nil
}
