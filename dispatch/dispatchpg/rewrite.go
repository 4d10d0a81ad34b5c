package dispatchpg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"fanout/dispatch"
)

// CallRewriteInputs implements dispatch.Store: one transaction per page,
// which locks the calls it reads (a call finishing meanwhile is waited for,
// and its row read again) and rewrites them in one statement.
func (s *Store) CallRewriteInputs(ctx context.Context, p *dispatch.CallRewriteInputsParams) (*dispatch.CallRewriteInputsResult, error) {
	res := &dispatch.CallRewriteInputsResult{}
	if p.Limit <= 0 || p.Rewrite == nil {
		return res, nil
	}
	err := s.writeTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		*res = dispatch.CallRewriteInputsResult{}
		rows, err := tx.Query(ctx, `SELECT c.id, c.key, c.input, c.state, c.parent_id, p.input FROM calls c JOIN calls p ON p.id = c.parent_id
			WHERE c.id > $1 AND c.function = $2 AND c.parent_id IS NOT NULL ORDER BY c.id LIMIT $3 FOR UPDATE OF c`,
			p.After, p.Function, p.Limit)
		if err != nil {
			return err
		}
		var calls []*dispatch.Call
		for rows.Next() {
			c := &dispatch.Call{Function: p.Function}
			var state int16
			if err := rows.Scan(&c.ID, &c.Key, &c.Input, &state, &c.ParentID, &c.ParentInput); err != nil {
				rows.Close()
				return err
			}
			c.State = dispatch.State(state)
			calls = append(calls, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var ids []string
		var inputs [][]byte
		for _, c := range calls {
			if in, ok := p.Rewrite(c); ok {
				ids, inputs = append(ids, c.ID), append(inputs, nonNil(in))
			}
		}
		if len(ids) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE calls c SET input = n.input FROM unnest($1::text[], $2::bytea[]) AS n(id, input)
				WHERE c.id = n.id`, ids, inputs); err != nil {
				return err
			}
		}
		res.Rewritten = len(ids)
		if len(calls) == p.Limit {
			res.Next = calls[len(calls)-1].ID
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rewrite inputs: %w", err)
	}
	return res, nil
}
