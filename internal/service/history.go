package service

import (
	"context"
	"encoding/base64"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
	"unicode/utf8"

	"fanout/dispatch"
)

// The history of events: GET /v1/events lists them newest first, with
// filters, page by page.
//
// A page is bounded in cost, not only in size: it walks at most
// historyScanBudget events (fewer with a text search, which reads each
// payload) and for at most historyTimeBudget, and a filter that matches
// rarely answers what it found so far with a cursor to go on and the time
// it searched back to. Filters with an index behind them (one exact type,
// the failed state) walk only what matches. Since ids are time-ordered
// (UUIDv7), since and until bound the walk itself.

// Bounds of one page of the history.
const (
	historyScanBudget     = 50000 // events walked per request
	HistoryTextScanBudget = 20000 // with q: each payload is read
	historyTimeBudget     = 500 * time.Millisecond
	historyChunk          = 5000 // events walked per store query
	maxQueryLength        = 200
)

// EventFilter selects events: the query of GET /v1/events.
type EventFilter struct {
	// Type is an event type, "prefix.*", or several separated by commas.
	Type        string
	State       string
	Destination string
	Since       string
	Until       string
	// Q is text the payload contains (ASCII letters in either case).
	Q string
	// scope is the tenant the page is of ("*": every tenant), which its
	// cursor is bound to as to the filters.
	scope string
}

// eventSummary is an event in a list: never its payload.
type eventSummary struct {
	ID         string         `json:"id"`
	ReceivedAt time.Time      `json:"received_at"`
	Type       string         `json:"type,omitempty"`
	Size       int            `json:"size"`
	State      string         `json:"state"`
	Deliveries DeliveryCounts `json:"deliveries"`
}

// DeliveryCounts counts an event's deliveries by state.
type DeliveryCounts struct {
	Pending    int `json:"pending"`
	Delivering int `json:"delivering"`
	Delivered  int `json:"delivered"`
	Failed     int `json:"failed"`
}

// EventPage is one page of the history.
type EventPage struct {
	Events []eventSummary `json:"events"`
	// NextCursor continues the same query where this page stopped.
	NextCursor string `json:"next_cursor,omitempty"`
	// Scanned is how many events this page walked; SearchedTo, when the
	// walk stopped at its bound before the page was full, how far back
	// (newest first) it searched: ask for the next page to search older.
	Scanned    int        `json:"scanned"`
	SearchedTo *time.Time `json:"searched_to,omitempty"`
	Retention  retention  `json:"retention"`
}

// retention says how long events are kept, so that a user knows how far
// back the history and a replay reach.
type retention struct {
	// Delivered and Failed are Go durations, or "forever".
	Delivered string `json:"delivered"`
	Failed    string `json:"failed"`
	// DeliveredSince is the oldest arrival time a delivered event can
	// still be found at; absent when they are kept forever.
	DeliveredSince *time.Time `json:"delivered_since,omitempty"`
}

func (s *Service) retentionView(now time.Time) retention {
	r := retention{Delivered: "forever", Failed: "forever"}
	if s.retention > 0 {
		r.Delivered = s.retention.String()
		since := now.Add(-s.retention).UTC().Truncate(time.Second)
		r.DeliveredSince = &since
	}
	if s.failedRetention > 0 {
		r.Failed = s.failedRetention.String()
	}
	return r
}

// eventStatesByName are the runtime states of each event state.
var eventStatesByName = map[string][]dispatch.State{
	"pending":    {dispatch.StatePending, dispatch.StateRunning},
	"delivering": {dispatch.StateWaiting},
	"delivered":  {dispatch.StateDone},
	"failed":     {dispatch.StateFailed},
}

// scopedStatesByName are the runtime states an event may be in when a
// tenant sees it in each state (scopedState): its own deliveries may have
// ended while the operator's all-tenant destinations are still at work
// (waiting), or failed there (failed). A tenant's state filter scans
// these and keeps the events whose state, as it sees it, is the one asked:
// scanning by the event's own state would list events the operator's
// destination failed as failed, and tell a tenant of them.
var scopedStatesByName = map[string][]dispatch.State{
	"pending":    {dispatch.StatePending, dispatch.StateRunning},
	"delivering": {dispatch.StateWaiting},
	"delivered":  {dispatch.StateWaiting, dispatch.StateDone, dispatch.StateFailed},
	"failed":     {dispatch.StateWaiting, dispatch.StateFailed},
}

