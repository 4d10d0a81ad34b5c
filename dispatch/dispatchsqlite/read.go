package dispatchsqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

var callColumns = `id, function, key, input, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	` + parentColumn + `, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, ` + metaColumn + `,
	order_key, out_of_order`

// parentOf reads the parent id of the row of table t. A child of a
// top-level call stores ” (its parent is its id up to the first dot: a
// child's id is its parent's, a dot, its gather, a dot and its index), which
// saves the 36 bytes of a UUID in every delivery's row; deeper descendants
// store theirs, and top-level calls NULL.
func parentOf(t string) string {
	return `CASE ` + t + `.parent_id WHEN '' THEN substr(` + t + `.id, 1, instr(` + t + `.id, '.') - 1) ELSE ` + t + `.parent_id END`
}

// parentColumn is parentOf the calls table.
var parentColumn = parentOf("calls")

// metaColumn reads a call's Meta. A child's is its parent's (dispatch.Call.Meta:
// a child starts with its parent's, and nothing changes it), so that of every
// call is its top-level call's: only top-level calls store it, and a child,
// whose id starts with its root's id and a dot, reads its root's by primary
// key. A child stored before this (with a copy) reads its own.
const metaColumn = `CASE WHEN meta IS NOT NULL OR parent_id IS NULL THEN meta
	ELSE (SELECT r.meta FROM calls r WHERE r.id = substr(calls.id, 1, instr(calls.id, '.') - 1)) END`

// scanCall scans a row of callColumns, or of childColumns (no input) when
// input is false.
func scanCall(scan func(...any) error, input bool) (*dispatch.Call, error) {
	var c dispatch.Call
	var runAfter, budget, created, updated int64
	var leaseExpires sql.NullInt64
	var leaseOwner, parent, errText, tag, orderKey sql.NullString
	var outOfOrder sql.NullBool
	var state, status int
	dest := []any{&c.ID, &c.Function, &c.Key}
	if input {
		dest = append(dest, &c.Input)
	}
	dest = append(dest, &state, &c.Attempt, &c.Failures, &runAfter, &budget, &leaseOwner, &leaseExpires, &parent,
		&c.Gather, &c.Index, &c.Gathers, &c.Waiting, &c.Output, &errText, &status, &created, &updated, &tag, &c.Meta,
		&orderKey, &outOfOrder)
	if err := scan(dest...); err != nil {
		return nil, err
	}
	c.State, c.Status = dispatch.State(state), dispatch.Status(status)
	c.RunAfter, c.BudgetStart = fromNanos(orElse(runAfter, updated)), fromNanos(orElse(budget, created))
	c.CreatedAt, c.UpdatedAt = fromNanos(created), fromNanos(updated)
	c.LeaseOwner, c.ParentID, c.Error, c.Tag = leaseOwner.String, parent.String, errText.String, tag.String
	c.OrderKey, c.OutOfOrder = orderKey.String, outOfOrder.Bool
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
		return s.plannedCall(ctx, id)
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
	calls, err := scanCallRows(rows)
	if err != nil {
		return nil, fmt.Errorf("list children: %w", err)
	}
	for _, c := range calls {
		c.ParentID = parentID
	}
	// Local calls running now have no row yet: their parent's plan says
	// what they are.
	lp, err := s.localParent(ctx, parentID)
	if err != nil || lp == nil {
		return calls, err
	}
	have := make(map[string]bool, len(calls))
	for _, c := range calls {
		have[c.ID] = true
	}
	planned, err := storeutil.PlannedCalls(lp, func(id string) bool { return have[id] }, false)
	if err != nil {
		return nil, fmt.Errorf("list children: %w", err)
	}
	calls = append(calls, planned...)
	slices.SortFunc(calls, func(a, b *dispatch.Call) int {
		return cmp.Or(cmp.Compare(a.Gather, b.Gather), cmp.Compare(a.Index, b.Index))
	})
	return calls, nil
}

