package dispatchpg

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

// insertSQL stores rows given as one array per column: one statement, and
// one round trip, whatever the number of calls.
const insertSQL = `INSERT INTO calls (id, function, key, input, state, attempt, failures, lease_owner, lease_expires,
		run_after, budget_start, parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at,
		tag, meta)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::smallint[], $6::integer[], $7::integer[],
		$8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::integer[], $14::integer[],
		$15::integer[], $16::integer[], $17::bytea[], $18::text[], $19::smallint[], $20::bigint[], $21::bigint[],
		$22::text[], $23::bytea[])`

// columns are calls laid out as insertSQL's arrays.
type columns struct {
	ids, functions, keys     []string
	inputs, outputs          [][]byte
	states, statuses         []int16
	attempts, failures       []int32
	owners, parents, errs    []*string
	expires                  []*int64
	runAfter, budget         []int64
	gather, idx, gathers, wt []int32
	created, updated         []int64
	tags                     []*string
	metas                    [][]byte
	// runnable counts the rows that anyone may claim now.
	runnable int
}

func toColumns(calls []*dispatch.Call, now time.Time) *columns {
	n := len(calls)
	c := &columns{
		ids: make([]string, n), functions: make([]string, n), keys: make([]string, n),
		inputs: make([][]byte, n), outputs: make([][]byte, n),
		states: make([]int16, n), statuses: make([]int16, n),
		attempts: make([]int32, n), failures: make([]int32, n),
		owners: make([]*string, n), parents: make([]*string, n), errs: make([]*string, n),
		expires:  make([]*int64, n),
		runAfter: make([]int64, n), budget: make([]int64, n),
		gather: make([]int32, n), idx: make([]int32, n), gathers: make([]int32, n), wt: make([]int32, n),
		created: make([]int64, n), updated: make([]int64, n),
		tags: make([]*string, n), metas: make([][]byte, n),
	}
	for i, call := range calls {
		c.ids[i], c.functions[i], c.keys[i] = call.ID, call.Function, call.Key
		c.inputs[i] = call.Input
		if c.inputs[i] == nil {
			c.inputs[i] = []byte{}
		}
		c.states[i], c.statuses[i] = int16(call.State), int16(call.Status)
		c.attempts[i], c.failures[i] = int32(call.Attempt), int32(call.Failures)
		if call.State == dispatch.StateRunning {
			owner, exp := call.LeaseOwner, call.LeaseExpires.UnixNano()
			c.owners[i], c.expires[i] = &owner, &exp
		}
		if call.State == dispatch.StateDone {
			c.outputs[i] = call.Output
			if c.outputs[i] == nil {
				c.outputs[i] = []byte{}
			}
		}
		if call.ParentID != "" {
			p := call.ParentID
			c.parents[i] = &p
		}
		if call.Error != "" {
			e := call.Error
			c.errs[i] = &e
		}
		if call.Tag != "" {
			tag := call.Tag
			c.tags[i] = &tag
		}
		if len(call.Meta) > 0 {
			c.metas[i] = call.Meta
		}
		created := call.CreatedAt.UnixNano()
		c.created[i], c.updated[i], c.budget[i] = created, call.UpdatedAt.UnixNano(), call.BudgetStart.UnixNano()
		if call.UpdatedAt.IsZero() {
			c.updated[i] = created
		}
		if call.BudgetStart.IsZero() {
			c.budget[i] = created
		}
		c.runAfter[i] = call.RunAfter.UnixNano()
		c.gather[i], c.idx[i], c.gathers[i], c.wt[i] = int32(call.Gather), int32(call.Index), int32(call.Gathers), int32(call.Waiting)
		if call.State == dispatch.StatePending && !call.RunAfter.After(now) {
			c.runnable++
		}
	}
	return c
}

func (c *columns) args() []any {
	return []any{c.ids, c.functions, c.keys, c.inputs, c.states, c.attempts, c.failures, c.owners, c.expires,
		c.runAfter, c.budget, c.parents, c.gather, c.idx, c.gathers, c.wt, c.outputs, c.errs, c.statuses,
		c.created, c.updated, c.tags, c.metas}
}

// notifySQL wakes the other processes: one notification per commit, sent
// only if the transaction commits, delivered after it has.
const notifySQL = `SELECT pg_notify($1, '')`