// typeFilter parses a comma-separated list of event types (exact, or
// "prefix.*"; "*" is any) into tags and tag prefixes; any is true for "*".
func typeFilter(s string) (tags, prefixes []string, anyType bool, err error) {
	if n := strings.Count(s, ",") + 1; n > MaxTypePatterns {
		return nil, nil, false, Invalid("type has %d patterns; at most %d", n, MaxTypePatterns)
	}
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
			continue
		case t == "*":
			anyType = true
		case len(t) > 200 || !utf8.ValidString(t):
			return nil, nil, false, Invalid("type %q: types are up to 200 characters of UTF-8", t)
		case strings.HasSuffix(t, "*"):
			if strings.Contains(t[:len(t)-1], "*") {
				return nil, nil, false, Invalid("type %q: only a trailing * is allowed (order.*)", t)
			}
			prefixes = append(prefixes, t[:len(t)-1])
		case strings.Contains(t, "*"):
			return nil, nil, false, Invalid("type %q: only a trailing * is allowed (order.*)", t)
		default:
			tags = append(tags, t)
		}
	}
	if anyType {
		return nil, nil, true, nil
	}
	return tags, prefixes, false, nil
}

// Times of queries and bodies are refused outside the years that a store's
// timestamps (nanoseconds since 1970 in an int64, up to 2262) and ids
// (UUIDv7, milliseconds since 1970) can compare with: past the end, a
// conversion wraps and a filter silently selects the wrong events.
var (
	earliestTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	latestTime   = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
)

// MaxTypePatterns bounds the patterns of one type filter: each is a
// condition of the store's query, and a store refuses a query with a few
// thousand (SQLite: "Expression tree is too large").
const MaxTypePatterns = 100

// parseTime reads an RFC 3339 time of a query or a body.
func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, Invalid("%s must be an RFC 3339 time like 2026-11-28T10:00:00Z, not %q", name, v)
	}
	if t.Before(earliestTime) || !t.Before(latestTime) {
		return time.Time{}, Invalid("%s %q is outside the years 1970 to 2261 that fanout can compare", name, v)
	}
	return t, nil
}

// idAt is the prefix that UUIDv7 ids made at t (to the millisecond) start
// with: every id made at or after t's millisecond sorts after it, every id
// made before sorts before.
func idAt(t time.Time) string {
	ms := uint64(min(max(t.UnixMilli(), 0), 1<<48-1)) // the 48 bits of a UUIDv7's time
	return fmt.Sprintf("%08x-%04x", ms>>16, ms&0xffff)
}

// scanParams turns a filter into the store's scan.
func (s *Service) scanParams(ctx context.Context, scope Scope, f EventFilter) (*dispatch.CallScanParams, error) {
	p := &dispatch.CallScanParams{Function: s.fns.HandleEvent.Name(), CountChildren: true}
	// An event's key is its tenant's (tenants.go).
	switch {
	case !scope.All():
		key, err := s.tenants.key(ctx, scope.Tenant())
		if err != nil {
			return nil, err
		}
		p.Key = &key
	case !s.tenants.any():
		none := "" // every event is the default tenant's; it narrows the failed state to calls_failed
		p.Key = &none
	}
	var err error
	var anyType bool
	if p.Tags, p.TagPrefixes, anyType, err = typeFilter(f.Type); err != nil {
		return nil, err
	}
	if anyType {
		// "*" is any typed event: a prefix of nothing.
		p.TagPrefixes = []string{""}
	}
	if f.State != "" {
		states, ok := eventStatesByName[f.State]
		if !ok {
			return nil, Invalid("state must be pending, delivering, delivered or failed, not %q", f.State)
		}
		p.States = states
		if !scope.All() {
			p.States = scopedStatesByName[f.State] // Events keeps those in f.State as the tenant sees it
		}
	}
	if f.Destination != "" {
		if _, err := s.Destination(scope, f.Destination); err != nil {
			return nil, err
		}
		p.ChildKey = f.Destination
	}
	if p.CreatedAfter, err = parseTime("since", f.Since); err != nil {
		return nil, err
	}
	if p.CreatedBefore, err = parseTime("until", f.Until); err != nil {
		return nil, err
	}
	if !p.CreatedAfter.IsZero() && !p.CreatedBefore.IsZero() && !p.CreatedAfter.Before(p.CreatedBefore) {
		return nil, Invalid("since must be before until")
	}
	if !p.CreatedBefore.IsZero() {
		p.Before = idAt(p.CreatedBefore.Add(time.Millisecond))
	}
	if !p.CreatedAfter.IsZero() {
		p.After = idAt(p.CreatedAfter.Add(-time.Millisecond))
	}
	if n := utf8.RuneCountInString(f.Q); n > maxQueryLength || !utf8.ValidString(f.Q) {
		return nil, Invalid("q is a text of up to %d characters", maxQueryLength)
	}
	p.Contains = f.Q
	return p, nil
}

// historyCursor encodes where a page stopped, bound to the filter it was
// issued for: a cursor used with other filters would skip events.
func historyCursor(f EventFilter, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%08x.%s", filterHash(f), id)))
}

