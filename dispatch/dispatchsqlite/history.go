package dispatchsqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"fanout/dispatch"
	"fanout/dispatch/internal/storeutil"
)

// CallScan walks top-level calls (see dispatch.CallScanParams). Filters
// with an index behind them narrow the walk itself: a root key (always) and,
// with a key, the failed state (calls_failed). Tags are matched while
// walking: migration 006 dropped the index of roots by tag (62 B per event). The others are computed for each call walked, which
// Scan bounds.
func (s *Store) CallScan(ctx context.Context, p *dispatch.CallScanParams) (*dispatch.CallScanResult, error) {
	var where, match []string
	var whereArgs, matchArgs []any
	where = append(where, "function = ?", "parent_id IS NULL")
	whereArgs = append(whereArgs, p.Function)
	if p.Before != "" {
		where = append(where, "id < ?")
		whereArgs = append(whereArgs, p.Before)
	}
	if p.After != "" {
		where = append(where, "id > ?")
		whereArgs = append(whereArgs, p.After)
	}
	if p.Key != nil {
		where = append(where, "key = ?")
		whereArgs = append(whereArgs, *p.Key)
	}
	if !p.CreatedAfter.IsZero() {
		match = append(match, "created_at >= ?")
		matchArgs = append(matchArgs, p.CreatedAfter.UnixNano())
	}
	if !p.CreatedBefore.IsZero() {
		match = append(match, "created_at < ?")
		matchArgs = append(matchArgs, p.CreatedBefore.UnixNano())
	}
	index := ""
	switch {
	case len(p.Tags) > 0 || len(p.TagPrefixes) > 0:
		var anyOf []string
		for _, t := range p.Tags {
			anyOf = append(anyOf, "tag = ?")
			matchArgs = append(matchArgs, t)
		}
		for _, t := range p.TagPrefixes {
			// substr counts characters in text.
			anyOf = append(anyOf, "substr(tag, 1, ?) = ?")
			matchArgs = append(matchArgs, utf8.RuneCountInString(t), t)
		}
		match = append(match, "("+strings.Join(anyOf, " OR ")+")")
	}
	switch {
	case len(p.States) == 1 && p.States[0] == dispatch.StateFailed && p.Key != nil && index == "":
		where = append(where, "state = 4")
		index = " INDEXED BY calls_failed"
	case len(p.States) > 0:
		match = append(match, "state IN ("+placeholders(len(p.States))+")")
		for _, st := range p.States {
			matchArgs = append(matchArgs, int(st))
		}
	}
	if p.ChildKey != "" {
		// Children's ids extend their parent's ("<parent>.<gather>.<index>"):
		// the primary key finds them as a range, with or without an index
		// on parent_id.
		match = append(match, "EXISTS (SELECT 1 FROM calls ch WHERE ch.id > calls.id || '.' AND ch.id < calls.id || '/' "+
			"AND ch.parent_id IN (calls.id, '') AND ch.key = ?)")
		matchArgs = append(matchArgs, p.ChildKey)
	}
	if p.Contains != "" {
		match = append(match, `CAST(input AS TEXT) LIKE ? ESCAPE '\'`)
		matchArgs = append(matchArgs, "%"+storeutil.EscapeLike(p.Contains)+"%")
	}
	m := "1"
	if len(match) > 0 {
		m = strings.Join(match, " AND ")
	}
	order := "DESC"
	if p.Ascending {
		order = "ASC"
	}
	var q strings.Builder
	args := append([]any(nil), matchArgs...)
	q.WriteString(`SELECT id, key, tag, state, error, gathers, created_at, updated_at, length(input), coalesce((` + m + `), 0) AS m`)
	if p.WithInput {
		q.WriteString(`, CASE WHEN (` + m + `) THEN input END`)
		args = append(args, args[:len(matchArgs)]...)
	}
	q.WriteString(` FROM calls` + index + ` WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id ` + order)
	args = append(args, whereArgs...)
	if p.Scan > 0 {
		q.WriteString(` LIMIT ?`)
		args = append(args, p.Scan+1) // one more: is there anything past the bound?
	}
	rows, err := s.rdb.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("scan calls: %w", err)
	}
	defer rows.Close()
	res := &dispatch.CallScanResult{}
	last, full, inputBytes := "", false, 0
	for rows.Next() {
		if p.Scan > 0 && res.Scanned == p.Scan {
			full = true // more are left past the bound
			break
		}
		var c dispatch.Call
		var tag, errText sql.NullString
		var state, size int
		var created, updated int64
		var matched bool
		dest := []any{&c.ID, &c.Key, &tag, &state, &errText, &c.Gathers, &created, &updated, &size, &matched}
		if p.WithInput {
			dest = append(dest, &c.Input)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("scan calls: %w", err)
		}
		res.Scanned++
		last = c.ID
		if !matched {
			continue
		}
		c.Function, c.Tag, c.State, c.Error = p.Function, tag.String, dispatch.State(state), errText.String
		c.CreatedAt, c.UpdatedAt = fromNanos(created), fromNanos(updated)
		res.Calls = append(res.Calls, &dispatch.ScannedCall{Call: &c, Size: size})
		inputBytes += len(c.Input)
		if (p.Limit > 0 && len(res.Calls) >= p.Limit) || (p.MaxInputBytes > 0 && inputBytes >= p.MaxInputBytes) {
			full = true
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan calls: %w", err)
	}
	rows.Close()
	if full {
		res.Next = last
	}
	if p.CountChildren && len(res.Calls) > 0 {
		if err := s.countChildren(ctx, res.Calls); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// countChildren counts the children of calls by state: a range of the
// primary key each (children's ids extend their parent's).
func (s *Store) countChildren(ctx context.Context, calls []*dispatch.ScannedCall) error {
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return fmt.Errorf("count children: %w", err)
	}
	defer conn.Close()
	stmt, err := conn.PrepareContext(ctx, `SELECT state, count(*) FROM calls
		WHERE `+childrenRange+` GROUP BY state`)
	if err != nil {
		return fmt.Errorf("count children: %w", err)
	}
	defer stmt.Close()
	for _, c := range calls {
		if err := countChildrenOf(ctx, stmt, c); err != nil {
			return fmt.Errorf("count children: %w", err)
		}
	}
	return nil
}

func countChildrenOf(ctx context.Context, stmt *sql.Stmt, c *dispatch.ScannedCall) error {
	rows, err := stmt.QueryContext(ctx, c.Call.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var state, n int
		if err := rows.Scan(&state, &n); err != nil {
			return err
		}
		if state >= 0 && state < len(c.Children) {
			c.Children[state] = n
		}
	}
	return rows.Err()
}

// CallAttach implements dispatch.Store.
func (s *Store) CallAttach(ctx context.Context, p *dispatch.CallAttachParams) ([]dispatch.AttachResult, error) {
	order, groups := storeutil.AttachByParent(p.Calls)
	now := p.Now.UnixNano()
	res := make([]dispatch.AttachResult, len(p.Calls))
	err := s.w.do(ctx, func(tx *wtx) error {
		clear(res) // the op may run again, after a failed group commit
		for _, parent := range order {
			members := groups[parent]
			row, err := tx.queryRow(`SELECT state, gathers, `+metaColumn+`, plan IS NOT NULL FROM calls WHERE id = ?`, parent)
			if errors.Is(err, sql.ErrNoRows) {
				storeutil.SetAttachOutcome(res, members, dispatch.AttachNoParent)
				continue
			}
			if err != nil {
				return err
			}
			state, gathers, meta := dispatch.State(asInt(row[0])), int(asInt(row[1])), asBytes(row[2])
			// A parent whose local calls run (its plan) is as busy as a
			// running one: its children's rows are still to come.
			if state == dispatch.StateRunning || (state == dispatch.StatePending && gathers == 0) || asInt(row[3]) != 0 {
				storeutil.SetAttachOutcome(res, members, dispatch.AttachBusy)
				continue
			}
			var kept []int
			for _, i := range members {
				c := p.Calls[i]
				skip := storeutil.AttachRepeats(p.Calls, kept, c, p.Unless)
				if !skip && p.Unless != dispatch.AttachAlways {
					// The parent's children: a range of the primary key.
					q := `SELECT 1 FROM calls WHERE ` + childrenRange + ` AND key = ?2 LIMIT 1`
					args := []any{parent, c.Key}
					if p.Unless == dispatch.AttachUnlessKeyTag {
						q = `SELECT 1 FROM calls WHERE ` + childrenRange + ` AND key = ?2 AND tag IS ?3 LIMIT 1`
						args = append(args, nullIfEmpty(c.Tag))
					}
					_, err := tx.queryRow(q, args...)
					switch {
					case err == nil:
						skip = true
					case !errors.Is(err, sql.ErrNoRows):
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
			rows := storeutil.AttachRows(p.Calls, kept, parent, gathers, meta, p.Now)
			if _, err := insert(tx, rows, false, nil); err != nil {
				return err
			}
			if _, err := tx.exec(`UPDATE calls SET waiting = CASE state WHEN 2 THEN waiting + ? ELSE ? END, state = 2,
					gathers = ?, error = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?
				WHERE id = ?`, len(kept), len(kept), gathers+1, now, parent); err != nil {
				return err
			}
			for j, i := range kept {
				res[i] = dispatch.AttachResult{Outcome: dispatch.Attached, ID: rows[j].ID}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("attach calls: %w", err)
	}
	return res, nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