// localParent returns a parent that holds a plan of local calls, nil if it
// holds none (or does not exist).
func (s *Store) localParent(ctx context.Context, id string) (*storeutil.LocalParent, error) {
	lp := &storeutil.LocalParent{ID: id}
	var expires int64
	err := s.rdb.QueryRowContext(ctx, `SELECT plan, `+metaColumn+`, lease_owner, lease_expires FROM calls
		WHERE id = ? AND plan IS NOT NULL`, id).Scan(&lp.Plan, &lp.Meta, &lp.LeaseOwner, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read a plan of local calls: %w", err)
	}
	lp.LeaseExpires = fromNanos(expires)
	return lp, nil
}

// plannedCall returns a local call that has no row yet, from its parent's
// plan, or ErrNotFound.
func (s *Store) plannedCall(ctx context.Context, id string) (*dispatch.Call, error) {
	parent, _, _, ok := storeutil.SplitChildID(id)
	if !ok {
		return nil, dispatch.ErrNotFound
	}
	lp, err := s.localParent(ctx, parent)
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	if lp == nil {
		return nil, dispatch.ErrNotFound
	}
	planned, err := storeutil.PlannedCalls(lp, nil, true)
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	for _, c := range planned {
		if c.ID == id {
			// It may have got its row since the first read.
			if row, err := scanCall(s.getStmt.QueryRowContext(ctx, id).Scan, true); err == nil {
				return row, nil
			}
			return c, nil
		}
	}
	return nil, dispatch.ErrNotFound
}

