package dispatchpg

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// CallScan walks top-level calls (see dispatch.CallScanParams). As in the
// SQLite store (until its migration 006), a root key, a single tag (calls_roots_tag)
// and, with a key, the failed state (calls_failed) narrow the walk through
// an index; the other filters are computed for each call walked, which Scan
// bounds.
func (s *Store) CallScan(ctx context.Context, p *dispatch.CallScanParams) (*dispatch.CallScanResult, error) {
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	where := []string{"function = " + arg(p.Function), "parent_id IS NULL"}
	if p.Before != "" {
		where = append(where, "id < "+arg(p.Before))
	}
	if p.After != "" {
		where = append(where, "id > "+arg(p.After))
	}
	if p.Key != nil {
		where = append(where, "key = "+arg(*p.Key))
	}
	var match []string
	if !p.CreatedAfter.IsZero() {
		match = append(match, "created_at >= "+arg(p.CreatedAfter.UnixNano()))
	}
	if !p.CreatedBefore.IsZero() {
		match = append(match, "created_at < "+arg(p.CreatedBefore.UnixNano()))
	}
	tagIndex := false
	switch {
	case len(p.Tags) == 1 && len(p.TagPrefixes) == 0:
		where = append(where, "tag = "+arg(p.Tags[0]))
		tagIndex = true
	case len(p.Tags) > 0 || len(p.TagPrefixes) > 0:
		var anyOf []string
		if len(p.Tags) > 0 {
			anyOf = append(anyOf, "tag = ANY("+arg(p.Tags)+"::text[])")
		}
		for _, t := range p.TagPrefixes {
			anyOf = append(anyOf, "starts_with(tag, "+arg(t)+")")
		}
		match = append(match, "("+strings.Join(anyOf, " OR ")+")")
	}
	switch {
	case len(p.States) == 1 && p.States[0] == dispatch.StateFailed && p.Key != nil && !tagIndex:
		where = append(where, "state = 4")
	case len(p.States) > 0:
		states := make([]int16, len(p.States))
		for i, st := range p.States {
			states[i] = int16(st)
		}
		match = append(match, "state = ANY("+arg(states)+"::smallint[])")
	}
	if p.ChildKey != "" {
		// Children's ids extend their parent's: the primary key finds them
		// as a range, with or without an index on parent_id.
		match = append(match, "EXISTS (SELECT 1 FROM calls ch WHERE ch.id > (calls.id || '.') COLLATE \"C\" "+
			"AND ch.id < (calls.id || '/') COLLATE \"C\" AND ch.parent_id = calls.id AND ch.key = "+arg(p.ChildKey)+")")
	}
	if p.Contains != "" {
		match = append(match, "convert_from(input, 'UTF8') ILIKE "+arg("%"+storeutil.EscapeLike(p.Contains)+"%"))
	}
	m := "true"
	if len(match) > 0 {
		m = strings.Join(match, " AND ")
	}
	order := "DESC"
	if p.Ascending {
		order = "ASC"
	}
	q := `SELECT id, key, tag, state, error, gathers, created_at, updated_at, octet_length(input), coalesce((` + m + `), false)`
	if p.WithInput {
		q += `, CASE WHEN (` + m + `) THEN input END`
	}
	q += ` FROM calls WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id ` + order
	if p.Scan > 0 {
		q += ` LIMIT ` + arg(p.Scan+1) // one more: is there anything past the bound?
	}
	res := &dispatch.CallScanResult{}
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		*res = dispatch.CallScanResult{}
		rows, err := conn.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		last, full, inputBytes := "", false, 0
		for rows.Next() {
			if p.Scan > 0 && res.Scanned == p.Scan {
				full = true // more are left past the bound
				break
			}
			var c dispatch.Call
			var tag, errText *string
			var state int16
			var gathers, size int32
			var created, updated int64
			var matched bool
			dest := []any{&c.ID, &c.Key, &tag, &state, &errText, &gathers, &created, &updated, &size, &matched}
			if p.WithInput {
				dest = append(dest, &c.Input)
			}
			if err := rows.Scan(dest...); err != nil {
				return err
			}
			res.Scanned++
			last = c.ID
			if !matched {
				continue
			}
			c.Function, c.State, c.Gathers = p.Function, dispatch.State(state), int(gathers)
			if tag != nil {
				c.Tag = *tag
			}
			if errText != nil {
				c.Error = *errText
			}
			c.CreatedAt, c.UpdatedAt = fromNanos(created), fromNanos(updated)
			res.Calls = append(res.Calls, &dispatch.ScannedCall{Call: &c, Size: int(size)})
			inputBytes += len(c.Input)
			if (p.Limit > 0 && len(res.Calls) >= p.Limit) || (p.MaxInputBytes > 0 && inputBytes >= p.MaxInputBytes) {
				full = true
				break
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if full {
			res.Next = last
		}
		if !p.CountChildren || len(res.Calls) == 0 {
			return nil
		}
		return countChildren(ctx, conn, res.Calls)
	})
	if err != nil {
		return nil, fmt.Errorf("scan calls: %w", err)
	}
	return res, nil
}

