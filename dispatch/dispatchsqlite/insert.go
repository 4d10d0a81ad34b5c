package dispatchsqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
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

// insertColumn is a column an insert writes, and the literal an INSERT
// statement holds in its place when no row of its chunk has another value
// for it ("" for a column every row has its own value of). Most of a typical
// row's values are these (an event has no lease, no output, no parent...),
// and every value bound costs modernc's driver several calls into SQLite
// (each taking the connection's mutex), more than the rest of the row: a
// chunk binds only the columns some row of it needs. The literal stores
// exactly what binding the value would (NULL for nil, integer 0 for 0, text
// the empty text for ""), so reads cannot tell the two apart.
type insertColumn struct {
	name    string
	literal literal
}

type literal uint8

const (
	bound     literal = iota // no literal: always bound
	nullValue                // NULL: nil, or a nil []byte
	zero                     // 0: int64(0)
	emptyText                // '': ""
)

var insertCols = [...]insertColumn{
	{"id", bound}, {"function", bound}, {"key", emptyText}, {"input", bound}, {"state", zero},
	{"attempt", zero}, {"failures", zero}, {"lease_owner", nullValue}, {"lease_expires", nullValue},
	{"run_after", zero}, {"budget_start", zero}, {"parent_id", nullValue}, {"gather", zero}, {"idx", zero},
	{"gathers", zero}, {"waiting", zero}, {"output", nullValue}, {"error", nullValue}, {"status", zero},
	{"created_at", bound}, {"updated_at", bound}, {"tag", nullValue}, {"meta", nullValue}, {"plan", nullValue},
	{"order_key", nullValue}, {"out_of_order", nullValue},
}

const insertColumns = len(insertCols)

// allColumns is the mask (bit i: insertCols[i] is bound) of the wide
// statement, which binds every column.
const allColumns = uint32(1)<<insertColumns - 1

// is reports whether v, bound, stores what l does.
func (l literal) is(v driver.Value) bool {
	switch l {
	case nullValue:
		switch x := v.(type) {
		case nil:
			return true
		case []byte:
			return x == nil // modernc binds a nil []byte as NULL
		}
	case zero:
		x, ok := v.(int64)
		return ok && x == 0
	case emptyText:
		x, ok := v.(string)
		return ok && x == ""
	}
	return false
}

// boundColumns is the mask of the columns of row that need their value
// bound.
func boundColumns(row []driver.Value) uint32 {
	var mask uint32
	for i, v := range row {
		if !insertCols[i].literal.is(v) {
			mask |= 1 << i
		}
	}
	return mask
}

// maxNarrowInserts bounds the INSERT statements of fewer than every column
// a writer prepares: a statement of 64 rows holds up to 200 KiB of SQLite's
// memory (all 64 sizes of one column set, 4-6 MiB). Past it, a chunk of a shape not prepared yet is written by the
// wide statement (2*insertChunk of them at most, as before). fanout's loads
// use a few column sets: its events, its stored deliveries, its local
// calls' rows.
const maxNarrowInserts = 128

// insertShape names an INSERT statement: the columns it binds, its rows,
// whether it is OR IGNORE.
type insertShape struct {
	mask     uint32
	rows     int
	orIgnore bool
}

// insertQuery returns the INSERT statement of rows rows that binds the
// columns of mask, or all of them, and the mask it binds. Statements are
// built once per writer.
func (tx *wtx) insertQuery(rows int, orIgnore bool, mask uint32) (string, uint32) {
	w := tx.w
	if w.wideInserts {
		mask = allColumns
	}
	shape := insertShape{mask, rows, orIgnore}
	if q, ok := w.inserts[shape]; ok {
		return q, mask
	}
	if mask != allColumns {
		if w.narrowInserts >= maxNarrowInserts {
			return tx.insertQuery(rows, orIgnore, allColumns)
		}
		w.narrowInserts++
	}
	var b strings.Builder
	b.WriteString("INSERT ")
	if orIgnore {
		b.WriteString("OR IGNORE ")
	}
	b.WriteString("INTO calls (")
	for i, c := range insertCols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.name)
	}
	b.WriteString(") VALUES ")
	for r := range rows {
		if r > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for i, c := range insertCols {
			if i > 0 {
				b.WriteByte(',')
			}
			switch {
			case mask&(1<<i) != 0:
				b.WriteByte('?')
			case c.literal == nullValue:
				b.WriteString("NULL")
			case c.literal == zero:
				b.WriteByte('0')
			case c.literal == emptyText:
				b.WriteString("''")
			}
		}
		b.WriteByte(')')
	}
	q := b.String()
	w.inserts[shape] = q
	return q, mask
}

// insert writes calls in chunks and returns how many rows were inserted.
// plans holds, by parent id, the plans of local calls (see storeutil.SplitLocal).
func insert(tx *wtx, calls []*dispatch.Call, orIgnore bool, plans map[string]*storeutil.LocalPlan) (int64, error) {
	var inserted int64
	vals := make([]driver.Value, 0, min(len(calls), insertChunk)*insertColumns)
	for start := 0; start < len(calls); start += insertChunk {
		chunk := calls[start:min(start+insertChunk, len(calls))]
		vals = vals[:0]
		var mask uint32
		for _, c := range chunk {
			row := len(vals)
			vals = appendRow(vals, c, plans[c.ID])
			mask |= boundColumns(vals[row:])
		}
		query, mask := tx.insertQuery(len(chunk), orIgnore, mask)
		args := tx.args[:0]
		for i, v := range vals {
			if mask&(1<<(i%insertColumns)) != 0 {
				args = append(args, driver.NamedValue{Ordinal: len(args) + 1, Value: v})
			}
		}
		tx.args = args
		n, err := tx.execNamed(query, args)
		if err != nil {
			return inserted, err
		}
		inserted += n
	}
	return inserted, nil
}

// appendRow appends the values of c's row, in the order of insertCols, as
// the driver binds them (int64, string, []byte or nil). lp is c's plan if c
// is a parent of local calls.
func appendRow(vals []driver.Value, c *dispatch.Call, lp *storeutil.LocalPlan) []driver.Value {
	var parent, owner, expires, output, errText, tag, meta, plan, orderKey, outOfOrder driver.Value
	if c.ParentID != "" {
		parent = c.ParentID
		if !strings.Contains(c.ParentID, ".") && strings.HasPrefix(c.ID, c.ParentID+".") {
			parent = "" // a child of a top-level call: see parentColumn
		}
	}
	if c.State == dispatch.StateRunning {
		owner, expires = c.LeaseOwner, c.LeaseExpires.UnixNano()
	}
	if lp != nil {
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
		outOfOrder = int64(1)
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
	return append(vals, c.ID, c.Function, c.Key, c.Input, int64(c.State), int64(c.Attempt), int64(c.Failures), owner,
		expires, runAfter, budget, parent, int64(c.Gather), int64(c.Index), int64(c.Gathers), int64(c.Waiting), output,
		errText, int64(c.Status), created, updated, tag, meta, plan, orderKey, outOfOrder)
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
