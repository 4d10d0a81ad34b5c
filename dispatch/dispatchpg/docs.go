package dispatchpg

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

// The documents of dispatch.DocStore. The two drivers hold the same five
// methods, one statement each, in their own SQL and driver API (the SQLite
// writer's raw statements, pgx here and there): what they share is the
// shape, which a common helper would only hide behind callbacks.

// DocCreate implements dispatch.DocStore.
func (s *Store) DocCreate(ctx context.Context, d *dispatch.Doc) error {
	now := d.CreatedAt.UnixNano()
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		tag, err := s.exec(ctx, conn, `INSERT INTO docs (kind, id, data, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)
			ON CONFLICT (kind, id) DO NOTHING`, d.Kind, d.ID, nonNil(d.Data), now)
		if err == nil && tag.RowsAffected() == 0 {
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

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// DocGet implements dispatch.DocStore.
func (s *Store) DocGet(ctx context.Context, kind, id string) (*dispatch.Doc, error) {
	d := &dispatch.Doc{Kind: kind, ID: id}
	var created, updated int64
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, `SELECT data, version, created_at, updated_at FROM docs WHERE kind = $1 AND id = $2`,
			kind, id).Scan(&d.Data, &d.Version, &created, &updated)
	})
	if errors.Is(err, pgx.ErrNoRows) {
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
	var out []*dispatch.Doc
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		out = out[:0]
		rows, err := conn.Query(ctx, `SELECT id, data, version, created_at, updated_at FROM docs WHERE kind = $1 ORDER BY id`, kind)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			d := &dispatch.Doc{Kind: kind}
			var created, updated int64
			if err := rows.Scan(&d.ID, &d.Data, &d.Version, &created, &updated); err != nil {
				return err
			}
			d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
			out = append(out, d)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", kind, err)
	}
	return out, nil
}

// DocUpdate implements dispatch.DocStore.
func (s *Store) DocUpdate(ctx context.Context, d *dispatch.Doc) error {
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		tag, err := s.exec(ctx, conn, `UPDATE docs SET data = $1, version = version + 1, updated_at = $2
			WHERE kind = $3 AND id = $4 AND version = $5`, nonNil(d.Data), d.UpdatedAt.UnixNano(), d.Kind, d.ID, d.Version)
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		var one int
		err = conn.QueryRow(ctx, `SELECT 1 FROM docs WHERE kind = $1 AND id = $2`, d.Kind, d.ID).Scan(&one)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return dispatch.ErrNotFound
		case err != nil:
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
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		tag, err := s.exec(ctx, conn, `DELETE FROM docs WHERE kind = $1 AND id = $2`, kind, id)
		if err == nil && tag.RowsAffected() == 0 {
			return dispatch.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, id, err)
	}
	return nil
}
