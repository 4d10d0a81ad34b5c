package dispatchsqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"fanout/dispatch"
)

// insertChunk is how many rows one INSERT statement carries. Fewer, larger
// statements cut the per-statement cost that dominates small rows.
const insertChunk = 64

const insertColumns = 23

// insertQueries holds the INSERT statements by row count (1..insertChunk),
// plain and OR IGNORE, built once.
var insertQueries = func() (q [2][insertChunk + 1]string) {
	for ignore := range 2 {
		for rows := 1; rows <= insertChunk; rows++ {
			var b strings.Builder
			b.WriteString("INSERT ")
			if ignore == 1 {
				b.WriteString("OR IGNORE ")
			}
			b.WriteString("INTO calls (id, function, key, input, state, attempt, failures, lease_owner, lease_expires, run_after, " +
				"budget_start, parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta) VALUES ")
			for i := range rows {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
			}
			q[ignore][rows] = b.String()
		}
	}
	return q
}()

func insertQuery(rows int, orIgnore bool) string {
	if orIgnore {
		return insertQueries[1][rows]
	}
	return insertQueries[0][rows]
}

// insert writes calls in chunks and returns how many rows were inserted.
func insert(tx *wtx, calls []*dispatch.Call, orIgnore bool) (int64, error) {
	var inserted int64
	args := make([]any, 0, min(len(calls), insertChunk)*insertColumns)
	for start := 0; start < len(calls); start += insertChunk {
		chunk := calls[start:min(start+insertChunk, len(calls))]
		args = args[:0]
		for _, c := range chunk {
			var parent, owner, expires, output, errText, tag, meta any
			if c.ParentID != "" {
				parent = c.ParentID
			}
			if c.State == dispatch.StateRunning {
				owner, expires = c.LeaseOwner, c.LeaseExpires.UnixNano()
			}
			if c.State == dispatch.StateDone {
				output = c.Output
			}
			if c.Error != "" {
				errText = c.Error
			}
			if c.Tag != "" {
				tag = c.Tag
			}
			if len(c.Meta) > 0 {
				meta = c.Meta
			}
			created, updated, budget := c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), c.BudgetStart.UnixNano()
			if c.UpdatedAt.IsZero() {
				updated = created
			}
			if c.BudgetStart.IsZero() {
				budget = created
			}
			args = append(args, c.ID, c.Function, c.Key, c.Input, int(c.State), c.Attempt, c.Failures, owner, expires,
				c.RunAfter.UnixNano(), budget, parent, c.Gather, c.Index, c.Gathers, c.Waiting, output, errText, int(c.Status),
				created, updated, tag, meta)
		}
		n, err := tx.exec(insertQuery(len(chunk), orIgnore), args...)
		if err != nil {
			return inserted, err
		}
		inserted += n
	}
	return inserted, nil
}

