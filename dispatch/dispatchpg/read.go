package dispatchpg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

const callColumns = `id, function, key, input, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta, order_key, out_of_order`

// childColumns are those of callColumns but the input, which a parent never
// needs and which is the bulk of a row.
const childColumns = `id, function, key, state, attempt, failures, run_after, budget_start, lease_owner, lease_expires,
	parent_id, gather, idx, gathers, waiting, output, error, status, created_at, updated_at, tag, meta, order_key, out_of_order`

func scanCall(row pgx.Row, withInput bool) (*dispatch.Call, error) {
	var c dispatch.Call
	var runAfter, budget, created, updated int64
	var leaseExpires *int64
	var leaseOwner, parent, errText, tag, orderKey *string
	var outOfOrder *bool
	var state, status int16
	dest := []any{&c.ID, &c.Function, &c.Key, &c.Input, &state, &c.Attempt, &c.Failures, &runAfter, &budget,
		&leaseOwner, &leaseExpires, &parent, &c.Gather, &c.Index, &c.Gathers, &c.Waiting,
		&c.Output, &errText, &status, &created, &updated, &tag, &c.Meta, &orderKey, &outOfOrder}
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
	if orderKey != nil {
		c.OrderKey = *orderKey
	}
	c.OutOfOrder = outOfOrder != nil && *outOfOrder
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
		return s.plannedCall(ctx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	return c, nil
}

// plannedSQL reads parents that hold a plan of local calls, each with the
// ids of its children that have a row, in one statement and so one
// snapshot: the planned children without a row are what runs now.
const plannedSQL = `SELECT p.id, p.plan, p.meta, p.lease_owner, p.lease_expires,
		ARRAY(SELECT c.id FROM calls c WHERE c.id > (p.id || '.') COLLATE "C" AND c.id < (p.id || '/') COLLATE "C"
			AND c.parent_id = p.id)
	FROM calls p WHERE p.lease_owner IS NOT NULL AND p.plan IS NOT NULL`

// localParents reads plannedSQL (with more conditions in where, on p, and
// args), and returns each parent's planned children that have no row yet,
// as the store shows them (storeutil.PlannedCalls).
func localParents(ctx context.Context, q querier, where string, withInput bool, args ...any) ([]*dispatch.Call, error) {
	rows, err := q.Query(ctx, plannedSQL+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*dispatch.Call
	for rows.Next() {
		lp := &storeutil.LocalParent{}
		var expires int64
		var have []string
		if err := rows.Scan(&lp.ID, &lp.Plan, &lp.Meta, &lp.LeaseOwner, &expires, &have); err != nil {
			return nil, err
		}
		lp.LeaseExpires = fromNanos(expires)
		planned, err := storeutil.PlannedCalls(lp, func(id string) bool { return slices.Contains(have, id) }, withInput)
		if err != nil {
			return nil, err
		}
		out = append(out, planned...)
	}
	return out, rows.Err()
}

// plannedCall returns a local call that has no row yet, from its parent's
// plan, or ErrNotFound.
func (s *Store) plannedCall(ctx context.Context, id string) (*dispatch.Call, error) {
	parent, _, _, ok := storeutil.SplitChildID(id)
	if !ok {
		return nil, dispatch.ErrNotFound
	}
	var found *dispatch.Call
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		planned, err := localParents(ctx, conn, ` AND p.id = $1`, true, parent)
		for _, c := range planned {
			if c.ID == id {
				found = c
			}
		}
		if err != nil || found != nil {
			return err
		}
		// It may have got its row since the first read.
		found, err = scanCall(conn.QueryRow(ctx, `SELECT `+callColumns+` FROM calls WHERE id = $1`, id), true)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, dispatch.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	return found, nil
}

// readSnapshot runs fn in a read-only transaction that sees one snapshot
// (REPEATABLE READ): what runs as local calls and the rows, together.
func (s *Store) readSnapshot(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) error {
	return s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
			func(tx pgx.Tx) error { return fn(ctx, tx) })
	})
}

func (s *Store) listCalls(ctx context.Context, query string, args ...any) ([]*dispatch.Call, error) {
	var calls []*dispatch.Call
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		var err error
		calls, err = queryCalls(ctx, conn, query, args...)
		return err
	})
	return calls, err
}

// querier is a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// queryCalls reads calls selected as childColumns.
func queryCalls(ctx context.Context, q querier, query string, args ...any) ([]*dispatch.Call, error) {
	var calls []*dispatch.Call
	err := func() error {
		rows, err := q.Query(ctx, query, args...)
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
	}()
	return calls, err
}

