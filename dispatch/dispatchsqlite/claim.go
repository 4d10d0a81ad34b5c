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
	"fanout/dispatch/internal/storeutil"
)

// claimColumns are what a claim (or a resume) returns of a call, with its
// parent's input (see dispatch.Call.ParentInput): a primary key probe of a
// row the cache holds, in the writer, instead of a read per call later.
var claimColumns = `id, function, key, input, attempt, failures, run_after, budget_start, ` + parentColumn + `, gather, idx, gathers, created_at, ` + metaColumn + `,
	(SELECT p.input FROM calls p WHERE p.id = ` + parentColumn + `), order_key, out_of_order`

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
		BudgetStart: fromNanos(orElse(asInt(row[7]), asInt(row[12]))),
		ParentID:    asString(row[8]),
		Gather:      int(asInt(row[9])),
		Index:       int(asInt(row[10])),
		Gathers:     int(asInt(row[11])),
		CreatedAt:   fromNanos(asInt(row[12])),
		Meta:        asBytes(row[13]),
		ParentInput: asBytes(row[14]),
		OrderKey:    asString(row[15]),
		OutOfOrder:  asInt(row[16]) != 0,
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
	err := s.w.doLazy(ctx, false, func(tx *wtx) error {
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
	err = s.w.doLazy(ctx, true, func(tx *wtx) error {
		_, err := tx.exec(`UPDATE calls SET lease_expires = ?
			WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ?`,
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
	err := s.w.doLazy(ctx, true, func(tx *wtx) error {
		var err error
		if p.Owner != "" {
			n, err = tx.exec(`UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL
				WHERE state = 1 AND lease_owner = ?`, p.Owner)
		} else {
			n, err = tx.exec(`UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL
				WHERE state = 1 AND lease_owner IS NOT NULL AND lease_expires <= ?`, p.Now.UnixNano())
		}
		if err != nil {
			return err
		}
		m, err := dropPlans(tx, p.Owner, p.Now)
		n += m
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("release leases: %w", err)
	}
	return int(n), nil
}

// dropPlans ends the plans of local calls (dispatch.Call.Local) leased to
// owner, or, with no owner, whose lease expired before now; with owner "*",
// every plan (at open, the lock proves that no other process holds one).
// Each planned child without a row is stored pending, to run again with
// its id, and its parent waits, unleased, for its children not final. It
// returns how many children it stored.
func dropPlans(tx *wtx, owner string, now time.Time) (int64, error) {
	var parents []*storeutil.LocalParent
	query, args := `SELECT id, plan, `+metaColumn+`, lease_owner, lease_expires FROM calls INDEXED BY calls_leased
		WHERE lease_owner IS NOT NULL AND lease_expires <= ? AND plan IS NOT NULL`, []any{now.UnixNano()}
	switch owner {
	case "*":
		query, args = `SELECT id, plan, `+metaColumn+`, lease_owner, lease_expires FROM calls INDEXED BY calls_leased
			WHERE lease_owner IS NOT NULL AND plan IS NOT NULL`, nil
	case "":
	default:
		query, args = `SELECT id, plan, `+metaColumn+`, lease_owner, lease_expires FROM calls INDEXED BY calls_leased
			WHERE lease_owner = ? AND plan IS NOT NULL`, []any{owner}
	}
	err := tx.query(query, args, func(row []driver.Value) error {
		parents = append(parents, &storeutil.LocalParent{ID: asString(row[0]), Plan: slices.Clone(asBytes(row[1])),
			Meta: slices.Clone(asBytes(row[2])), LeaseOwner: asString(row[3]), LeaseExpires: fromNanos(asInt(row[4]))})
		return nil
	})
	if err != nil {
		return 0, err
	}
	var stored int64
	for _, lp := range parents {
		have, err := childIDs(tx, lp.ID)
		if err != nil {
			return stored, err
		}
		calls, err := storeutil.MaterializeCalls(lp, func(id string) bool { return have[id] }, now)
		if err != nil {
			return stored, err
		}
		n, err := insert(tx, calls, true, nil)
		if err != nil {
			return stored, err
		}
		stored += n
		if _, err := tx.exec(`UPDATE calls SET plan = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?2,
				waiting = (SELECT count(*) FROM calls WHERE `+childrenRange+` AND state NOT IN (3, 4)),
				state = CASE WHEN (SELECT count(*) FROM calls WHERE `+childrenRange+` AND state NOT IN (3, 4)) = 0 THEN 0 ELSE 2 END,
				run_after = ?2
			WHERE id = ?1`, lp.ID, now.UnixNano()); err != nil {
			return stored, err
		}
	}
	return stored, nil
}

// childIDs returns the ids of a parent's children that have a row.
func childIDs(tx *wtx, parent string) (map[string]bool, error) {
	have := make(map[string]bool)
	err := tx.query(`SELECT id FROM calls WHERE `+childrenRange, []any{parent}, func(row []driver.Value) error {
		have[asString(row[0])] = true
		return nil
	})
	return have, err
}

// CallTake implements dispatch.Store.
func (s *Store) CallTake(ctx context.Context, p *dispatch.CallTakeParams) (*dispatch.Call, error) {
	var c *dispatch.Call
	err := s.w.do(ctx, func(tx *wtx) error {
		c = nil
		row, err := tx.queryRow(`UPDATE calls SET state = 1, lease_owner = ?, lease_expires = ?, attempt = attempt + 1,
				updated_at = ?
			WHERE id = ? AND state = 0 RETURNING `+claimColumns, p.Owner, p.LeaseUntil.UnixNano(), p.Now.UnixNano(), p.ID)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return nil
		case err != nil:
			return err
		}
		c = claimed(row)
		c.LeaseOwner, c.LeaseExpires = p.Owner, p.LeaseUntil
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("take call: %w", err)
	}
	return c, nil
}