// CallInsertMany implements dispatch.Store.
func (s *Store) CallInsertMany(ctx context.Context, p *dispatch.CallInsertParams) ([]string, error) {
	calls := p.Calls
	ids := make([]string, len(calls))
	if len(calls) == 0 {
		return ids, nil
	}
	deduping := false
	for _, c := range calls {
		deduping = deduping || c.DedupKey != ""
	}
	err := s.w.do(ctx, func(tx *wtx) error {
		rows := calls
		for i, c := range calls {
			ids[i] = c.ID
		}
		if deduping {
			var err error
			if rows, err = dedup(tx, calls, ids, p.DedupSince); err != nil {
				return err
			}
		}
		_, err := insert(tx, rows, false)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("insert calls: %w", err)
	}
	return ids, nil
}

// dedup resolves the dedup keys of an insert (see dispatch.ResolveDedup).
// The writer is the only one: a key read here cannot be taken meanwhile.
func dedup(tx *wtx, calls []*dispatch.Call, ids []string, since time.Time) ([]*dispatch.Call, error) {
	return dispatch.ResolveDedup(calls, ids, func(c *dispatch.Call) (string, error) {
		row, err := tx.queryRow(`SELECT call_id FROM dedup WHERE key = ? AND created_at >= ?`, c.DedupKey, since.UnixNano())
		switch {
		case err == nil:
			return asString(row[0]), nil
		case !errors.Is(err, sql.ErrNoRows):
			return "", err
		}
		_, err = tx.exec(`INSERT INTO dedup (key, call_id, created_at) VALUES (?, ?, ?)
			ON CONFLICT (key) DO UPDATE SET call_id = excluded.call_id, created_at = excluded.created_at`,
			c.DedupKey, c.ID, c.CreatedAt.UnixNano())
		return c.ID, err
	})
}

// claimColumns are what a claim (or a resume) returns of a call, with its
// parent's input (see dispatch.Call.ParentInput): a primary key probe of a
// row the cache holds, in the writer, instead of a read per call later.
const claimColumns = `id, function, key, input, attempt, failures, run_after, budget_start, parent_id, gather, idx, gathers, created_at, meta,
	(SELECT p.input FROM calls p WHERE p.id = calls.parent_id)`

// claimed makes a running call of a row of claimColumns.
func claimed(row []driver.Value) *dispatch.Call {
	return &dispatch.Call{
		State:       dispatch.StateRunning,
		ID:          asString(row[0]),
		Function:    asString(row[1]),
		Key:         asString(row[2]),
		Input:       asBytes(row[3]),
		Attempt:     int(asInt(row[4])),
		Failures:    int(asInt(row[5])),
		RunAfter:    fromNanos(asInt(row[6])),
		BudgetStart: fromNanos(asInt(row[7])),
		ParentID:    asString(row[8]),
		Gather:      int(asInt(row[9])),
		Index:       int(asInt(row[10])),
		Gathers:     int(asInt(row[11])),
		CreatedAt:   fromNanos(asInt(row[12])),
		Meta:        asBytes(row[13]),
		ParentInput: asBytes(row[14]),
	}
}

func claimQuery(functions int) string {
	return `UPDATE calls SET state = 1, lease_owner = ?, lease_expires = ?, attempt = attempt + 1, updated_at = ?
	WHERE id IN (
		SELECT id FROM calls
		WHERE state = 0 AND key = ? AND run_after <= ? AND function IN (` + placeholders(functions) + `)
		ORDER BY run_after
		LIMIT ?
	)
	RETURNING ` + claimColumns
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// CallClaim implements dispatch.Store.
func (s *Store) CallClaim(ctx context.Context, p *dispatch.CallClaimParams) ([]*dispatch.Call, error) {
	if p.Limit <= 0 || len(p.Functions) == 0 {
		return nil, nil
	}
	now := p.Now.UnixNano()
	args := make([]any, 0, 6+len(p.Functions))
	args = append(args, p.Owner, p.LeaseUntil.UnixNano(), now, p.Key, now)
	for _, f := range p.Functions {
		args = append(args, f)
	}
	args = append(args, p.Limit)
	query := claimQuery(len(p.Functions))

	var calls []*dispatch.Call
	err := s.w.do(ctx, func(tx *wtx) error {
		calls = calls[:0]
		return tx.query(query, args, func(row []driver.Value) error {
			c := claimed(row)
			c.LeaseOwner, c.LeaseExpires = p.Owner, p.LeaseUntil
			calls = append(calls, c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("claim calls: %w", err)
	}
	slices.SortFunc(calls, func(a, b *dispatch.Call) int { return a.RunAfter.Compare(b.RunAfter) })
	return calls, nil
}

// CallKeys implements dispatch.Store: a loose index scan of calls_runnable,
// one probe per key, then one probe per key for a runnable call.
func (s *Store) CallKeys(ctx context.Context, now time.Time) ([]string, error) {
	rows, err := s.keysStmt.QueryContext(ctx, now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

const keysQuery = `WITH RECURSIVE k(key) AS (
		SELECT (SELECT MIN(key) FROM calls WHERE state = 0)
		UNION ALL
		SELECT (SELECT MIN(key) FROM calls WHERE state = 0 AND key > k.key) FROM k WHERE k.key IS NOT NULL
	)
	SELECT key FROM k
	WHERE key IS NOT NULL
	AND EXISTS (SELECT 1 FROM calls WHERE state = 0 AND key = k.key AND run_after <= ?)`

// CallLeaseRenew implements dispatch.Store.
func (s *Store) CallLeaseRenew(ctx context.Context, p *dispatch.CallLeaseRenewParams) error {
	if len(p.IDs) == 0 {
		return nil
	}
	ids, err := json.Marshal(p.IDs)
	if err != nil {
		return err
	}
	err = s.w.do(ctx, func(tx *wtx) error {
		_, err := tx.exec(`UPDATE calls SET lease_expires = ?
			WHERE id IN (SELECT value FROM json_each(?)) AND state = 1 AND lease_owner = ?`,
			p.LeaseUntil.UnixNano(), string(ids), p.Owner)
		return err
	})
	if err != nil {
		return fmt.Errorf("renew leases: %w", err)
	}
	return nil
}

// CallLeaseRelease implements dispatch.Store.
func (s *Store) CallLeaseRelease(ctx context.Context, p *dispatch.CallLeaseReleaseParams) (int, error) {
	var n int64
	err := s.w.do(ctx, func(tx *wtx) error {
		var err error
		if p.Owner != "" {
			n, err = tx.exec(`UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL
				WHERE state = 1 AND lease_owner = ?`, p.Owner)
		} else {
			n, err = tx.exec(`UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL
				WHERE state = 1 AND lease_expires <= ?`, p.Now.UnixNano())
		}
		return err
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
	err := s.w.do(ctx, func(tx *wtx) error {
		applied = false
		n, err := tx.exec(`UPDATE calls SET state = 2, gathers = ?, waiting = ?, lease_owner = NULL, lease_expires = NULL, updated_at = ?
			WHERE id = ? AND state = 1 AND attempt = ?`,
			p.Gather+1, len(p.Children), now, p.ID, p.Attempt)
		if err != nil || n == 0 {
			return err
		}
		applied = true
		inserted, err := insert(tx, p.Children, true)
		if err != nil {
			return err
		}
		if inserted == int64(len(p.Children)) {
			return nil
		}
		// Some children existed already: count those still to wait for.
		_, err = tx.exec(`UPDATE calls SET
				waiting = (SELECT count(*) FROM calls WHERE `+gatherRange+` AND state NOT IN (3, 4)),
				state = CASE WHEN (SELECT count(*) FROM calls WHERE `+gatherRange+` AND state NOT IN (3, 4)) = 0 THEN 0 ELSE 2 END,
				run_after = ?3
			WHERE id = ?1`, p.ID, p.Gather, now)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("suspend call: %w", err)
	}
	return applied, nil
}

// CallFinish implements dispatch.Store.
func (s *Store) CallFinish(ctx context.Context, p *dispatch.CallFinishParams) (*dispatch.CallFinishResult, error) {
	now := p.Now.UnixNano()
	var failed int
	if p.State != dispatch.StateDone && !p.Snooze {
		failed = 1
	}
	var errText, output any
	if p.Error != "" {
		errText = p.Error
	}
	if p.State == dispatch.StateDone {
		output = p.Output
	}
	runAfter := now
	if p.State == dispatch.StatePending {
		runAfter = p.RunAfter.UnixNano()
	}
	var parentOutput any
	if p.FinishParent {
		parentOutput = nonNil(p.ParentOutput)
	}
	res := &dispatch.CallFinishResult{}
	err := s.w.do(ctx, func(tx *wtx) error {
		*res = dispatch.CallFinishResult{}
		n, err := tx.exec(`UPDATE calls SET state = ?, output = ?, error = ?, status = ?, run_after = ?,
				failures = failures + ?, lease_owner = NULL, lease_expires = NULL, updated_at = ?
			WHERE id = ? AND state = 1 AND attempt = ?`,
			int(p.State), output, errText, int(p.Status), runAfter, failed, now, p.ID, p.Attempt)
		if err != nil || n == 0 {
			return err
		}
		res.Applied = true
		if r := p.Record; r != nil {
			var detail any
			if len(r.Detail) > 0 {
				detail = r.Detail
			}
			if _, err := tx.exec(`INSERT OR REPLACE INTO attempts (call_id, attempt, started_at, duration_ns, status, error, detail)
				VALUES (?, ?, ?, ?, ?, ?, ?)`, p.ID, p.Attempt, r.Started.UnixNano(), int64(r.Duration), int(r.Status),
				r.Error, detail); err != nil {
				return err
			}
		}
		if p.ParentID == "" || !p.State.Final() {
			return nil
		}
		// Count the child off; the last one makes the parent runnable.
		n, err = tx.exec(`UPDATE calls SET waiting = waiting - 1, updated_at = ?
			WHERE id = ? AND state = 2 AND waiting > 1`, now, p.ParentID)
		if err != nil || n > 0 {
			return err
		}
		if p.FinishParent {
			// The runtime ran the parent with this last outcome: store
			// its run, done.
			n, err := tx.exec(`UPDATE calls SET waiting = 0, state = 3, output = ?, error = NULL, status = ?,
					attempt = attempt + 1, lease_owner = NULL, lease_expires = NULL, run_after = ?, updated_at = ?
				WHERE id = ? AND state = 2 AND parent_id IS NULL`, parentOutput, int(dispatch.StatusOK), now, now, p.ParentID)
			res.ParentFinished = n > 0
			return err
		}
		if p.ResumeOwner == "" {
			n, err := tx.exec(`UPDATE calls SET waiting = 0, state = 0, run_after = ?, updated_at = ?
				WHERE id = ? AND state = 2`, now, now, p.ParentID)
			res.ParentResumed = n > 0
			return err
		}
		row, err := tx.queryRow(`UPDATE calls SET waiting = 0, state = 1, attempt = attempt + 1,
				lease_owner = ?, lease_expires = ?, run_after = ?, updated_at = ?
			WHERE id = ? AND state = 2 RETURNING `+claimColumns,
			p.ResumeOwner, p.ResumeLeaseUntil.UnixNano(), now, now, p.ParentID)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return nil // the parent is not waiting (it was redriven, or is gone)
		case err != nil:
			return err
		}
		res.ParentResumed = true
		res.Parent = claimed(row)
		res.Parent.LeaseOwner, res.Parent.LeaseExpires = p.ResumeOwner, p.ResumeLeaseUntil
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finish call: %w", err)
	}
	return res, nil
}

const callColumns = `id, function, key, input, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta`

// scanCall scans a row of callColumns, or of childColumns (no input) when
// input is false.
func scanCall(scan func(...any) error, input bool) (*dispatch.Call, error) {
	var c dispatch.Call
	var runAfter, budget, created, updated int64
	var leaseExpires sql.NullInt64
	var leaseOwner, parent, errText, tag sql.NullString
	var state, status int
	dest := []any{&c.ID, &c.Function, &c.Key}
	if input {
		dest = append(dest, &c.Input)
	}
	dest = append(dest, &state, &c.Attempt, &c.Failures, &runAfter, &budget, &leaseOwner, &leaseExpires, &parent,
		&c.Gather, &c.Index, &c.Gathers, &c.Waiting, &c.Output, &errText, &status, &created, &updated, &tag, &c.Meta)
	if err := scan(dest...); err != nil {
		return nil, err
	}
	c.State, c.Status = dispatch.State(state), dispatch.Status(status)
	c.RunAfter, c.BudgetStart = fromNanos(runAfter), fromNanos(budget)
	c.CreatedAt, c.UpdatedAt = fromNanos(created), fromNanos(updated)
	c.LeaseOwner, c.ParentID, c.Error, c.Tag = leaseOwner.String, parent.String, errText.String, tag.String
	if leaseExpires.Valid {
		c.LeaseExpires = fromNanos(leaseExpires.Int64)
	}
	return &c, nil
}

// CallGet implements dispatch.Store.
func (s *Store) CallGet(ctx context.Context, id string) (*dispatch.Call, error) {
	row := s.getStmt.QueryRowContext(ctx, id)
	c, err := scanCall(row.Scan, true)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, dispatch.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	return c, nil
}

// CallListChildren implements dispatch.Store.
func (s *Store) CallListChildren(ctx context.Context, parentID string) ([]*dispatch.Call, error) {
	rows, err := s.childrenStmt.QueryContext(ctx, parentID)
	if err != nil {
		return nil, fmt.Errorf("list children: %w", err)
	}
	defer rows.Close()
	var calls []*dispatch.Call
	for rows.Next() {
		c, err := scanCall(rows.Scan, false)
		if err != nil {
			return nil, fmt.Errorf("list children: %w", err)
		}
		c.ParentID = parentID
		calls = append(calls, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list children: %w", err)
	}
	return calls, nil
}

// childColumns are those of callColumns but the input, which a parent never
// needs and which is the bulk of a row.
const childColumns = `id, function, key, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta`

// CallList implements dispatch.Store.
func (s *Store) CallList(ctx context.Context, p *dispatch.CallListParams) ([]*dispatch.Call, error) {
	var q strings.Builder
	args := []any{int(p.State), p.Function, p.After}
	q.WriteString(`SELECT ` + childColumns + ` FROM calls WHERE state = ? AND function = ? AND id > ?`)
	if p.Key != nil {
		q.WriteString(` AND key = ?`)
		args = append(args, *p.Key)
	}
	if !p.CreatedAfter.IsZero() {
		q.WriteString(` AND created_at >= ?`)
		args = append(args, p.CreatedAfter.UnixNano())
	}
	if !p.CreatedBefore.IsZero() {
		q.WriteString(` AND created_at < ?`)
		args = append(args, p.CreatedBefore.UnixNano())
	}
	q.WriteString(` ORDER BY id LIMIT ?`)
	args = append(args, max(p.Limit, 0))
	rows, err := s.rdb.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	defer rows.Close()
	var calls []*dispatch.Call
	for rows.Next() {
		c, err := scanCall(rows.Scan, false)
		if err != nil {
			return nil, fmt.Errorf("list calls: %w", err)
		}
		calls = append(calls, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	return calls, nil
}

// CallAttempts implements dispatch.Store.
func (s *Store) CallAttempts(ctx context.Context, callID string) ([]*dispatch.Attempt, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT attempt, started_at, duration_ns, status, error, detail
		FROM attempts WHERE call_id = ? ORDER BY attempt`, callID)
	if err != nil {
		return nil, fmt.Errorf("list attempts: %w", err)
	}
	defer rows.Close()
	var out []*dispatch.Attempt
	for rows.Next() {
		a := &dispatch.Attempt{CallID: callID}
		var started, duration int64
		var status int
		if err := rows.Scan(&a.Attempt, &started, &duration, &status, &a.Error, &a.Detail); err != nil {
			return nil, fmt.Errorf("list attempts: %w", err)
		}
		a.Started, a.Duration, a.Status = fromNanos(started), time.Duration(duration), dispatch.Status(status)
		out = append(out, a)
	}
	return out, rows.Err()
}

// CallRedrive implements dispatch.Store.
func (s *Store) CallRedrive(ctx context.Context, p *dispatch.CallRedriveParams) ([]string, error) {
	now := p.Now.UnixNano()
	var done []string
	err := s.w.do(ctx, func(tx *wtx) error {
		done = done[:0]
		for _, id := range p.IDs {
			row, err := tx.queryRow(`SELECT parent_id FROM calls WHERE id = ? AND state = 4`, id)
			if errors.Is(err, sql.ErrNoRows) {
				continue // not failed (any more), or unknown
			}
			if err != nil {
				return err
			}
			if parent := asString(row[0]); parent != "" {
				// The parent waits for this call again: one more if it is
				// waiting, from scratch if it had failed.
				n, err := tx.exec(`UPDATE calls SET
						waiting = CASE state WHEN 2 THEN waiting + 1 ELSE 1 END,
						state = 2, error = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?
					WHERE id = ? AND state IN (2, 4)`, now, parent)
				if err != nil {
					return err
				}
				if n == 0 {
					continue // the parent is about to finish: leave this call be
				}
			}
			if _, err := tx.exec(`UPDATE calls SET state = 0, failures = 0, budget_start = ?, run_after = ?, updated_at = ?
				WHERE id = ?`, now, now, now, id); err != nil {
				return err
			}
			done = append(done, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redrive calls: %w", err)
	}
	return done, nil
}

// CallDeleteFinished implements dispatch.Store with dispatch.WalkRetention
// over rowids (the order calls were stored in), from a mark kept in memory.
// An index on age would find the calls directly, but every event would pay
// for it on the write path, where this pays on a pass a minute.
func (s *Store) CallDeleteFinished(ctx context.Context, p *dispatch.CallDeleteFinishedParams) (int, error) {
	target, rule := dispatch.StateDone, 0
	if p.Failed {
		target, rule = dispatch.StateFailed, 1
	}
	var deleted int
	err := s.w.do(ctx, func(tx *wtx) error {
		deleted = 0
		mark := s.retentionMark[rule]
		if row, err := tx.queryRow(`SELECT COALESCE(MAX(rowid), 0) FROM calls`); err != nil {
			return err
		} else if asInt(row[0]) < mark {
			mark = 0 // the table emptied and rowids start again
		}
		ids, mark, err := dispatch.WalkRetention(mark, p.Before, target, p.Limit, func(after int64, n int) ([]dispatch.RetentionRoot, error) {
			var roots []dispatch.RetentionRoot
			err := tx.query(`SELECT rowid, id, state, created_at FROM calls
				WHERE rowid > ? AND parent_id IS NULL ORDER BY rowid LIMIT ?`, []any{after, n},
				func(row []driver.Value) error {
					roots = append(roots, dispatch.RetentionRoot{Seq: asInt(row[0]), ID: asString(row[1]),
						State: dispatch.State(asInt(row[2])), CreatedAt: fromNanos(asInt(row[3]))})
					return nil
				})
			return roots, err
		})
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := deleteTree(tx, id); err != nil {
				return err
			}
		}
		deleted = len(ids)
		s.nextMark[rule] = mark
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	s.retentionMark[rule] = s.nextMark[rule]
	return deleted, nil
}

// gatherRange selects the children of call ?1's gather ?2 by their ids
// (see descendants).
const gatherRange = `id > ?1 || '.' || ?2 || '.' AND id < ?1 || '.' || ?2 || '/' AND parent_id = ?1 AND gather = ?2`

// descendants selects every descendant of call ?1 by its id: a child's id
// is its parent's followed by ".<gather>.<index>", so a call's descendants
// are the ids that start with its own and a dot, one range of the primary
// key ('/' follows '.'). No index of children by parent is needed.
const descendants = `(id > ?1 || '.' AND id < ?1 || '/' AND parent_id IS NOT NULL)`

// deleteTree deletes a call, its descendants, their attempts and the
// call's dedup key.
func deleteTree(tx *wtx, id string) error {
	if _, err := tx.exec(`DELETE FROM attempts WHERE call_id = ?1 OR (call_id > ?1 || '.' AND call_id < ?1 || '/')`, id); err != nil {
		return err
	}
	if _, err := tx.exec(`DELETE FROM dedup WHERE call_id = ?`, id); err != nil {
		return err
	}
	if _, err := tx.exec(`DELETE FROM calls WHERE `+descendants, id); err != nil {
		return err
	}
	_, err := tx.exec(`DELETE FROM calls WHERE id = ?`, id)
	return err
}

// CallCounts implements dispatch.Store.
func (s *Store) CallCounts(ctx context.Context) ([]dispatch.CallCount, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT function, state, count(*) FROM calls GROUP BY function, state ORDER BY function, state`)
	if err != nil {
		return nil, fmt.Errorf("count calls: %w", err)
	}
	defer rows.Close()
	var out []dispatch.CallCount
	for rows.Next() {
		var c dispatch.CallCount
		var state int
		if err := rows.Scan(&c.Function, &state, &c.N); err != nil {
			return nil, fmt.Errorf("count calls: %w", err)
		}
		c.State = dispatch.State(state)
		out = append(out, c)
	}
	return out, rows.Err()
}

// CallBacklog implements dispatch.Store with calls_runnable, the partial
// index of pending calls by key.
func (s *Store) CallBacklog(ctx context.Context) ([]dispatch.KeyCount, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT key, count(*) FROM calls INDEXED BY calls_runnable
		WHERE state = 0 GROUP BY key ORDER BY key`)
	if err != nil {
		return nil, fmt.Errorf("count backlog: %w", err)
	}
	defer rows.Close()
	var out []dispatch.KeyCount
	for rows.Next() {
		var c dispatch.KeyCount
		if err := rows.Scan(&c.Key, &c.N); err != nil {
			return nil, fmt.Errorf("count backlog: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
