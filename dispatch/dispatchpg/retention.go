package dispatchpg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// CallDeleteFinished implements dispatch.Store with storeutil.WalkRetention
// over seq (insertion order, as the SQLite store walks rowids), from a mark
// kept in memory. Each replica keeps its own mark. The calls to delete
// are locked with SKIP LOCKED: one that another replica is deleting at the
// same moment is left to it.
//
// The walk only passes calls created before Before (days ago, in fanout),
// whose inserts committed long since: seq is taken at insert time without
// caching, so no call can later appear behind the mark.
func (s *Store) CallDeleteFinished(ctx context.Context, p *dispatch.CallDeleteFinishedParams) (int, error) {
	if p.Limit <= 0 {
		return 0, nil
	}
	target, rule := dispatch.StateDone, 0
	if p.Failed {
		target, rule = dispatch.StateFailed, 1
	}
	s.retention.Lock()
	defer s.retention.Unlock()
	ids, mark, err := storeutil.WalkRetention(s.retention.mark[rule], p.Before, target, p.Limit, func(after int64, n int) ([]storeutil.RetentionRoot, error) {
		var roots []storeutil.RetentionRoot
		err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
			roots = roots[:0]
			rows, err := conn.Query(ctx, `SELECT seq, id, state, created_at FROM calls
				WHERE parent_id IS NULL AND seq > $1 ORDER BY seq LIMIT $2`, after, n)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var r storeutil.RetentionRoot
				var state int16
				var created int64
				if err := rows.Scan(&r.Seq, &r.ID, &state, &created); err != nil {
					return err
				}
				r.State, r.CreatedAt = dispatch.State(state), fromNanos(created)
				roots = append(roots, r)
			}
			return rows.Err()
		})
		return roots, err
	})
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	deleted, err := s.deleteTrees(ctx, ids, target)
	if err != nil {
		return 0, fmt.Errorf("delete finished calls: %w", err)
	}
	s.retention.mark[rule] = mark
	return deleted, nil
}

// deleteTrees deletes top-level calls still in state, with their
// descendants, their attempts and their dedup keys, in one transaction.
func (s *Store) deleteTrees(ctx context.Context, ids []string, state dispatch.State) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	// A call's descendants are the ids that start with its own and a dot:
	// one range of the primary key each ('/' follows '.').
	const tree = `WITH tree(id) AS (
			SELECT r.id FROM unnest($1::text[]) r(id)
			UNION ALL
			SELECT c.id FROM unnest($1::text[]) r(id), LATERAL (
				SELECT id FROM calls WHERE id > r.id || '.' COLLATE "C" AND id < r.id || '/' COLLATE "C" AND parent_id IS NOT NULL
			) c
		)`
	var deleted int
	err := s.writeTx(ctx, func(ctx context.Context, tx *rtx) error {
		rows, err := tx.Query(ctx, `SELECT id FROM calls WHERE id = ANY($1::text[]) AND state = $2
			ORDER BY seq FOR UPDATE SKIP LOCKED`, ids, int16(state))
		if err != nil {
			return err
		}
		roots, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		deleted = len(roots)
		if deleted == 0 {
			return nil
		}
		// A WITH statement: rtx cannot tell what it writes.
		tag, err := tx.Exec(ctx, tree+` DELETE FROM attempts WHERE call_id IN (SELECT id FROM tree)`, roots)
		if err != nil {
			return err
		}
		tx.wrote("attempts deleted", tag.RowsAffected())
		if _, err := tx.Exec(ctx, `DELETE FROM dedup WHERE call_id = ANY($1::text[])`, roots); err != nil {
			return err
		}
		tag, err = tx.Exec(ctx, tree+` DELETE FROM calls WHERE id IN (SELECT id FROM tree)`, roots)
		tx.wrote("calls deleted", tag.RowsAffected())
		return err
	})
	return deleted, err
}