// CallInsertMany implements dispatch.Store.
func (s *Store) CallInsertMany(ctx context.Context, p *dispatch.CallInsertParams) ([]string, error) {
	calls := p.Calls
	ids := make([]string, len(calls))
	if len(calls) == 0 {
		return ids, nil
	}
	deduping := false
	for i, c := range calls {
		ids[i] = c.ID
		deduping = deduping || (c.DedupKey != "" && c.ParentID == "")
	}
	// first is the first row to store: it exists if and only if the insert
	// committed, which is what a commit whose answer was lost needs to know.
	first := calls[0].ID
	exists := func(ctx context.Context, conn *pgxpool.Conn) (bool, error) {
		var ok bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM calls WHERE id = $1)`, first).Scan(&ok)
		return ok, err
	}
	var err error
	if !deduping {
		// Group-committed with whatever else is being written.
		cols := toColumns(calls, time.Now())
		args := cols.args()
		err = s.w.do(ctx, &wop{key: calls[0].ID, notify: cols.runnable > 0, verify: exists, queue: func(b *pgx.Batch) {
			b.Queue(insertSQL, args...)
		}})
	} else {
		stored := -1 // rows to store, once known
		insert := func(ctx context.Context, tx pgx.Tx) error {
			stored = -1
			for i, c := range calls {
				ids[i] = c.ID
			}
			rows, err := dedup(ctx, tx, calls, ids, p.DedupSince)
			if err != nil {
				return err
			}
			if stored = len(rows); stored == 0 {
				return nil
			}
			first = rows[0].ID
			cols := toColumns(rows, time.Now())
			if _, err := tx.Exec(ctx, insertSQL, cols.args()...); err != nil {
				return err
			}
			if cols.runnable > 0 {
				_, err = tx.Exec(ctx, notifySQL, s.channel)
			}
			return err
		}
		for {
			err = s.writeTx(ctx, insert)
			if err == nil || !lostAnswer(err) || stored < 0 {
				break // stored, refused by the server, or lost before the insert
			}
			if stored == 0 {
				err = nil // every call repeated one stored before: nothing to store
				break
			}
			applied, verr := s.verify(ctx, exists)
			if verr != nil {
				err = fmt.Errorf("%w: the commit's answer was lost (%v) and the database could not be asked: %v",
					dispatch.ErrOutcomeUnknown, err, verr)
				break
			}
			if applied {
				err = nil
				break
			}
			// Not applied: store it again.
		}
	}
	if err != nil {
		return nil, fmt.Errorf("insert calls: %w", err)
	}
	return ids, nil
}

// dedup resolves the dedup keys of an insert (see dispatch.ResolveDedup).
// Two processes inserting the same key at once are serialized by the key's
// row: the second waits for the first to commit, then finds its key.
func dedup(ctx context.Context, tx pgx.Tx, calls []*dispatch.Call, ids []string, since time.Time) ([]*dispatch.Call, error) {
	return dispatch.ResolveDedup(calls, ids, func(c *dispatch.Call) (string, error) {
		var holder string
		err := tx.QueryRow(ctx, `INSERT INTO dedup (key, call_id, created_at) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE SET call_id = excluded.call_id, created_at = excluded.created_at
			WHERE dedup.created_at < $4
			RETURNING call_id`, c.DedupKey, c.ID, c.CreatedAt.UnixNano(), since.UnixNano()).Scan(&holder)
		if !errors.Is(err, pgx.ErrNoRows) {
			return holder, err
		}
		// The key is taken within the window: this call repeats that one.
		err = tx.QueryRow(ctx, `SELECT call_id FROM dedup WHERE key = $1`, c.DedupKey).Scan(&holder)
		return holder, err
	})
}

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
	var calls []*dispatch.Call
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		calls = calls[:0]
		rows, err := conn.Query(ctx, claimSQL, p.Key, p.Now.UnixNano(), p.Functions, p.Limit, p.Owner, p.LeaseUntil.UnixNano())
		if err != nil {
			return err
		}
		defer rows.Close()
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
	if err != nil {
		return nil, fmt.Errorf("claim calls: %w", err)
	}
	slices.SortFunc(calls, func(a, b *dispatch.Call) int { return a.RunAfter.Compare(b.RunAfter) })
	return calls, nil
}

// keysSQL is a loose index scan of calls_runnable: each step finds the next
// key after the last one with one index probe, then one probe per key looks
// for a call that is runnable now.
const keysSQL = `WITH RECURSIVE k(key) AS (
		(SELECT key FROM calls WHERE state = 0 ORDER BY key LIMIT 1)
		UNION ALL
		SELECT (SELECT c.key FROM calls c WHERE c.state = 0 AND c.key > k.key ORDER BY c.key LIMIT 1)
		FROM k WHERE k.key IS NOT NULL
	)
	SELECT key FROM k
	WHERE key IS NOT NULL
	AND EXISTS (SELECT 1 FROM calls c WHERE c.state = 0 AND c.key = k.key AND c.run_after <= $1)`

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

const callColumns = `id, function, key, input, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta`

// childColumns are those of callColumns but the input, which a parent never
// needs and which is the bulk of a row.
const childColumns = `id, function, key, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta`

func scanCall(row pgx.Row, withInput bool) (*dispatch.Call, error) {
	var c dispatch.Call
	var runAfter, budget, created, updated int64
	var leaseExpires *int64
	var leaseOwner, parent, errText, tag *string
	var state, status int16
	dest := []any{&c.ID, &c.Function, &c.Key, &c.Input, &state, &c.Attempt, &c.Failures, &runAfter, &budget,
		&leaseOwner, &leaseExpires, &parent, &c.Gather, &c.Index, &c.Gathers, &c.Waiting,
		&c.Output, &errText, &status, &created, &updated, &tag, &c.Meta}
	if !withInput {
		dest = slices.Delete(dest, 3, 4)
	}
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	c.State, c.Status = dispatch.State(state), dispatch.Status(status)
	c.RunAfter, c.BudgetStart = fromNanos(runAfter), fromNanos(budget)
	c.CreatedAt, c.UpdatedAt = fromNanos(created), fromNanos(updated)
	if leaseOwner != nil {
		c.LeaseOwner = *leaseOwner
	}
	if parent != nil {
		c.ParentID = *parent
	}
	if errText != nil {
		c.Error = *errText
	}
	if tag != nil {
		c.Tag = *tag
	}
	if leaseExpires != nil {
		c.LeaseExpires = fromNanos(*leaseExpires)
	}
	return &c, nil
}

// CallGet implements dispatch.Store.
func (s *Store) CallGet(ctx context.Context, id string) (*dispatch.Call, error) {
	var c *dispatch.Call
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		var err error
		c, err = scanCall(conn.QueryRow(ctx, `SELECT `+callColumns+` FROM calls WHERE id = $1`, id), true)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, dispatch.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	return c, nil
}

func (s *Store) listCalls(ctx context.Context, query string, args ...any) ([]*dispatch.Call, error) {
	var calls []*dispatch.Call
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		calls = calls[:0]
		rows, err := conn.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			c, err := scanCall(rows, false)
			if err != nil {
				return err
			}
			calls = append(calls, c)
		}
		return rows.Err()
	})
	return calls, err
}

// CallListChildren implements dispatch.Store.
func (s *Store) CallListChildren(ctx context.Context, parentID string) ([]*dispatch.Call, error) {
	// A child's id starts with its parent's and a dot: the primary key
	// finds them ('/' follows '.').
	calls, err := s.listCalls(ctx, `SELECT `+childColumns+` FROM calls WHERE id > $2 AND id < $3 AND parent_id = $1
		ORDER BY gather, idx`, parentID, parentID+".", parentID+"/")
	if err != nil {
		return nil, fmt.Errorf("list children: %w", err)
	}
	return calls, nil
}

// CallList implements dispatch.Store. The state is a literal in the query,
// so that the planner can use the partial index of failed calls by key.
func (s *Store) CallList(ctx context.Context, p *dispatch.CallListParams) ([]*dispatch.Call, error) {
	var q strings.Builder
	args := []any{p.Function, p.After}
	fmt.Fprintf(&q, `SELECT `+childColumns+` FROM calls WHERE state = %d AND function = $1 AND id > $2`, int(p.State))
	if p.Key != nil {
		args = append(args, *p.Key)
		fmt.Fprintf(&q, ` AND key = $%d`, len(args))
	}
	if !p.CreatedAfter.IsZero() {
		args = append(args, p.CreatedAfter.UnixNano())
		fmt.Fprintf(&q, ` AND created_at >= $%d`, len(args))
	}
	if !p.CreatedBefore.IsZero() {
		args = append(args, p.CreatedBefore.UnixNano())
		fmt.Fprintf(&q, ` AND created_at < $%d`, len(args))
	}
	args = append(args, max(p.Limit, 0))
	fmt.Fprintf(&q, ` ORDER BY id LIMIT $%d`, len(args))
	calls, err := s.listCalls(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	return calls, nil
}

// CallAttempts implements dispatch.Store.
func (s *Store) CallAttempts(ctx context.Context, callID string) ([]*dispatch.Attempt, error) {
	var out []*dispatch.Attempt
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		out = out[:0]
		rows, err := conn.Query(ctx, `SELECT attempt, started_at, duration_ns, status, error, detail
			FROM attempts WHERE call_id = $1 ORDER BY attempt`, callID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			a := &dispatch.Attempt{CallID: callID}
			var started, duration int64
			var status int16
			if err := rows.Scan(&a.Attempt, &started, &duration, &status, &a.Error, &a.Detail); err != nil {
				return err
			}
			a.Started, a.Duration, a.Status = fromNanos(started), time.Duration(duration), dispatch.Status(status)
			out = append(out, a)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list attempts: %w", err)
	}
	return out, nil
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

// CallDeleteFinished implements dispatch.Store with dispatch.WalkRetention
// over seq (insertion order, as the SQLite store walks rowids), from a mark
// kept in memory. Each replica keeps its own mark. The calls to delete
// are locked with SKIP LOCKED: one that another replica is deleting at the
// same moment is left to it.
//
// The walk only passes calls created before Before (days ago, in fanout),
// whose inserts committed long since: seq is taken at insert time without
// caching, so no call can later appear behind the mark.
func (s *Store) CallDeleteFinished(ctx context.Context, p *dispatch.CallDeleteFinishedParams) (int, error) {
	if p.Limit <= 0 {
		return 0, nil
	}
	target, rule := dispatch.StateDone, 0
	if p.Failed {
		target, rule = dispatch.StateFailed, 1
	}
	s.retention.Lock()
	defer s.retention.Unlock()
	ids, mark, err := dispatch.WalkRetention(s.retention.mark[rule], p.Before, target, p.Limit, func(after int64, n int) ([]dispatch.RetentionRoot, error) {
		var roots []dispatch.RetentionRoot
		err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
			roots = roots[:0]
			rows, err := conn.Query(ctx, `SELECT seq, id, state, created_at FROM calls
				WHERE parent_id IS NULL AND seq > $1 ORDER BY seq LIMIT $2`, after, n)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var r dispatch.RetentionRoot
				var state int16
				var created int64
				if err := rows.Scan(&r.Seq, &r.ID, &state, &created); err != nil {
					return err
				}
				r.State, r.CreatedAt = dispatch.State(state), fromNanos(created)
				roots = append(roots, r)
			}
			return rows.Err()
		})
		return roots, err
	})
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	deleted, err := s.deleteTrees(ctx, ids, target)
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	s.retention.mark[rule] = mark
	return deleted, nil
}

// deleteTrees deletes top-level calls still in state, with their
// descendants, their attempts and their dedup keys, in one transaction.
func (s *Store) deleteTrees(ctx context.Context, ids []string, state dispatch.State) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	// A call's descendants are the ids that start with its own and a dot:
	// one range of the primary key each ('/' follows '.').
	const tree = `WITH tree(id) AS (
			SELECT r.id FROM unnest($1::text[]) r(id)
			UNION ALL
			SELECT c.id FROM unnest($1::text[]) r(id), LATERAL (
				SELECT id FROM calls WHERE id > r.id || '.' COLLATE "C" AND id < r.id || '/' COLLATE "C" AND parent_id IS NOT NULL
			) c
		)`
	var deleted int
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id FROM calls WHERE id = ANY($1::text[]) AND state = $2
			ORDER BY seq FOR UPDATE SKIP LOCKED`, ids, int16(state))
		if err != nil {
			return err
		}
		roots, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		deleted = len(roots)
		if deleted == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, tree+` DELETE FROM attempts WHERE call_id IN (SELECT id FROM tree)`, roots); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM dedup WHERE call_id = ANY($1::text[])`, roots); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, tree+` DELETE FROM calls WHERE id IN (SELECT id FROM tree)`, roots)
		return err
	})
	return deleted, err
}

// CallBacklog implements dispatch.Store; calls_runnable, the partial index
// of pending calls by key, serves it.
func (s *Store) CallBacklog(ctx context.Context) ([]dispatch.KeyCount, error) {
	var out []dispatch.KeyCount
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		out = out[:0]
		rows, err := conn.Query(ctx, `SELECT key, count(*) FROM calls WHERE state = 0 GROUP BY key ORDER BY key`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c dispatch.KeyCount
			if err := rows.Scan(&c.Key, &c.N); err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("count backlog: %w", err)
	}
	return out, nil
}

// CallCounts implements dispatch.Store.
func (s *Store) CallCounts(ctx context.Context) ([]dispatch.CallCount, error) {
	var out []dispatch.CallCount
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		out = out[:0]
		rows, err := conn.Query(ctx, `SELECT function, state, count(*) FROM calls GROUP BY function, state ORDER BY function, state`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c dispatch.CallCount
			var state int16
			if err := rows.Scan(&c.Function, &state, &c.N); err != nil {
				return err
			}
			c.State = dispatch.State(state)
			out = append(out, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("count calls: %w", err)
	}
	return out, nil
}
