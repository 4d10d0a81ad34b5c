package storeutil

import (
	"time"

	"fanout/dispatch"
)

// RetentionRoot is a top-level call as retention walks them: in the order
// they were stored (Seq, a rowid or an identity column), which is their
// order of creation but for calls stored at the same moment.
type RetentionRoot struct {
	Seq       int64
	ID        string
	State     dispatch.State
	CreatedAt time.Time
}

// retentionPage is how many top-level calls one read of the walk takes.
const retentionPage = 500

// WalkRetention is the part of CallDeleteFinished (dispatch.Store) that
// every Store shares: it walks top-level calls in the order they were
// stored, from after mark, reading a page at a time with next (up to n calls
// whose Seq is greater than after, in Seq order), and returns up to limit
// ids of calls in state target that were created before before, and the new
// mark.
//
// It walks no further than the first call created at or after before, so
// that it needs no index on age. The mark is the Seq before which nothing is
// left to delete by this rule: it stops at the first call that is not
// final, so that a later pass sees that call again once it is, while the
// walk itself goes on past it (calls kept by the rule, in the other final
// state, are passed over).
func WalkRetention(mark int64, before time.Time, target dispatch.State, limit int,
	next func(after int64, n int) ([]RetentionRoot, error)) (ids []string, newMark int64, err error) {
	cursor, blocked := mark, false
	for len(ids) < limit {
		roots, err := next(cursor, retentionPage)
		if err != nil {
			return nil, mark, err
		}
		for _, r := range roots {
			if !r.CreatedAt.Before(before) {
				return ids, mark, nil
			}
			switch {
			case r.State == target:
				ids = append(ids, r.ID)
			case !r.State.Final():
				blocked = true
			}
			if !blocked {
				mark = r.Seq
			}
			cursor = r.Seq
			if len(ids) == limit {
				return ids, mark, nil
			}
		}
		if len(roots) < retentionPage {
			break
		}
	}
	return ids, mark, nil
}
