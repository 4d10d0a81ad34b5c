package dispatchpg

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

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
