package dispatchpg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// insertSQL stores rows given as one array per column: one statement, and
// one round trip, whatever the number of calls.
const insertSQL = `INSERT INTO calls (id, function, key, input, state, attempt, failures, lease_owner, lease_expires,
		run_after, budget_start, parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at,
		tag, meta, plan, plan_total, order_key, out_of_order)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::smallint[], $6::integer[], $7::integer[],
		$8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::integer[], $14::integer[],
		$15::integer[], $16::integer[], $17::bytea[], $18::text[], $19::smallint[], $20::bigint[], $21::bigint[],
		$22::text[], $23::bytea[], $24::bytea[], $25::integer[], $26::text[], $27::boolean[])`

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
	// plans and planTotals are, on a parent of local calls, its plan
	// (see storeutil.SplitLocal); nil elsewhere.
	plans      [][]byte
	planTotals []*int32
	// orderKeys and outOfOrder are dispatch.Call's OrderKey and
	// OutOfOrder, nil when empty; sequences are the distinct sequences
	// (key, order key) of the pending calls that carry one, and ordered
	// their ids: those the insert may have to park (see parkSQL).
	orderKeys  []*string
	outOfOrder []*bool
	sequences  []string
	ordered    []string
	// runnable counts the rows that anyone may claim now.
	runnable int
}

