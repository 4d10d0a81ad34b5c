package dispatchsqlite

import (
	"context"
	"database/sql/driver"
	"fmt"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// CallDeleteFinished implements dispatch.Store with storeutil.WalkRetention
// over rowids (the order calls were stored in), from a mark kept in memory.
// An index on age would find the calls directly, but every event would pay
// for it on the write path, where this pays on a pass a minute.
func (s *Store) CallDeleteFinished(ctx context.Context, p *dispatch.CallDeleteFinishedParams) (int, error) {
	target, rule := dispatch.StateDone, 0
	if p.Failed {
		target, rule = dispatch.StateFailed, 1
	}
	var deleted int
	err := s.w.doLazy(ctx, true, func(tx *wtx) error {
		deleted = 0
		mark := s.retentionMark[rule]
		if row, err := tx.queryRow(`SELECT COALESCE(MAX(rowid), 0) FROM calls`); err != nil {
			return err
		} else if asInt(row[0]) < mark {
			mark = 0 // the table emptied and rowids start again
		}
		ids, mark, err := storeutil.WalkRetention(mark, p.Before, target, p.Limit, func(after int64, n int) ([]storeutil.RetentionRoot, error) {
			var roots []storeutil.RetentionRoot
			err := tx.query(`SELECT rowid, id, state, created_at FROM calls
				WHERE rowid > ? AND parent_id IS NULL ORDER BY rowid LIMIT ?`, []any{after, n},
				func(row []driver.Value) error {
					roots = append(roots, storeutil.RetentionRoot{Seq: asInt(row[0]), ID: asString(row[1]),
						State: dispatch.State(asInt(row[2])), CreatedAt: fromNanos(asInt(row[3]))})
					return nil
				})
			return roots, err
		})
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := deleteTree(tx, id); err != nil {
				return err
			}
		}
		deleted = len(ids)
		s.nextMark[rule] = mark
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	s.retentionMark[rule] = s.nextMark[rule]
	return deleted, nil
}

// descendants selects every descendant of call ?1 by its id: a child's id
// is its parent's followed by ".<gather>.<index>", so a call's descendants
// are the ids that start with its own and a dot, one range of the primary
// key ('/' follows '.'). No index of children by parent is needed.
const descendants = `(id > ?1 || '.' AND id < ?1 || '/' AND parent_id IS NOT NULL)`

// deleteTree deletes a call, its descendants, their attempts and the
// call's dedup key.
func deleteTree(tx *wtx, id string) error {
	if _, err := tx.exec(`DELETE FROM attempts WHERE call_id = ?1 OR (call_id > ?1 || '.' AND call_id < ?1 || '/')`, id); err != nil {
		return err
	}
	if _, err := tx.exec(`DELETE FROM dedup WHERE call_id = ?`, id); err != nil {
		return err
	}
	if _, err := tx.exec(`DELETE FROM calls WHERE `+descendants, id); err != nil {
		return err
	}
	_, err := tx.exec(`DELETE FROM calls WHERE id = ?`, id)
	return err
}
