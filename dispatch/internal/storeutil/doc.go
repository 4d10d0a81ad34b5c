// Package storeutil holds the parts of a dispatch.Store that the drivers
// (dispatchsqlite, dispatchpg) share: deduplication (ResolveDedup), the walk
// of retention (WalkRetention), the bookkeeping of CallAttach
// (AttachByParent, AttachRepeats, AttachRows, SetAttachOutcome) and the
// escaping of a LIKE pattern (EscapeLike). They work on dispatch's exported
// types only; they live here, under internal, so that they are not part of
// dispatch's API: only packages under dispatch/ can import them.
package storeutil
