package storeutil

import "fanout/dispatch"

// ResolveDedup is the part of deduplication that every Store shares (see
// dispatch.CallInsertParams.DedupSince): given the calls of one insert, it
// returns those to store, and sets ids[i] to the call that a duplicate
// repeats, or to "" for the child of a duplicate, which is not stored
// either. A key that appears twice in one insert keeps its first call.
//
// claim is the store's part, run in the insert's transaction for each
// top-level call with a DedupKey: it records the key as c's unless a call
// stored since DedupSince holds it, and returns the id of the call that
// holds the key now (c.ID when c got it).
func ResolveDedup(calls []*dispatch.Call, ids []string, claim func(c *dispatch.Call) (holder string, err error)) ([]*dispatch.Call, error) {
	var dups map[string]bool
	seen := map[string]string{} // key -> call id, within this insert
	for i, c := range calls {
		if c.DedupKey == "" || c.ParentID != "" {
			continue
		}
		holder, ok := seen[c.DedupKey]
		if !ok {
			var err error
			if holder, err = claim(c); err != nil {
				return nil, err
			}
			seen[c.DedupKey] = holder
		}
		if holder != c.ID {
			if dups == nil {
				dups = map[string]bool{}
			}
			ids[i], dups[c.ID] = holder, true
		}
	}
	if len(dups) == 0 {
		return calls, nil
	}
	rows := make([]*dispatch.Call, 0, len(calls))
	for i, c := range calls {
		switch {
		case dups[c.ID]:
		case dups[c.ParentID]:
			ids[i] = ""
		default:
			rows = append(rows, c)
		}
	}
	return rows, nil
}
