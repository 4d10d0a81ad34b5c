package dispatchpg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"fanout/dispatch"
)

// CallRewriteInputs implements dispatch.Store: one transaction per page.
// It never waits for a row lock: a page's calls are listed without locks,
// then locked with SKIP LOCKED, and those that another transaction holds (a
// group commit finishing or claiming them, which locks its calls in its own
// order) are left for the next call, which starts before the first of
// them. Waiting for them while holding the others, as FOR UPDATE would,
// can close a cycle with such a commit (a deadlock, which aborts one of
// the two).
func (s *Store) CallRewriteInputs(ctx context.Context, p *dispatch.CallRewriteInputsParams) (*dispatch.CallRewriteInputsResult, error) {
	res := &dispatch.CallRewriteInputsResult{}
	if p.Limit <= 0 || p.Rewrite == nil {
		return res, nil
	}
	err := s.writeTx(ctx, func(ctx context.Context, tx *rtx) error {
		*res = dispatch.CallRewriteInputsResult{}
		rows, err := tx.Query(ctx, `SELECT id FROM calls WHERE id > $1 AND function = $2 AND parent_id IS NOT NULL
			ORDER BY id LIMIT $3`, p.After, p.Function, p.Limit)
		if err != nil {
			return err
		}
		page, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(page) == 0 {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT c.id, c.key, c.input, c.state, c.parent_id, p.input FROM calls c JOIN calls p ON p.id = c.parent_id
			WHERE c.id = ANY($1) FOR UPDATE OF c SKIP LOCKED`, page)
		if err != nil {
			return err
		}
		locked := make(map[string]*dispatch.Call, len(page))
		for rows.Next() {
			c := &dispatch.Call{Function: p.Function}
			var state int16
			if err := rows.Scan(&c.ID, &c.Key, &c.Input, &state, &c.ParentID, &c.ParentInput); err != nil {
				rows.Close()
				return err
			}
			c.State = dispatch.State(state)
			locked[c.ID] = c
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var ids []string
		var inputs [][]byte
		next := p.After // the calls up to it are done
		skipped := false
		for _, id := range page {
			c := locked[id]
			if c == nil {
				// Held by another transaction (or deleted meanwhile):
				// the next call starts before it.
				skipped = true
				continue
			}
			if in, ok := p.Rewrite(c); ok {
				ids, inputs = append(ids, c.ID), append(inputs, nonNil(in))
			}
			if !skipped {
				next = id
			}
		}
		if len(ids) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE calls c SET input = n.input FROM unnest($1::text[], $2::bytea[]) AS n(id, input)
				WHERE c.id = n.id`, ids, inputs); err != nil {
				return err
			}
		}
		res.Rewritten, res.Held = len(ids), skipped
		if skipped || len(page) == p.Limit {
			res.Next = next
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rewrite inputs: %w", err)
	}
	return res, nil
}
