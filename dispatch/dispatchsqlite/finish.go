package dispatchsqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// CallSuspend implements dispatch.Store.
func (s *Store) CallSuspend(ctx context.Context, p *dispatch.CallSuspendParams) (bool, error) {
	var applied bool
	now := p.Now.UnixNano()
	stored, plans := storeutil.SplitLocal(p.Children)
	var owner, expires, plan any
	if lp := plans[p.ID]; lp != nil {
		owner, expires, plan = lp.Owner, lp.Expires, lp.Plan
	}
	err := s.w.do(ctx, func(tx *wtx) error {
		applied = false
		n, err := tx.exec(`UPDATE calls SET state = 2, gathers = ?, waiting = ?, lease_owner = ?, lease_expires = ?, plan = ?,
				updated_at = ?
			WHERE id = ? AND state = 1 AND attempt = ?`,
			p.Gather+1, len(p.Children), owner, expires, plan, now, p.ID, p.Attempt)
		if err != nil || n == 0 {
			return err
		}
		applied = true
		stored, err := park(tx, stored)
		if err != nil {
			return err
		}
		inserted, err := insert(tx, stored, true, nil)
		if err != nil {
			return err
		}
		if inserted == int64(len(stored)) {
			if plan == nil {
				return nil
			}
			row, err := tx.queryRow(`SELECT count(*) FROM calls WHERE `+gatherRange, p.ID, p.Gather)
			if err != nil || asInt(row[0]) == inserted {
				return err
			}
		}
		// Some children existed already (the parent ran this gather
		// before): no plan. The local ones are stored running, leased as
		// given (their finish then finds their rows), and the parent
		// counts those still to wait for.
		if plan != nil {
			running := make([]*dispatch.Call, 0, len(p.Children)-len(stored))
			for _, c := range p.Children {
				if c.Local {
					running = append(running, c)
				}
			}
			if _, err := insert(tx, running, true, nil); err != nil {
				return err
			}
		}
		_, err = tx.exec(`UPDATE calls SET
				waiting = (SELECT count(*) FROM calls WHERE `+gatherRange+` AND state NOT IN (3, 4)),
				state = CASE WHEN (SELECT count(*) FROM calls WHERE `+gatherRange+` AND state NOT IN (3, 4)) = 0 THEN 0 ELSE 2 END,
				lease_owner = NULL, lease_expires = NULL, plan = NULL, run_after = ?3
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
	res := &dispatch.CallFinishResult{}
	err := s.w.doLazy(ctx, true, func(tx *wtx) error {
		*res = dispatch.CallFinishResult{}
		return finish(tx, p, res)
	})
	if err != nil {
		return nil, fmt.Errorf("finish call: %w", err)
	}
	return res, nil
}

// CallFinishMany implements dispatch.ManyFinisher: the finishes one
// after the other, in one operation of the writer.
func (s *Store) CallFinishMany(ctx context.Context, ps []*dispatch.CallFinishParams) ([]*dispatch.CallFinishResult, error) {
	res := make([]*dispatch.CallFinishResult, len(ps))
	err := s.w.doLazy(ctx, true, func(tx *wtx) error {
		for i := range ps {
			res[i] = &dispatch.CallFinishResult{}
		}
		for i := 0; i < len(ps); {
			// A run of local calls of one plan is stored with one look
			// at their parent and one insert.
			j := i + 1
			for j < len(ps) && sameLocalPlan(ps[i], ps[j]) {
				j++
			}
			if ps[i].Local != nil && j-i > 1 {
				done, err := finishLocals(tx, ps[i:j], res[i:j])
				if err != nil {
					return err
				}
				if done {
					i = j
					continue
				}
			}
			for ; i < j; i++ {
				if err := finish(tx, ps[i], res[i]); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finish calls: %w", err)
	}
	return res, nil
}

// sameLocalPlan reports whether a and b end local calls of the same plan.
func sameLocalPlan(a, b *dispatch.CallFinishParams) bool {
	return a.Local != nil && b.Local != nil && a.ParentID == b.ParentID && a.ParentAttempt == b.ParentAttempt &&
		a.Local.LeaseOwner == b.Local.LeaseOwner
}

// finish applies one finish in the writer's transaction.
func finish(tx *wtx, p *dispatch.CallFinishParams, res *dispatch.CallFinishResult) error {
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
	var runAfter int64 // final: updated_at (see orElse)
	if p.State == dispatch.StatePending {
		runAfter = p.RunAfter.UnixNano()
	}
	var parentOutput any
	if p.FinishParent {
		parentOutput = nonNil(p.ParentOutput)
	}
	if p.Local != nil {
		done, err := finishLocal(tx, p, res)
		if err != nil || done {
			return err
		}
	}
	n, err := tx.exec(`UPDATE calls SET state = ?, output = ?, error = ?, status = ?, run_after = ?,
			failures = failures + ?, lease_owner = NULL, lease_expires = NULL, updated_at = ?
		WHERE id = ? AND state = 1 AND attempt = ? AND (? = '' OR lease_owner = ?)`,
		int(p.State), output, errText, int(p.Status), runAfter, failed, now, p.ID, p.Attempt, localOwner(p), localOwner(p))
	if err != nil || n == 0 {
		return err
	}
	res.Applied = true
	if err := recordAttempt(tx, p); err != nil {
		return err
	}
	if err := unpark(tx, p); err != nil {
		return err
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
	return lastChild(tx, p, res, parentOutput)
}

// localOwner is the owner a finish of a local call's row must find: the
// row was stored when its parent's plan was dropped, and only the process
// it is leased to may finish it. "" for a stored call (its attempt fences
// it).
func localOwner(p *dispatch.CallFinishParams) string {
	if p.Local != nil {
		return p.Local.LeaseOwner
	}
	return ""
}

// recordAttempt stores the record of a failed attempt.
func recordAttempt(tx *wtx, p *dispatch.CallFinishParams) error {
	r := p.Record
	if r == nil {
		return nil
	}
	var detail any
	if len(r.Detail) > 0 {
		detail = r.Detail
	}
	_, err := tx.exec(`INSERT OR REPLACE INTO attempts (call_id, attempt, started_at, duration_ns, status, error, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, p.ID, p.Attempt, r.Started.UnixNano(), int64(r.Duration), int(r.Status),
		r.Error, detail)
	return err
}

// finishLocal stores a local call with its outcome (see
// dispatch.CallFinishParams.Local), if its parent's plan is still leased to
// its owner: one row. It returns done false when the plan is gone: the call
// is then finished as a stored one, if its row is still leased to it.
func finishLocal(tx *wtx, p *dispatch.CallFinishParams, res *dispatch.CallFinishResult) (done bool, err error) {
	return finishLocals(tx, []*dispatch.CallFinishParams{p}, []*dispatch.CallFinishResult{res})
}

// finishLocals is finishLocal for local calls of one parent, of one plan
// and one owner (ps, in order; the one that may finish the parent last):
// one look at the parent, one insert of their rows.
func finishLocals(tx *wtx, ps []*dispatch.CallFinishParams, res []*dispatch.CallFinishResult) (done bool, err error) {
	first, last := ps[0], ps[len(ps)-1]
	// The parent, if its plan is still this owner's, and how many rows
	// its plan's gather (its last: an attach waits while a plan runs) has.
	row, err := tx.queryRow(`SELECT p.plan, p.gathers - 1, (SELECT count(*) FROM calls c
			WHERE c.id > p.id || '.' || (p.gathers - 1) || '.' AND c.id < p.id || '.' || (p.gathers - 1) || '/'
			AND c.parent_id IN (p.id, ''))
		FROM calls p WHERE p.id = ? AND p.state = 2 AND p.attempt = ? AND p.lease_owner = ? AND p.plan IS NOT NULL`,
		first.ParentID, first.ParentAttempt, first.Local.LeaseOwner)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	gather, total, err := storeutil.PlanHead(asBytes(row[0]))
	if err != nil {
		return false, fmt.Errorf("parent %s: %w", first.ParentID, err)
	}
	if gather != int(asInt(row[1])) {
		return false, fmt.Errorf("parent %s: its plan is of gather %d, its last is %d", first.ParentID, gather, asInt(row[1]))
	}
	rows := int(asInt(row[2]))
	calls := make([]*dispatch.Call, len(ps))
	for i, p := range ps {
		calls[i] = localRow(p)
	}
	if _, err := insert(tx, calls, false, nil); err != nil {
		return false, err
	}
	for i, p := range ps {
		res[i].Applied = true
		if err := recordAttempt(tx, p); err != nil {
			return true, err
		}
	}
	if rows+len(ps) < total {
		return true, nil // siblings to come
	}
	// The plan is complete: every child of its gather has a row. The
	// parent waits, unleased, for its children not final; with none, it
	// is finished (the run the runtime made of it, in one statement, the
	// common case) or resumed as by a last child.
	now := last.Now.UnixNano()
	lastRes := res[len(res)-1]
	if last.FinishParent && last.State.Final() {
		n, err := tx.exec(`UPDATE calls SET plan = NULL, lease_owner = NULL, lease_expires = NULL, waiting = 0,
				state = 3, output = ?2, error = NULL, status = ?3, attempt = attempt + 1, run_after = 0, updated_at = ?4
			WHERE id = ?1 AND parent_id IS NULL AND gathers = ?5
			AND NOT EXISTS (SELECT 1 FROM calls WHERE `+childrenRange+` AND state NOT IN (3, 4))`,
			last.ParentID, nonNil(last.ParentOutput), int(dispatch.StatusOK), now, last.ParentGathers)
		if err != nil || n > 0 {
			lastRes.ParentFinished = n > 0
			return true, err
		}
	}
	row, err = tx.queryRow(`UPDATE calls SET plan = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?2,
			waiting = (SELECT count(*) FROM calls WHERE `+childrenRange+` AND state NOT IN (3, 4))
		WHERE id = ?1 RETURNING waiting`, last.ParentID, now)
	if err != nil || asInt(row[0]) > 0 {
		return true, err
	}
	var parentOutput any
	if last.FinishParent {
		parentOutput = nonNil(last.ParentOutput)
	}
	return true, lastChild(tx, last, lastRes, parentOutput)
}

// localRow is the row of a local call that ends with p.
func localRow(p *dispatch.CallFinishParams) *dispatch.Call {
	c := p.Local
	row := &dispatch.Call{ID: p.ID, Function: c.Function, Key: c.Key, Input: c.Input, State: p.State,
		Attempt: p.Attempt, ParentID: p.ParentID, Gather: c.Gather, Index: c.Index, Error: p.Error, Status: p.Status,
		Tag: c.Tag, Meta: c.Meta, CreatedAt: c.CreatedAt, UpdatedAt: p.Now, BudgetStart: c.BudgetStart, RunAfter: p.Now}
	if p.State == dispatch.StateDone {
		row.Output = p.Output
	}
	if p.State != dispatch.StateDone && !p.Snooze {
		row.Failures = 1
	}
	if p.State == dispatch.StatePending {
		row.RunAfter = p.RunAfter
	}
	return row
}

// lastChild makes runnable, or finishes (FinishParent), the parent of the
// last child it waited for.
func lastChild(tx *wtx, p *dispatch.CallFinishParams, res *dispatch.CallFinishResult, parentOutput any) error {
	now := p.Now.UnixNano()
	if p.FinishParent {
		// The runtime ran the parent with this last outcome: store
		// its run, done, unless children were attached to it since
		// (it then resumes below, to run with all of them).
		n, err := tx.exec(`UPDATE calls SET waiting = 0, state = 3, output = ?, error = NULL, status = ?,
				attempt = attempt + 1, lease_owner = NULL, lease_expires = NULL, run_after = 0, updated_at = ?
			WHERE id = ? AND state = 2 AND parent_id IS NULL AND gathers = ?`,
			parentOutput, int(dispatch.StatusOK), now, p.ParentID, p.ParentGathers)
		if err != nil || n > 0 {
			res.ParentFinished = n > 0
			return err
		}
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
	var err2 error
	res.ParentChildren, err2 = gatheredChildren(tx, p.ParentID)
	return err2
}

// gatheredChildren reads a resumed parent's children in the writer's
// transaction, for CallFinishResult.ParentChildren: their rows are on the
// leaf the finish just wrote (a child's id extends its parent's), in the
// writer's cache, where a reader would fetch them cold, and through
// database/sql.
func gatheredChildren(tx *wtx, parentID string) ([]*dispatch.Call, error) {
	var out []*dispatch.Call
	err := tx.query(`SELECT id, gather, idx, state, status, error, output FROM calls
		WHERE `+childrenRange+` ORDER BY gather, idx`, []any{parentID},
		func(row []driver.Value) error {
			out = append(out, &dispatch.Call{ID: asString(row[0]), ParentID: parentID, Gather: int(asInt(row[1])),
				Index: int(asInt(row[2])), State: dispatch.State(asInt(row[3])), Status: dispatch.Status(asInt(row[4])),
				Error: asString(row[5]), Output: asBytes(row[6])})
			return nil
		})
	if out == nil && err == nil {
		out = []*dispatch.Call{} // none is an answer too
	}
	return out, err
}

// CallRedrive implements dispatch.Store.
func (s *Store) CallRedrive(ctx context.Context, p *dispatch.CallRedriveParams) ([]string, error) {
	now := p.Now.UnixNano()
	// Descendants first (a child's id extends its parent's, so it sorts
	// after it): a failed parent re-driven with its children then waits
	// for them instead of running again beside them, whatever the order
	// asked.
	order := slices.Clone(p.IDs)
	slices.Sort(order)
	slices.Reverse(order)
	redriven := make(map[string]bool)
	err := s.w.do(ctx, func(tx *wtx) error {
		clear(redriven)
		for _, id := range order {
			row, err := tx.queryRow(`SELECT `+parentColumn+` FROM calls WHERE id = ? AND state = 4`, id)
			if errors.Is(err, sql.ErrNoRows) {
				continue // not failed (any more), or unknown
			}
			if err != nil {
				return err
			}
			if parent := asString(row[0]); parent != "" {
				// The parent waits for this call again: one more if it is
				// waiting, from scratch if it had failed.
				// A waiting parent keeps the lease of its plan of local
				// calls, if it has one (a failed parent has none).
				n, err := tx.exec(`UPDATE calls SET
						waiting = CASE state WHEN 2 THEN waiting + 1 ELSE 1 END,
						state = 2, error = NULL, updated_at = ?
					WHERE id = ? AND state IN (2, 4)`, now, parent)
				if err != nil {
					return err
				}
				if n == 0 {
					continue // the parent is about to finish: leave this call be
				}
			}
			// Out of its sequence, which moved on when it failed (its
			// row left calls_order then): see dispatch.Call.OutOfOrder.
			if _, err := tx.exec(`UPDATE calls SET state = 0, failures = 0, budget_start = ?, run_after = ?, updated_at = ?,
					out_of_order = CASE WHEN order_key IS NOT NULL THEN 1 ELSE out_of_order END, order_key = NULL
				WHERE id = ?`, now, now, now, id); err != nil {
				return err
			}
			redriven[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redrive calls: %w", err)
	}
	var done []string // in the order asked
	for _, id := range p.IDs {
		if redriven[id] {
			done = append(done, id)
			delete(redriven, id)
		}
	}
	return done, nil
}

// gatherRange selects the children of call ?1's gather ?2 by their ids
// (see descendants).
// childrenRange selects the children of the parent ?1 by primary key: a
// child's id is its parent's id, a dot, and more.
const childrenRange = `id > ?1 || '.' AND id < ?1 || '/' AND (parent_id = ?1 OR (parent_id = '' AND instr(?1, '.') = 0))`

const gatherRange = `id > ?1 || '.' || ?2 || '.' AND id < ?1 || '.' || ?2 || '/' AND (parent_id = ?1 OR (parent_id = '' AND instr(?1, '.') = 0)) AND gather = ?2`
