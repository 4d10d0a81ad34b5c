package dispatch

import (
	"context"
	"time"
)

// HistoryStore is a store that can walk the history of top-level calls.
type HistoryStore interface {
	CallScan(ctx context.Context, params *CallScanParams) (*CallScanResult, error)
}

// Reading the history of top-level calls, for an application's listings
// (fanout's list of events, and the pages of a replay): HistoryStore, a
// capability of a store that the runtime does not need (both drivers have
// it, and say so to the compiler).
//
// A scan walks top-level calls of one function in id order and keeps those
// that match every filter given. Its cost is bounded by Scan: it examines at
// most that many calls, and says where it stopped (Next), so that a filter
// that matches rarely costs a bounded time per request instead of a walk of
// the whole history. Filters a store can answer from an index (a driver
// says which) examine only the calls that match them.

// CallScanParams are the arguments of CallScan.
type CallScanParams struct {
	Function string
	// Before and After bound the ids, exclusively ("" is unbounded). The
	// scan walks down from Before, or up from After when Ascending.
	Before, After string
	Ascending     bool
	// Key, when set, keeps calls of this Key.
	Key *string
	// CreatedAfter (inclusive) and CreatedBefore (exclusive) bound the
	// calls' creation; zero is unbounded.
	CreatedAfter, CreatedBefore time.Time
	// Tags keeps calls whose Tag is one of these; TagPrefixes, those
	// whose Tag starts with one of these. Both empty: any tag. A call
	// passes if it matches either list.
	Tags, TagPrefixes []string
	// States keeps calls in one of these states; empty: any.
	States []State
	// ChildKey keeps calls that have a child of this Key.
	ChildKey string
	// Contains keeps calls whose input contains this text, ASCII letters
	// in either case.
	Contains string
	// WithInput returns the inputs of the calls kept; MaxInputBytes, when
	// positive, ends the scan once the inputs returned reach it.
	WithInput     bool
	MaxInputBytes int
	// CountChildren counts each kept call's children by state.
	CountChildren bool
	// Limit is the most calls returned; Scan the most examined (0: as many
	// as it takes, which the caller must bound otherwise).
	Limit, Scan int
}

// CallScanResult is what CallScan found.
type CallScanResult struct {
	Calls []*ScannedCall
	// Next is the id the scan stopped at, to pass as Before (After when
	// Ascending) to go on; "" when no call is left in the range.
	Next string
	// Scanned is how many calls it examined.
	Scanned int
}

// ScannedCall is a call a scan kept: the call without its input (unless
// asked), the input's size, and its children by state.
type ScannedCall struct {
	Call     *Call
	Size     int
	Children [StateFailed + 1]int
}