// toColumns lays calls out as insertSQL's arrays; plans holds, by parent id,
// the plans of local calls (splitLocal), which calls must not hold.
func toColumns(calls []*dispatch.Call, plans map[string]*storeutil.LocalPlan, now time.Time) *columns {
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
		plans: make([][]byte, n), planTotals: make([]*int32, n),
		orderKeys: make([]*string, n), outOfOrder: make([]*bool, n),
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
		if lp := plans[call.ID]; lp != nil {
			// The parent of local calls: leased to their owner while
			// they run (its state is waiting).
			owner, exp, total := lp.Owner, lp.Expires, lp.Total
			c.owners[i], c.expires[i], c.plans[i], c.planTotals[i] = &owner, &exp, lp.Plan, &total
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
		if call.OrderKey != "" {
			k := call.OrderKey
			c.orderKeys[i] = &k
			if call.State == dispatch.StatePending {
				c.ordered = append(c.ordered, call.ID)
				c.sequences = append(c.sequences, sequence(call.Key, call.OrderKey))
			}
		}
		if call.OutOfOrder {
			t := true
			c.outOfOrder[i] = &t
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
		if call.State == dispatch.StatePending && !call.RunAfter.After(now) && call.OrderKey == "" {
			c.runnable++
		}
	}
	return c
}

// add appends o's rows to c's.
func (c *columns) add(o *columns) {
	c.ids, c.functions, c.keys = append(c.ids, o.ids...), append(c.functions, o.functions...), append(c.keys, o.keys...)
	c.inputs, c.outputs = append(c.inputs, o.inputs...), append(c.outputs, o.outputs...)
	c.states, c.statuses = append(c.states, o.states...), append(c.statuses, o.statuses...)
	c.attempts, c.failures = append(c.attempts, o.attempts...), append(c.failures, o.failures...)
	c.owners, c.parents, c.errs = append(c.owners, o.owners...), append(c.parents, o.parents...), append(c.errs, o.errs...)
	c.expires = append(c.expires, o.expires...)
	c.runAfter, c.budget = append(c.runAfter, o.runAfter...), append(c.budget, o.budget...)
	c.gather, c.idx = append(c.gather, o.gather...), append(c.idx, o.idx...)
	c.gathers, c.wt = append(c.gathers, o.gathers...), append(c.wt, o.wt...)
	c.created, c.updated = append(c.created, o.created...), append(c.updated, o.updated...)
	c.tags, c.metas = append(c.tags, o.tags...), append(c.metas, o.metas...)
	c.plans, c.planTotals = append(c.plans, o.plans...), append(c.planTotals, o.planTotals...)
	c.orderKeys, c.outOfOrder = append(c.orderKeys, o.orderKeys...), append(c.outOfOrder, o.outOfOrder...)
	c.sequences, c.ordered = append(c.sequences, o.sequences...), append(c.ordered, o.ordered...)
	c.runnable += o.runnable
}

func (c *columns) args() []any {
	return []any{c.ids, c.functions, c.keys, c.inputs, c.states, c.attempts, c.failures, c.owners, c.expires,
		c.runAfter, c.budget, c.parents, c.gather, c.idx, c.gathers, c.wt, c.outputs, c.errs, c.statuses,
		c.created, c.updated, c.tags, c.metas, c.plans, c.planTotals, c.orderKeys, c.outOfOrder}
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
	// Local calls get no row: their parents keep their plans.
	rows, plans := storeutil.SplitLocal(calls)
	if len(rows) == 0 {
		return ids, nil
	}
	// first is the first row to store: it exists if and only if the insert
	// committed, which is what a commit whose answer was lost needs to know.
	first := rows[0].ID
	exists := func(ctx context.Context, conn *pgxpool.Conn) (bool, error) {
		var ok bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM calls WHERE id = $1)`, first).Scan(&ok)
		return ok, err
	}
	var err error
	if !deduping {
		// Group-committed with whatever else is being written.
		// The writer merges the rows of every insert of a batch into one
		// statement (wop.rows).
		cols := toColumns(rows, plans, time.Now())
		op := &wop{key: calls[0].ID, notify: cols.runnable > 0 || len(cols.ordered) > 0, verify: exists, rows: cols}
		if len(cols.ordered) > 0 {
			// Its own statement, followed by the parking of its ordered
			// calls (in the same group commit).
			op.rows = nil
			op.queue = func(b *pgx.Batch) {
				b.Queue(insertSQL, cols.args()...).Exec(func(tag pgconn.CommandTag) error {
					op.wrote("calls inserted", tag.RowsAffected())
					return nil
				})
				queuePark(b, cols)
			}
		}
		err = s.w.do(ctx, op)
	} else {
		stored := -1 // rows to store, once known
		insert := func(ctx context.Context, tx *rtx) error {
			stored = -1
			for i, c := range calls {
				ids[i] = c.ID
			}
			rows, err := dedup(ctx, tx, calls, ids, p.DedupSince)
			if err != nil {
				return err
			}
			rows = storeutil.WithoutLocal(rows)
			if stored = len(rows); stored == 0 {
				return nil
			}
			first = rows[0].ID
			cols := toColumns(rows, plans, time.Now())
			if _, err := tx.Exec(ctx, insertSQL, cols.args()...); err != nil {
				return err
			}
			if len(cols.ordered) > 0 {
				if _, err := tx.Exec(ctx, lockSQL, cols.sequences); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, parkSQL, cols.ordered); err != nil {
					return err
				}
			}
			if cols.runnable > 0 || len(cols.ordered) > 0 {
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

// dedup resolves the dedup keys of an insert (see storeutil.ResolveDedup).
// Two processes inserting the same key at once are serialized by the key's
// row: the second waits for the first to commit, then finds its key.
func dedup(ctx context.Context, tx *rtx, calls []*dispatch.Call, ids []string, since time.Time) ([]*dispatch.Call, error) {
	return storeutil.ResolveDedup(calls, ids, func(c *dispatch.Call) (string, error) {
		var holder string
		err := tx.QueryRow(ctx, `INSERT INTO dedup (key, call_id, created_at) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE SET call_id = excluded.call_id, created_at = excluded.created_at
			WHERE dedup.created_at < $4
			RETURNING call_id`, c.DedupKey, c.ID, c.CreatedAt.UnixNano(), since.UnixNano()).Scan(&holder)
		if !errors.Is(err, pgx.ErrNoRows) {
			if err == nil {
				tx.wrote("dedup inserted", 1) // or replaced one that expired
			}
			return holder, err
		}
		// The key is taken within the window: this call repeats that one.
		err = tx.QueryRow(ctx, `SELECT call_id FROM dedup WHERE key = $1`, c.DedupKey).Scan(&holder)
		return holder, err
	})
}

// Ordered calls (dispatch.Call.OrderKey).
//
// Whether a new call is its sequence's head, and which call a finish
// unparks, depends on the other calls of its sequence, which other
// transactions (another replica's insert or finish) may be writing at
// that moment, unseen under READ COMMITTED. So each such operation takes
// a transaction-level advisory lock on the sequence, after its own
// writes, and then looks in a statement of its own, whose snapshot is
// taken once the lock is held: it sees every write of whoever held the
// lock before, and whoever comes after sees its writes. An insert and a
// finish of one sequence so never both miss each other (a call parked
// behind a head that no one will unpark, or two heads).

// sequence is the advisory lock's name of a sequence.
func sequence(key, orderKey string) string { return key + "\x1f" + orderKey }

// lockSQL takes the advisory locks of the sequences $1, in the order of
// their hashes (a collision of two sequences serializes them, nothing
// more).
const lockSQL = `SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(s, 0) AS h
	FROM unnest($1::text[]) s ORDER BY 1) l`

// parkedNanos is dispatch.Parked as stored.
var parkedNanos = strconv.FormatInt(dispatch.Parked.UnixNano(), 10)

// parkSQL parks the pending calls among $1 (just inserted) that have a
// call of their sequence not final before them: stored before, or with a
// lower id.
var parkSQL = `UPDATE calls c SET run_after = ` + parkedNanos + `
	WHERE c.id = ANY($1::text[]) AND c.state = 0 AND c.order_key IS NOT NULL AND EXISTS (
		SELECT 1 FROM calls o WHERE o.key = c.key AND o.order_key = c.order_key AND o.state IN (0, 1, 2)
		AND o.id <> c.id AND (o.id < c.id OR o.id <> ALL($1::text[])))`

// queuePark queues, after an insert of cols, the locks of their sequences
// and the parking of their ordered calls.
func queuePark(b *pgx.Batch, cols *columns) {
	if len(cols.ordered) == 0 {
		return
	}
	b.Queue(lockSQL, cols.sequences)
	b.Queue(parkSQL, cols.ordered)
}

// unlockSQL takes the advisory lock of the sequence $2 of the key of call
// $1; unparkSQL then makes its first call not final runnable at $3 if it
// is parked: after a call of the sequence became final. Both are queued
// with the finish, before its answer is known: unparkSQL looks for call $1
// final at attempt $4, so that a finish refused as stale (an attempt taken
// over after its lease expired) unparks nothing while the call runs again
// (a call parked with a lower id than a running head would then run beside
// it).
const unlockSQL = `SELECT pg_advisory_xact_lock(hashtextextended((SELECT key FROM calls WHERE id = $1) || chr(31) || $2, 0))`

var unparkSQL = `UPDATE calls SET run_after = $3
	WHERE id = (SELECT o.id FROM calls o WHERE o.key = (SELECT c.key FROM calls c WHERE c.id = $1) AND o.order_key = $2
		AND o.state IN (0, 1, 2) ORDER BY o.id LIMIT 1)
	AND state = 0 AND run_after >= ` + parkedNanos + `
	AND EXISTS (SELECT 1 FROM calls f WHERE f.id = $1 AND f.state IN (3, 4) AND f.attempt = $4)`