// CallListChildren implements dispatch.Store. Local calls running now have
// no row yet: their parent's plan says what they are. The plan is read
// first, then the rows, in one round trip (a batch: two statements, each
// seeing what committed before it began): a planned child that has got its
// row in between is listed from its row, and one that had a row before is
// among the rows, so that none is missed, nor listed twice.
func (s *Store) CallListChildren(ctx context.Context, parentID string) ([]*dispatch.Call, error) {
	var calls []*dispatch.Call
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		calls = nil
		b := &pgx.Batch{}
		var plan []byte
		lp := &storeutil.LocalParent{ID: parentID}
		b.Queue(`SELECT plan, meta, lease_owner, lease_expires FROM calls WHERE id = $1 AND plan IS NOT NULL`,
			parentID).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var expires int64
				if err := rows.Scan(&plan, &lp.Meta, &lp.LeaseOwner, &expires); err != nil {
					return err
				}
				lp.LeaseExpires = fromNanos(expires)
			}
			return rows.Err()
		})
		// A child's id starts with its parent's and a dot: the primary key
		// finds them ('/' follows '.').
		b.Queue(`SELECT `+childColumns+` FROM calls WHERE id > $2 AND id < $3 AND parent_id = $1
			ORDER BY gather, idx`, parentID, parentID+".", parentID+"/").Query(func(rows pgx.Rows) error {
			for rows.Next() {
				c, err := scanCall(rows, false)
				if err != nil {
					return err
				}
				calls = append(calls, c)
			}
			return rows.Err()
		})
		if err := conn.SendBatch(ctx, b).Close(); err != nil || plan == nil {
			return err
		}
		lp.Plan = plan
		planned, err := storeutil.PlannedCalls(lp, func(id string) bool {
			return slices.ContainsFunc(calls, func(c *dispatch.Call) bool { return c.ID == id })
		}, false)
		if err != nil || len(planned) == 0 {
			return err
		}
		calls = append(calls, planned...)
		slices.SortFunc(calls, func(a, b *dispatch.Call) int {
			return cmp.Or(cmp.Compare(a.Gather, b.Gather), cmp.Compare(a.Index, b.Index))
		})
		return nil
	})
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
	if p.State != dispatch.StateRunning {
		calls, err := s.listCalls(ctx, q.String(), args...)
		if err != nil {
			return nil, fmt.Errorf("list calls: %w", err)
		}
		return calls, nil
	}
	// Running calls include the local calls that run now, from their
	// parents' plans (calls_leased holds every parent with a plan).
	var calls []*dispatch.Call
	err := s.readSnapshot(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		if calls, err = queryCalls(ctx, tx, q.String(), args...); err != nil {
			return err
		}
		planned, err := localParents(ctx, tx, "", false)
		if err != nil {
			return err
		}
		planned = slices.DeleteFunc(planned, func(c *dispatch.Call) bool { return !storeutil.Listed(p, c) })
		slices.SortFunc(planned, func(a, b *dispatch.Call) int { return strings.Compare(a.ID, b.ID) })
		calls = storeutil.MergeByID(calls, planned, max(p.Limit, 0))
		return nil
	})
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

// CallCounts implements dispatch.Store, local calls that run now counted
// as running.
func (s *Store) CallCounts(ctx context.Context) ([]dispatch.CallCount, error) {
	var out []dispatch.CallCount
	err := s.readSnapshot(ctx, func(ctx context.Context, tx pgx.Tx) error {
		out = out[:0]
		rows, err := tx.Query(ctx, `SELECT function, state, count(*) FROM calls GROUP BY function, state ORDER BY function, state`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var c dispatch.CallCount
			var state int16
			if err := rows.Scan(&c.Function, &state, &c.N); err != nil {
				rows.Close()
				return err
			}
			c.State = dispatch.State(state)
			out = append(out, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		planned, err := localParents(ctx, tx, "", false)
		if err != nil {
			return err
		}
		out = storeutil.AddCounts(out, planned)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count calls: %w", err)
	}
	return out, nil
}

// orderHeadsSQL walks calls_order for one key, from the order key $2 on:
// each row that is the first of its sequence (the lowest id not final) is
// a head; $3 keeps only heads that failed before (blocked ones).
const orderHeadsSQL = `SELECT c.order_key, c.id, c.function, c.state, c.attempt, c.failures, c.run_after, c.error, c.status,
		c.created_at, c.updated_at, c.parent_id,
		(SELECT count(*) FROM calls q WHERE q.key = c.key AND q.order_key = c.order_key AND q.state IN (0, 1, 2) AND q.id > c.id)
	FROM calls c
	WHERE c.key = $1 AND c.order_key > $2 AND c.order_key IS NOT NULL AND c.state IN (0, 1, 2)
	AND (NOT $3::boolean OR (c.failures > 0 AND c.state IN (0, 1)))
	AND c.id = (SELECT min(h.id) FROM calls h
		WHERE h.key = c.key AND h.order_key = c.order_key AND h.state IN (0, 1, 2))
	ORDER BY c.order_key
	LIMIT $4`

// CallOrderHeads implements dispatch.Store.
func (s *Store) CallOrderHeads(ctx context.Context, p *dispatch.CallOrderHeadsParams) ([]*dispatch.OrderHead, error) {
	var out []*dispatch.OrderHead
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		out = out[:0]
		rows, err := conn.Query(ctx, orderHeadsSQL, p.Key, p.After, p.Blocked, p.Limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			h := &dispatch.OrderHead{Head: &dispatch.Call{Key: p.Key}}
			c := h.Head
			var state, status int16
			var runAfter, created, updated int64
			var errText, parent *string
			if err := rows.Scan(&h.OrderKey, &c.ID, &c.Function, &state, &c.Attempt, &c.Failures, &runAfter, &errText,
				&status, &created, &updated, &parent, &h.Queued); err != nil {
				return err
			}
			c.OrderKey, c.State, c.Status = h.OrderKey, dispatch.State(state), dispatch.Status(status)
			if errText != nil {
				c.Error = *errText
			}
			if parent != nil {
				c.ParentID = *parent
			}
			c.RunAfter, c.CreatedAt, c.UpdatedAt = fromNanos(runAfter), fromNanos(created), fromNanos(updated)
			out = append(out, h)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list sequences: %w", err)
	}
	return out, nil
}