func filterHash(f EventFilter) uint32 {
	h := fnv.New32a()
	for _, v := range []string{f.Type, f.State, f.Destination, f.Since, f.Until, f.Q, f.scope} {
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	return h.Sum32()
}

func parseHistoryCursor(f EventFilter, cursor string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	hash, id, ok := strings.Cut(string(b), ".")
	if err != nil || !ok || id == "" {
		return "", Invalid("cursor is not one this API gave; start from the first page (no cursor)")
	}
	if hash != fmt.Sprintf("%08x", filterHash(f)) {
		return "", Invalid("cursor belongs to a query with other filters; start from the first page (no cursor)")
	}
	return id, nil
}

// Events returns a page of the events f selects, newest first, after
// cursor, at most limit.
func (s *Service) Events(ctx context.Context, scope Scope, f EventFilter, cursor string, limit int) (*EventPage, error) {
	f.scope = "*"
	if !scope.All() {
		f.scope = scope.Tenant()
	}
	p, err := s.scanParams(ctx, scope, f)
	if err != nil {
		return nil, err
	}
	if cursor != "" {
		id, err := parseHistoryCursor(f, cursor)
		if err != nil {
			return nil, err
		}
		if p.Before == "" || id < p.Before {
			p.Before = id
		}
	}
	budget := historyScanBudget
	if p.Contains != "" {
		budget = HistoryTextScanBudget
	}
	start := time.Now()
	page := &EventPage{Events: []eventSummary{}, Retention: s.retentionView(start)}
	for {
		p.Limit = limit - len(page.Events)
		p.Scan = min(historyChunk, budget-page.Scanned)
		res, err := s.store.CallScan(ctx, p)
		if err != nil {
			return nil, err
		}
		page.Scanned += res.Scanned
		for _, c := range res.Calls {
			e := eventSummaryOf(c)
			if !scope.All() {
				// The counts are of every delivery, those to the
				// operator's destinations (deleted ones too): a
				// tenant's are its own.
				if e.Deliveries, err = s.scopedCounts(ctx, scope, c.Call.ID); err != nil {
					return nil, err
				}
				e.State = scopedState(e.State, e.Deliveries)
				if f.State != "" && e.State != f.State {
					continue // in the state asked for the operator's destinations only
				}
			}
			page.Events = append(page.Events, e)
		}
		if res.Next == "" {
			return page, nil
		}
		p.Before = res.Next
		if len(page.Events) >= limit || page.Scanned >= budget || time.Since(start) >= historyTimeBudget {
			break
		}
	}
	page.NextCursor = historyCursor(f, p.Before)
	if len(page.Events) < limit {
		// Stopped at its bound: say how far back it looked, from the id
		// (a UUIDv7 carries its time).
		if t, ok := idTime(p.Before); ok {
			page.SearchedTo = &t
		}
	}
	return page, nil
}

// idTime is the time a UUIDv7 id was made at.
func idTime(id string) (time.Time, bool) {
	var hi, lo uint64
	if len(id) < 13 || id[8] != '-' {
		return time.Time{}, false
	}
	if _, err := fmt.Sscanf(id[:13], "%08x-%04x", &hi, &lo); err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(hi<<16 | lo)).UTC(), true
}

func eventSummaryOf(c *dispatch.ScannedCall) eventSummary {
	return eventSummary{ID: c.Call.ID, ReceivedAt: c.Call.CreatedAt, Type: c.Call.Tag, Size: c.Size,
		State: eventState(c.Call.State), Deliveries: DeliveryCounts{
			Pending:    c.Children[dispatch.StatePending],
			Delivering: c.Children[dispatch.StateRunning],
			Delivered:  c.Children[dispatch.StateDone],
			Failed:     c.Children[dispatch.StateFailed],
		}}
}

// scopedCounts counts an event's deliveries in scope.
func (s *Service) scopedCounts(ctx context.Context, scope Scope, id string) (DeliveryCounts, error) {
	children, err := s.store.CallListChildren(ctx, id)
	if err != nil {
		return DeliveryCounts{}, err
	}
	var n DeliveryCounts
	for _, c := range children {
		if !s.destinationInScope(scope, c.Key) {
			continue
		}
		switch c.State {
		case dispatch.StatePending:
			n.Pending++
		case dispatch.StateRunning:
			n.Delivering++
		case dispatch.StateDone:
			n.Delivered++
		case dispatch.StateFailed:
			n.Failed++
		}
	}
	return n, nil
}

// scopedState is an event's state as a tenant sees it, from its own
// deliveries (counts): one the operator's destination failed is not failed
// for the tenant. An event not fanned out yet is pending for everyone.
func scopedState(state string, n DeliveryCounts) string {
	switch {
	case state == "pending":
		return state
	case n.Failed > 0:
		return "failed"
	case n.Pending+n.Delivering > 0:
		return "delivering"
	}
	return "delivered"
}
