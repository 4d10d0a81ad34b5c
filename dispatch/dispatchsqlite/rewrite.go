package dispatchsqlite

import (
	"context"
	"database/sql/driver"
	"fmt"

	"fanout/dispatch"
)

// CallRewriteInputs implements dispatch.Store: one writer operation per
// page, which reads the calls with their parents' inputs and rewrites them
// in the same transaction.
func (s *Store) CallRewriteInputs(ctx context.Context, p *dispatch.CallRewriteInputsParams) (*dispatch.CallRewriteInputsResult, error) {
	res := &dispatch.CallRewriteInputsResult{}
	if p.Limit <= 0 || p.Rewrite == nil {
		return res, nil
	}
	err := s.w.do(ctx, func(tx *wtx) error {
		*res = dispatch.CallRewriteInputsResult{}
		var calls []*dispatch.Call
		err := tx.query(`SELECT c.id, c.key, c.input, c.state, `+parentOf("c")+`, p.input FROM calls c JOIN calls p ON p.id = `+parentOf("c")+`
			WHERE c.id > ? AND c.function = ? AND c.parent_id IS NOT NULL ORDER BY c.id LIMIT ?`,
			[]any{p.After, p.Function, p.Limit}, func(row []driver.Value) error {
				calls = append(calls, &dispatch.Call{ID: asString(row[0]), Function: p.Function, Key: asString(row[1]),
					Input: append([]byte(nil), asBytes(row[2])...), State: dispatch.State(asInt(row[3])),
					ParentID: asString(row[4]), ParentInput: append([]byte(nil), asBytes(row[5])...)})
				return nil
			})
		if err != nil {
			return err
		}
		for _, c := range calls {
			in, ok := p.Rewrite(c)
			if !ok {
				continue
			}
			if _, err := tx.exec(`UPDATE calls SET input = ? WHERE id = ?`, nonNil(in), c.ID); err != nil {
				return err
			}
			res.Rewritten++
		}
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
