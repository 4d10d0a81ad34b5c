package storeutil

import (
	"time"

	"fanout/dispatch"
)

// The drivers' shared part of CallAttach (dispatch.Store).

// AttachByParent groups the indexes of calls by their parent, parents in
// the order they first appear.
func AttachByParent(calls []*dispatch.Call) (parents []string, members map[string][]int) {
	members = make(map[string][]int)
	for i, c := range calls {
		if _, ok := members[c.ParentID]; !ok {
			parents = append(parents, c.ParentID)
		}
		members[c.ParentID] = append(members[c.ParentID], i)
	}
	return parents, members
}

// SetAttachOutcome sets the outcome of the children at these indexes.
func SetAttachOutcome(res []dispatch.AttachResult, indexes []int, o dispatch.AttachOutcome) {
	for _, i := range indexes {
		res[i].Outcome = o
	}
}

// AttachRepeats reports whether c repeats, by the rule of unless, a child
// kept before it in the same attach (the children at indexes kept).
func AttachRepeats(calls []*dispatch.Call, kept []int, c *dispatch.Call, unless dispatch.AttachUnless) bool {
	if unless == dispatch.AttachAlways {
		return false
	}
	for _, k := range kept {
		if calls[k].Key == c.Key && (unless == dispatch.AttachUnlessKey || calls[k].Tag == c.Tag) {
			return true
		}
	}
	return false
}

// AttachRows makes the rows of the children kept (indexes into calls) as
// the gather-th gather of parent, with the parent's meta.
func AttachRows(calls []*dispatch.Call, kept []int, parent string, gather int, meta []byte, now time.Time) []*dispatch.Call {
	rows := make([]*dispatch.Call, len(kept))
	for j, i := range kept {
		c := calls[i]
		rows[j] = &dispatch.Call{ID: dispatch.ChildID(parent, gather, j), Function: c.Function, Key: c.Key, OutOfOrder: c.OutOfOrder,
			Input: c.Input, Tag: c.Tag, Meta: meta, ParentID: parent, Gather: gather, Index: j, RunAfter: now,
			BudgetStart: now, CreatedAt: now, UpdatedAt: now}
	}
	return rows
}
