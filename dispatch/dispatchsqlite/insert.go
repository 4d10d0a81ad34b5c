package dispatchsqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// insertChunk is how many rows one INSERT statement carries. Fewer, larger
// statements cut the per-statement cost that dominates small rows.
const insertChunk = 64

const insertColumns = 26

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
				"budget_start, parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta, plan, order_key, out_of_order) VALUES ")
			for i := range rows {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
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
// plans holds, by parent id, the plans of local calls (see storeutil.SplitLocal).
func insert(tx *wtx, calls []*dispatch.Call, orIgnore bool, plans map[string]*storeutil.LocalPlan) (int64, error) {
	var inserted int64
	args := make([]any, 0, min(len(calls), insertChunk)*insertColumns)
	for start := 0; start < len(calls); start += insertChunk {
		chunk := calls[start:min(start+insertChunk, len(calls))]
		args = args[:0]
		for _, c := range chunk {
			var parent, owner, expires, output, errText, tag, meta, plan, orderKey, outOfOrder any
			if c.ParentID != "" {
				parent = c.ParentID
				if !strings.Contains(c.ParentID, ".") && strings.HasPrefix(c.ID, c.ParentID+".") {
					parent = "" // a child of a top-level call: see parentColumn
				}
			}
			if c.State == dispatch.StateRunning {
				owner, expires = c.LeaseOwner, c.LeaseExpires.UnixNano()
			}
			if lp := plans[c.ID]; lp != nil {
				owner, expires, plan = lp.Owner, lp.Expires, lp.Plan
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
			if c.OrderKey != "" {
				orderKey = c.OrderKey
			}
			if c.OutOfOrder {
				outOfOrder = 1
			}
			if len(c.Meta) > 0 && c.ParentID == "" {
				meta = c.Meta // a child's is its root's: see metaColumn
			}
			created, updated, budget := c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), c.BudgetStart.UnixNano()
			if c.UpdatedAt.IsZero() {
				updated = created
			}
			if c.BudgetStart.IsZero() || budget == created {
				budget = 0 // see sameAsCreated
			}
			runAfter := c.RunAfter.UnixNano()
			if c.State.Final() && runAfter == updated {
				runAfter = 0 // see orElse
			}
			args = append(args, c.ID, c.Function, c.Key, c.Input, int(c.State), c.Attempt, c.Failures, owner, expires,
				runAfter, budget, parent, c.Gather, c.Index, c.Gathers, c.Waiting, output, errText, int(c.Status),
				created, updated, tag, meta, plan, orderKey, outOfOrder)
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
	stored, plans := storeutil.SplitLocal(calls)
	err := s.w.do(ctx, func(tx *wtx) error {
		rows := stored
		for i, c := range calls {
			ids[i] = c.ID
		}
		if deduping {
			var err error
			if rows, err = dedup(tx, calls, ids, p.DedupSince); err != nil {
				return err
			}
			rows = storeutil.WithoutLocal(rows)
		}
		rows, err := park(tx, rows)
		if err != nil {
			return err
		}
		_, err = insert(tx, rows, false, plans)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("insert calls: %w", err)
	}
	return ids, nil
}

// dedup resolves the dedup keys of an insert (see storeutil.ResolveDedup).
// The writer is the only one: a key read here cannot be taken meanwhile.
func dedup(tx *wtx, calls []*dispatch.Call, ids []string, since time.Time) ([]*dispatch.Call, error) {
	return storeutil.ResolveDedup(calls, ids, func(c *dispatch.Call) (string, error) {
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

// park returns calls with those that must wait for their turn in their
// sequence (dispatch.Call.OrderKey) replaced by parked copies (RunAfter
// dispatch.Parked): a pending call whose key and order key has a call not
// final stored already, or before it among calls (which come in id order).
// The calls given are left as they are, so that a replayed transaction
// decides again. Calls in no sequence cost a look at their OrderKey.
func park(tx *wtx, calls []*dispatch.Call) ([]*dispatch.Call, error) {
	var out []*dispatch.Call
	var seen map[[2]string]bool
	for i, c := range calls {
		if c.OrderKey == "" || c.State != dispatch.StatePending {
			continue
		}
		if out == nil {
			out = slices.Clone(calls)
			seen = make(map[[2]string]bool)
		}
		seq := [2]string{c.Key, c.OrderKey}
		wait := seen[seq]
		if !wait {
			seen[seq] = true
			_, err := tx.queryRow(`SELECT 1 FROM calls INDEXED BY calls_order
				WHERE key = ? AND order_key = ? AND state IN (0, 1, 2) LIMIT 1`, c.Key, c.OrderKey)
			switch {
			case err == nil:
				wait = true
			case !errors.Is(err, sql.ErrNoRows):
				return nil, err
			}
		}
		if wait {
			parked := *c
			parked.RunAfter = dispatch.Parked
			out[i] = &parked
		}
	}
	if out == nil {
		return calls, nil
	}
	return out, nil
}

// unparkSQL makes the first call not final of the sequence ?2 of the key
// of call ?1 runnable at ?3, if it is parked: run after a call of the
// sequence became final, in the same transaction.
var unparkSQL = `UPDATE calls SET run_after = ?3
	WHERE id = (SELECT o.id FROM calls o INDEXED BY calls_order
		WHERE o.key = (SELECT c.key FROM calls c WHERE c.id = ?1) AND o.order_key = ?2 AND o.state IN (0, 1, 2)
		ORDER BY o.id LIMIT 1)
	AND state = 0 AND run_after >= ` + strconv.FormatInt(dispatch.Parked.UnixNano(), 10)

// unpark runs unparkSQL for a finish that made an ordered call final.
func unpark(tx *wtx, p *dispatch.CallFinishParams) error {
	if p.OrderKey == "" || !p.State.Final() {
		return nil
	}
	_, err := tx.exec(unparkSQL, p.ID, p.OrderKey, p.Now.UnixNano())
	return err
}
