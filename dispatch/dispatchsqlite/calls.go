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

const insertColumns = 19

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
			b.WriteString("INTO calls (id, function, input, state, attempt, failures, lease_owner, lease_expires, run_after, " +
				"parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at) VALUES ")
			for i := range rows {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
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
			var parent, owner, expires, output, errText any
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
			created, updated := c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano()
			if c.UpdatedAt.IsZero() {
				updated = created
			}
			args = append(args, c.ID, c.Function, c.Input, int(c.State), c.Attempt, c.Failures, owner, expires,
				c.RunAfter.UnixNano(), parent, c.Gather, c.Index, c.Gathers, c.Waiting, output, errText, int(c.Status),
				created, updated)
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
func (s *Store) CallInsertMany(ctx context.Context, calls []*dispatch.Call) error {
	if len(calls) == 0 {
		return nil
	}
	err := s.w.do(ctx, func(tx *wtx) error {
		_, err := insert(tx, calls, false)
		return err
	})
	if err != nil {
		return fmt.Errorf("insert calls: %w", err)
	}
	return nil
}

const claimColumns = `id, function, input, attempt, failures, run_after, parent_id, gather, idx, gathers, created_at`

// claimed makes a running call of a row of claimColumns.
func claimed(row []driver.Value) *dispatch.Call {
	return &dispatch.Call{
		State:     dispatch.StateRunning,
		ID:        asString(row[0]),
		Function:  asString(row[1]),
		Input:     asBytes(row[2]),
		Attempt:   int(asInt(row[3])),
		Failures:  int(asInt(row[4])),
		RunAfter:  fromNanos(asInt(row[5])),
		ParentID:  asString(row[6]),
		Gather:    int(asInt(row[7])),
		Index:     int(asInt(row[8])),
		Gathers:   int(asInt(row[9])),
		CreatedAt: fromNanos(asInt(row[10])),
	}
}

func claimQuery(functions int) string {
	return `UPDATE calls SET state = 1, lease_owner = ?, lease_expires = ?, attempt = attempt + 1, updated_at = ?
	WHERE id IN (
		SELECT id FROM calls
		WHERE state = 0 AND run_after <= ? AND function IN (` + placeholders(functions) + `)
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
	args := make([]any, 0, 5+len(p.Functions))
	args = append(args, p.Owner, p.LeaseUntil.UnixNano(), now, now)
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
				waiting = (SELECT count(*) FROM calls WHERE parent_id = ?1 AND gather = ?2 AND state NOT IN (3, 4)),
				state = CASE WHEN (SELECT count(*) FROM calls WHERE parent_id = ?1 AND gather = ?2 AND state NOT IN (3, 4)) = 0 THEN 0 ELSE 2 END,
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
	if p.State != dispatch.StateDone {
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
		if p.ParentID == "" || !p.State.Final() {
			return nil
		}
		// Count the child off; the last one makes the parent runnable.
		n, err = tx.exec(`UPDATE calls SET waiting = waiting - 1, updated_at = ?
			WHERE id = ? AND state = 2 AND waiting > 1`, now, p.ParentID)
		if err != nil || n > 0 {
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

const callColumns = `id, function, input, state, attempt, failures, run_after, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at`

func scanCall(scan func(...any) error) (*dispatch.Call, error) {
	var c dispatch.Call
	var runAfter, created, updated int64
	var leaseExpires sql.NullInt64
	var leaseOwner, parent, errText sql.NullString
	var state, status int
	if err := scan(&c.ID, &c.Function, &c.Input, &state, &c.Attempt, &c.Failures, &runAfter,
		&leaseOwner, &leaseExpires, &parent, &c.Gather, &c.Index, &c.Gathers, &c.Waiting,
		&c.Output, &errText, &status, &created, &updated); err != nil {
		return nil, err
	}
	c.State, c.Status = dispatch.State(state), dispatch.Status(status)
	c.RunAfter, c.CreatedAt, c.UpdatedAt = fromNanos(runAfter), fromNanos(created), fromNanos(updated)
	c.LeaseOwner, c.ParentID, c.Error = leaseOwner.String, parent.String, errText.String
	if leaseExpires.Valid {
		c.LeaseExpires = fromNanos(leaseExpires.Int64)
	}
	return &c, nil
}

// CallGet implements dispatch.Store.
func (s *Store) CallGet(ctx context.Context, id string) (*dispatch.Call, error) {
	row := s.getStmt.QueryRowContext(ctx, id)
	c, err := scanCall(row.Scan)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, dispatch.ErrCallNotFound
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
		c, err := scanChild(rows.Scan)
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
const childColumns = `id, function, state, attempt, failures, run_after, lease_owner, lease_expires,
	gather, idx, gathers, waiting, output, error, status, created_at, updated_at`

func scanChild(scan func(...any) error) (*dispatch.Call, error) {
	var c dispatch.Call
	var runAfter, created, updated int64
	var leaseExpires sql.NullInt64
	var leaseOwner, errText sql.NullString
	var state, status int
	if err := scan(&c.ID, &c.Function, &state, &c.Attempt, &c.Failures, &runAfter, &leaseOwner, &leaseExpires,
		&c.Gather, &c.Index, &c.Gathers, &c.Waiting, &c.Output, &errText, &status, &created, &updated); err != nil {
		return nil, err
	}
	c.State, c.Status = dispatch.State(state), dispatch.Status(status)
	c.RunAfter, c.CreatedAt, c.UpdatedAt = fromNanos(runAfter), fromNanos(created), fromNanos(updated)
	c.LeaseOwner, c.Error = leaseOwner.String, errText.String
	if leaseExpires.Valid {
		c.LeaseExpires = fromNanos(leaseExpires.Int64)
	}
	return &c, nil
}

// CallDeleteFinished implements dispatch.Store.
//
// It walks top-level calls in rowid order, which is the order they were
// stored in and so, near enough, of creation, from a mark kept in memory:
// the rowid before which nothing is left to delete by this rule. The mark
// stops at the first call that is not finished yet, so that it is seen again
// once it is; calls kept by the rule (the other final state) are passed. An
// index on age would find the calls directly, but every event would pay for
// it on the write path, where this pays on a pass a minute.
func (s *Store) CallDeleteFinished(ctx context.Context, p *dispatch.CallDeleteFinishedParams) (int, error) {
	target := dispatch.StateDone
	rule := 0
	if p.Failed {
		target, rule = dispatch.StateFailed, 1
	}
	before := p.Before.UnixNano()
	var deleted int
	err := s.w.do(ctx, func(tx *wtx) error {
		deleted = 0
		mark := s.retentionMark[rule]
		if row, err := tx.queryRow(`SELECT COALESCE(MAX(rowid), 0) FROM calls`); err != nil {
			return err
		} else if asInt(row[0]) < mark {
			mark = 0 // the table emptied and rowids start again
		}
		type root struct {
			rowid int64
			id    string
			state dispatch.State
		}
		for deleted < p.Limit {
			var roots []root
			old := true
			err := tx.query(`SELECT rowid, id, state, created_at FROM calls
				WHERE rowid > ? AND parent_id IS NULL ORDER BY rowid LIMIT 500`, []any{mark},
				func(row []driver.Value) error {
					if asInt(row[3]) >= before {
						old = false
					}
					if old {
						roots = append(roots, root{asInt(row[0]), asString(row[1]), dispatch.State(asInt(row[2]))})
					}
					return nil
				})
			if err != nil {
				return err
			}
			blocked := false
			for _, r := range roots {
				switch {
				case r.state == target:
					if _, err := tx.exec(`WITH RECURSIVE tree(id) AS (
							SELECT ?
							UNION ALL
							SELECT c.id FROM calls c JOIN tree t ON c.parent_id = t.id
						)
						DELETE FROM calls WHERE id IN (SELECT id FROM tree)`, r.id); err != nil {
						return err
					}
					deleted++
				case !r.state.Final():
					blocked = true
				}
				if !blocked {
					mark = r.rowid
				}
				if deleted == p.Limit {
					break
				}
			}
			if len(roots) < 500 || !old {
				break
			}
		}
		s.nextMark[rule] = mark
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	s.retentionMark[rule] = s.nextMark[rule]
	return deleted, nil
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

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