// countChildren counts the children of calls by state, in one query.
func countChildren(ctx context.Context, conn *pgxpool.Conn, calls []*dispatch.ScannedCall) error {
	byID := make(map[string]*dispatch.ScannedCall, len(calls))
	ids := make([]string, len(calls))
	for i, c := range calls {
		byID[c.Call.ID] = c
		ids[i] = c.Call.ID
	}
	// Each parent's children are a range of the primary key.
	rows, err := conn.Query(ctx, `SELECT p.id, c.state, count(*)
		FROM unnest($1::text[]) AS p(id)
		JOIN calls c ON c.id > (p.id || '.') COLLATE "C" AND c.id < (p.id || '/') COLLATE "C" AND c.parent_id = p.id
		GROUP BY p.id, c.state`, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var parent string
		var state int16
		var n int64
		if err := rows.Scan(&parent, &state, &n); err != nil {
			return err
		}
		if c := byID[parent]; c != nil && int(state) < len(c.Children) && state >= 0 {
			c.Children[state] = int(n)
		}
	}
	return rows.Err()
}

// CallAttach implements dispatch.Store. The parents are locked in id
// order, as every writer that locks several calls does, so that two
// attaches, or an attach and a re-drive, cannot deadlock.
func (s *Store) CallAttach(ctx context.Context, p *dispatch.CallAttachParams) ([]dispatch.AttachResult, error) {
	order, groups := storeutil.AttachByParent(p.Calls)
	now := p.Now.UnixNano()
	res := make([]dispatch.AttachResult, len(p.Calls))
	err := s.writeTx(ctx, func(ctx context.Context, tx *rtx) error {
		clear(res)
		type parentRow struct {
			state   dispatch.State
			gathers int
			meta    []byte
			planned bool
		}
		parents := make(map[string]parentRow, len(order))
		rows, err := tx.Query(ctx, `SELECT id, state, gathers, meta, plan IS NOT NULL FROM calls WHERE id = ANY($1::text[])
			ORDER BY id FOR UPDATE`, order)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			var state int16
			var gathers int32
			var meta []byte
			var planned bool
			if err := rows.Scan(&id, &state, &gathers, &meta, &planned); err != nil {
				rows.Close()
				return err
			}
			parents[id] = parentRow{dispatch.State(state), int(gathers), meta, planned}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var insert []*dispatch.Call
		attached := false
		for _, parent := range order {
			members := groups[parent]
			pr, ok := parents[parent]
			switch {
			case !ok:
				storeutil.SetAttachOutcome(res, members, dispatch.AttachNoParent)
				continue
			// A parent whose local calls run (its plan) is as busy as a
			// running one: its children's rows, which an attach checks
			// for repeats, are still to come.
			case pr.state == dispatch.StateRunning || (pr.state == dispatch.StatePending && pr.gathers == 0) || pr.planned:
				storeutil.SetAttachOutcome(res, members, dispatch.AttachBusy)
				continue
			}
			var kept []int
			for _, i := range members {
				c := p.Calls[i]
				skip := storeutil.AttachRepeats(p.Calls, kept, c, p.Unless)
				if !skip && p.Unless != dispatch.AttachAlways {
					// The parent's children: a range of the primary key.
					const children = `id > ($1 || '.') COLLATE "C" AND id < ($1 || '/') COLLATE "C" AND parent_id = $1`
					q, args := `SELECT EXISTS (SELECT 1 FROM calls WHERE `+children+` AND key = $2)`, []any{parent, c.Key}
					if p.Unless == dispatch.AttachUnlessKeyTag {
						q = `SELECT EXISTS (SELECT 1 FROM calls WHERE ` + children + ` AND key = $2 AND tag IS NOT DISTINCT FROM $3)`
						args = append(args, nullIfEmpty(c.Tag))
					}
					if err := tx.QueryRow(ctx, q, args...).Scan(&skip); err != nil {
						return err
					}
				}
				if skip {
					res[i].Outcome = dispatch.AttachSkipped
					continue
				}
				kept = append(kept, i)
			}
			if len(kept) == 0 {
				continue
			}
			rows := storeutil.AttachRows(p.Calls, kept, parent, pr.gathers, pr.meta, p.Now)
			insert = append(insert, rows...)
			if _, err := tx.Exec(ctx, `UPDATE calls SET waiting = CASE state WHEN 2 THEN waiting + $1 ELSE $1 END, state = 2,
					gathers = $2, error = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = $3
				WHERE id = $4`, len(kept), pr.gathers+1, now, parent); err != nil {
				return err
			}
			for j, i := range kept {
				res[i] = dispatch.AttachResult{Outcome: dispatch.Attached, ID: rows[j].ID}
			}
			attached = true
		}
		if !attached {
			return nil
		}
		if _, err := tx.Exec(ctx, insertSQL, toColumns(insert, nil, time.Unix(0, now)).args()...); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, notifySQL, s.channel)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach calls: %w", err)
	}
	return res, nil
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
