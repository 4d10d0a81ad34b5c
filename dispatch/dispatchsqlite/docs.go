package dispatchsqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"fanout/dispatch"
)

// The documents of dispatch.DocStore. The two drivers hold the same five
// methods, one statement each, in their own SQL and driver API (the SQLite
// writer's raw statements, pgx here and there): what they share is the
// shape, which a common helper would only hide behind callbacks.

// DocCreate implements dispatch.DocStore.
func (s *Store) DocCreate(ctx context.Context, d *dispatch.Doc) error {
	now := d.CreatedAt.UnixNano()
	err := s.w.do(ctx, func(tx *wtx) error {
		n, err := tx.exec(`INSERT INTO docs (kind, id, data, version, created_at, updated_at) VALUES (?, ?, ?, 1, ?, ?)
			ON CONFLICT (kind, id) DO NOTHING`, d.Kind, d.ID, d.Data, now, now)
		if err == nil && n == 0 {
			return dispatch.ErrDocExists
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create %s %s: %w", d.Kind, d.ID, err)
	}
	d.Version, d.UpdatedAt = 1, d.CreatedAt
	return nil
}

// DocGet implements dispatch.DocStore.
func (s *Store) DocGet(ctx context.Context, kind, id string) (*dispatch.Doc, error) {
	d := &dispatch.Doc{Kind: kind, ID: id}
	var created, updated int64
	err := s.rdb.QueryRowContext(ctx, `SELECT data, version, created_at, updated_at FROM docs WHERE kind = ? AND id = ?`,
		kind, id).Scan(&d.Data, &d.Version, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, dispatch.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get %s %s: %w", kind, id, err)
	}
	d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
	return d, nil
}

// DocList implements dispatch.DocStore.
func (s *Store) DocList(ctx context.Context, kind string) ([]*dispatch.Doc, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, data, version, created_at, updated_at FROM docs WHERE kind = ? ORDER BY id`, kind)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", kind, err)
	}
	defer rows.Close()
	var out []*dispatch.Doc
	for rows.Next() {
		d := &dispatch.Doc{Kind: kind}
		var created, updated int64
		if err := rows.Scan(&d.ID, &d.Data, &d.Version, &created, &updated); err != nil {
			return nil, fmt.Errorf("list %s: %w", kind, err)
		}
		d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
		out = append(out, d)
	}
	return out, rows.Err()
}

// DocUpdate implements dispatch.DocStore.
func (s *Store) DocUpdate(ctx context.Context, d *dispatch.Doc) error {
	err := s.w.do(ctx, func(tx *wtx) error {
		n, err := tx.exec(`UPDATE docs SET data = ?, version = version + 1, updated_at = ?
			WHERE kind = ? AND id = ? AND version = ?`, d.Data, d.UpdatedAt.UnixNano(), d.Kind, d.ID, d.Version)
		if err != nil || n == 1 {
			return err
		}
		if _, err := tx.queryRow(`SELECT 1 FROM docs WHERE kind = ? AND id = ?`, d.Kind, d.ID); errors.Is(err, sql.ErrNoRows) {
			return dispatch.ErrNotFound
		} else if err != nil {
			return err
		}
		return dispatch.ErrDocConflict
	})
	if err != nil {
		return fmt.Errorf("update %s %s: %w", d.Kind, d.ID, err)
	}
	d.Version++
	return nil
}

// DocDelete implements dispatch.DocStore.
func (s *Store) DocDelete(ctx context.Context, kind, id string) error {
	err := s.w.do(ctx, func(tx *wtx) error {
		n, err := tx.exec(`DELETE FROM docs WHERE kind = ? AND id = ?`, kind, id)
		if err == nil && n == 0 {
			return dispatch.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, id, err)
	}
	return nil
}