// plannedCalls returns the local calls of every plan that have no row yet,
// ordered by id, with keep deciding which to return: for listings and
// counts, which must show what runs now.
func (s *Store) plannedCalls(ctx context.Context, keep func(*dispatch.Call) bool) ([]*dispatch.Call, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, plan, `+metaColumn+`, lease_owner, lease_expires FROM calls INDEXED BY calls_leased
		WHERE lease_owner IS NOT NULL AND plan IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	var parents []*storeutil.LocalParent
	for rows.Next() {
		lp := &storeutil.LocalParent{}
		var expires int64
		if err := rows.Scan(&lp.ID, &lp.Plan, &lp.Meta, &lp.LeaseOwner, &expires); err != nil {
			rows.Close()
			return nil, err
		}
		lp.LeaseExpires = fromNanos(expires)
		parents = append(parents, lp)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []*dispatch.Call
	for _, lp := range parents {
		planned, err := storeutil.PlannedCalls(lp, nil, false)
		if err != nil {
			return nil, err
		}
		var kept []*dispatch.Call
		for _, c := range planned {
			if keep(c) {
				kept = append(kept, c)
			}
		}
		if len(kept) == 0 {
			continue
		}
		// Those that got their row since are listed from it.
		have := make(map[string]bool)
		crow, err := s.rdb.QueryContext(ctx, `SELECT id FROM calls WHERE `+childrenRange, lp.ID)
		if err != nil {
			return nil, err
		}
		for crow.Next() {
			var id string
			if err := crow.Scan(&id); err != nil {
				crow.Close()
				return nil, err
			}
			have[id] = true
		}
		crow.Close()
		for _, c := range kept {
			if !have[c.ID] {
				out = append(out, c)
			}
		}
	}
	slices.SortFunc(out, func(a, b *dispatch.Call) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// scanCallRows reads the calls of rows, selected as childColumns (no
// input), and closes rows.
func scanCallRows(rows *sql.Rows) ([]*dispatch.Call, error) {
	defer rows.Close()
	var calls []*dispatch.Call
	for rows.Next() {
		c, err := scanCall(rows.Scan, false)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return calls, nil
}

// childColumns are those of callColumns but the input, which a parent never
// needs and which is the bulk of a row.
var childColumns = `id, function, key, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	` + parentColumn + `, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, ` + metaColumn + `,
	order_key, out_of_order`

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
	calls, err := scanCallRows(rows)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	if p.State != dispatch.StateRunning {
		return calls, nil
	}
	planned, err := s.plannedCalls(ctx, func(c *dispatch.Call) bool { return storeutil.Listed(p, c) })
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	return storeutil.MergeByID(calls, planned, max(p.Limit, 0)), nil
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count calls: %w", err)
	}
	rows.Close()
	planned, err := s.plannedCalls(ctx, func(*dispatch.Call) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("count calls: %w", err)
	}
	return storeutil.AddCounts(out, planned), nil
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

// A time column that holds what another one holds is stored as 0, which
// SQLite writes in no bytes at all (an integer of 0 or 1 is all header),
// instead of 8 (issue 12: 4 KiB events to 10 destinations took 7,825 B on
// disk per event against 7,325 allowed):
//
//   - budget_start is 0 when the budget starts at the call's creation
//     (always, but for a re-driven call): it reads as created_at;
//   - run_after is 0 once a call is final (its finish stored run_after =
//     updated_at = now): it reads as updated_at. A final call that is
//     re-driven or resumed gets a run_after of its own again.
//
// Rows stored before keep their explicit values, which read the same: no
// migration rewrites them (it would rewrite every row of the table, in one
// transaction, to free 16 bytes in each).
//
// orElse reads such a column: v, or def when v is 0.
func orElse(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// orderHeadsSQL walks calls_order for one key, from the order key ?2 on:
// each row that is the first of its sequence (the lowest id not final) is
// a head; ?3 keeps only heads that failed before (blocked ones).
var orderHeadsSQL = `SELECT c.order_key, c.id, c.function, c.state, c.attempt, c.failures, c.run_after, c.error, c.status,
		c.created_at, c.updated_at, ` + parentOf("c") + `,
		(SELECT count(*) FROM calls q INDEXED BY calls_order WHERE q.key = c.key AND q.order_key = c.order_key
			AND q.state IN (0, 1, 2) AND q.id > c.id)
	FROM calls c INDEXED BY calls_order
	WHERE c.key = ?1 AND c.order_key > ?2 AND c.order_key IS NOT NULL AND c.state IN (0, 1, 2)
	AND (?3 = 0 OR (c.failures > 0 AND c.state IN (0, 1)))
	AND c.id = (SELECT min(h.id) FROM calls h INDEXED BY calls_order
		WHERE h.key = c.key AND h.order_key = c.order_key AND h.state IN (0, 1, 2))
	ORDER BY c.order_key
	LIMIT ?4`

// CallOrderHeads implements dispatch.Store.
func (s *Store) CallOrderHeads(ctx context.Context, p *dispatch.CallOrderHeadsParams) ([]*dispatch.OrderHead, error) {
	rows, err := s.rdb.QueryContext(ctx, orderHeadsSQL, p.Key, p.After, p.Blocked, p.Limit)
	if err != nil {
		return nil, fmt.Errorf("list sequences: %w", err)
	}
	defer rows.Close()
	var out []*dispatch.OrderHead
	for rows.Next() {
		h := &dispatch.OrderHead{Head: &dispatch.Call{Key: p.Key}}
		c := h.Head
		var state, status int
		var runAfter, created, updated int64
		var errText, parent sql.NullString
		if err := rows.Scan(&h.OrderKey, &c.ID, &c.Function, &state, &c.Attempt, &c.Failures, &runAfter, &errText,
			&status, &created, &updated, &parent, &h.Queued); err != nil {
			return nil, fmt.Errorf("list sequences: %w", err)
		}
		c.OrderKey, c.State, c.Status, c.Error, c.ParentID = h.OrderKey, dispatch.State(state), dispatch.Status(status),
			errText.String, parent.String
		c.RunAfter, c.CreatedAt, c.UpdatedAt = fromNanos(orElse(runAfter, updated)), fromNanos(created), fromNanos(updated)
		out = append(out, h)
	}
	return out, rows.Err()
}
