package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"fanout/dispatch"
	"fanout/internal/console"
	"fanout/internal/httpapi"
	"fanout/internal/service"
)

// historyFixture stores events as the runtime would leave them (roots of
// handleEvent with their deliveries), with time-ordered ids, and a
// destination for each delivery key.
type historyFixture struct {
	svc  *testService
	ids  map[string]string // by name
	base time.Time
}

func newHistoryFixture(t *testing.T) *historyFixture {
	t.Helper()
	ts := newTestAPI(t)
	ctx := context.Background()
	f := &historyFixture{svc: ts, ids: map[string]string{}, base: time.Now().Add(-time.Hour).UTC().Truncate(time.Second)}
	dests := map[string]string{}
	for _, name := range []string{"a", "b"} {
		u := "https://" + name + ".example.com/hook"
		d, err := ts.svc.CreateDestination(ctx, service.AllTenants(), service.DefaultTenant, &service.DestinationInput{URL: &u})
		if err != nil {
			t.Fatal(err)
		}
		dests[name] = d.ID
	}
	type ev struct {
		name, body string
		state      dispatch.State
		deliveries map[string]dispatch.State // by destination name
	}
	events := []ev{
		{"paid1", `{"type":"order.paid","who":"Alice"}`, dispatch.StateDone, map[string]dispatch.State{"a": dispatch.StateDone}},
		{"refund", `{"type":"order.refunded","note":"50%_off"}`, dispatch.StateFailed, map[string]dispatch.State{"a": dispatch.StateFailed, "b": dispatch.StateDone}},
		{"untyped", `{"hello":"world"}`, dispatch.StateDone, nil},
		{"user", `{"type":"user.created","name":"BOB"}`, dispatch.StateWaiting, map[string]dispatch.State{"b": dispatch.StatePending}},
		{"paid2", `{"type":"order.paid","who":"carol"}`, dispatch.StatePending, nil},
	}
	var calls []*dispatch.Call
	for i, e := range events {
		at := f.base.Add(time.Duration(i) * time.Minute)
		id := uuidAt(t, at)
		f.ids[e.name] = id
		root := &dispatch.Call{ID: id, Function: "handleEvent", Input: []byte(e.body), State: e.state, RunAfter: at, CreatedAt: at,
			Tag: service.EventFields([]byte(e.body)).Type}
		if len(e.deliveries) > 0 {
			root.Gathers = 1
		}
		if e.state == dispatch.StateWaiting {
			root.Waiting = 1
		}
		calls = append(calls, root)
		j := 0
		for _, name := range []string{"a", "b"} {
			st, ok := e.deliveries[name]
			if !ok {
				continue
			}
			c := &dispatch.Call{ID: dispatch.ChildID(id, 0, j), Function: "publishEvent", Key: dests[name], ParentID: id, Index: j,
				State: st, Input: []byte(`{}`), RunAfter: at, CreatedAt: at}
			if st == dispatch.StateDone {
				c.Output = []byte(`{"status":204}`)
			}
			calls = append(calls, c)
			j++
		}
	}
	if _, err := ts.store.CallInsertMany(ctx, &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	f.ids["dest-a"], f.ids["dest-b"] = dests["a"], dests["b"]
	return f
}

// uuidAt is a UUIDv7 made at t.
func uuidAt(t testing.TB, at time.Time) string {
	id, err := uuid.NewV7FromReader(bytes.NewReader(bytes.Repeat([]byte{7}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		id[i] = byte(ms >> (40 - 8*i))
	}
	return id.String()
}

func (f *historyFixture) list(t *testing.T, query string) (int, service.EventPage, string) {
	t.Helper()
	w := f.svc.do(t, "GET", "/v1/events?"+query, "")
	var page service.EventPage
	var e httpapi.ErrorBody
	if w.Code == 200 {
		if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil {
			t.Fatal(err)
		}
	} else {
		_ = json.Unmarshal(w.Body.Bytes(), &e)
	}
	return w.Code, page, e.Error
}

func (f *historyFixture) names(page service.EventPage) []string {
	var out []string
	for _, e := range page.Events {
		for name, id := range f.ids {
			if id == e.ID {
				out = append(out, name)
			}
		}
	}
	return out
}

func TestEvents_Filters(t *testing.T) {
	t.Parallel()
	f := newHistoryFixture(t)
	at := func(m int) string {
		return url.QueryEscape(f.base.Add(time.Duration(m) * time.Minute).Format(time.RFC3339))
	}
	tests := []struct {
		name, query string
		want        []string
	}{
		{"All", "", []string{"paid2", "user", "untyped", "refund", "paid1"}},
		{"Type", "type=order.paid", []string{"paid2", "paid1"}},
		{"TypePrefix", "type=order.*", []string{"paid2", "refund", "paid1"}},
		{"AnyTyped", "type=*", []string{"paid2", "user", "refund", "paid1"}},
		{"Types", "type=user.created,order.refunded", []string{"user", "refund"}},
		{"Pending", "state=pending", []string{"paid2"}},
		{"Delivering", "state=delivering", []string{"user"}},
		{"Delivered", "state=delivered", []string{"untyped", "paid1"}},
		{"Failed", "state=failed", []string{"refund"}},
		{"Destination", "destination=" + f.ids["dest-b"], []string{"user", "refund"}},
		{"Since", "since=" + at(2), []string{"paid2", "user", "untyped"}},
		{"Until", "until=" + at(2), []string{"refund", "paid1"}},
		{"Range", "since=" + at(1) + "&until=" + at(4), []string{"user", "untyped", "refund"}},
		{"Text", "q=bob", []string{"user"}},
		{"TextLiteral", "q=" + url.QueryEscape("50%_"), []string{"refund"}},
		{"Combined", "type=order.*&state=failed&destination=" + f.ids["dest-a"], []string{"refund"}},
		{"None", "q=nowhere", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, page, msg := f.list(t, tt.query)
			if code != 200 {
				t.Fatalf("%d %s", code, msg)
			}
			if got := f.names(page); !slices.Equal(got, tt.want) || page.NextCursor != "" {
				t.Fatalf("got %v (next %q), want %v", got, page.NextCursor, tt.want)
			}
		})
	}
	_, page, _ := f.list(t, "type=order.refunded")
	e := page.Events[0]
	if e.Type != "order.refunded" || e.State != "failed" || e.Size != len(`{"type":"order.refunded","note":"50%_off"}`) ||
		e.Deliveries != (service.DeliveryCounts{Failed: 1, Delivered: 1}) || !e.ReceivedAt.Equal(f.base.Add(time.Minute)) {
		t.Fatalf("summary %+v", e)
	}
	if page.Retention.Delivered != "forever" || page.Retention.Failed != "forever" {
		t.Fatalf("retention %+v, want forever for a service without retention", page.Retention)
	}
}

func TestEvents_Pages(t *testing.T) {
	t.Parallel()
	f := newHistoryFixture(t)
	var got []string
	query := "limit=2&type=*"
	for range 5 {
		code, page, msg := f.list(t, query)
		if code != 200 {
			t.Fatalf("%d %s", code, msg)
		}
		got = append(got, f.names(page)...)
		if page.NextCursor == "" {
			break
		}
		query = "limit=2&type=*&cursor=" + page.NextCursor
	}
	if want := []string{"paid2", "user", "refund", "paid1"}; !slices.Equal(got, want) {
		t.Fatalf("pages gave %v, want %v", got, want)
	}
	_, page, _ := f.list(t, "limit=2&type=*")
	if code, _, msg := f.list(t, "limit=2&type=order.*&cursor="+page.NextCursor); code != 400 || !strings.Contains(msg, "other filters") {
		t.Fatalf("a cursor with other filters: %d %q, want 400", code, msg)
	}
}

func TestEvents_Reject(t *testing.T) {
	t.Parallel()
	f := newHistoryFixture(t)
	tests := []struct {
		name, query string
		code        int
		want        string
	}{
		{"State", "state=lost", 400, "state must be"},
		{"Type", "type=a*b", 400, "trailing *"},
		{"Since", "since=yesterday", 400, "RFC 3339"},
		{"Range", "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", 400, "before until"},
		{"Limit", "limit=0", 400, "limit"},
		{"LimitHigh", "limit=501", 400, "limit"},
		{"Query", "q=" + strings.Repeat("x", 201), 400, "200 characters"},
		{"Cursor", "cursor=nonsense", 400, "cursor"},
		{"Destination", "destination=dst_nope", 404, "dst_nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, _, msg := f.list(t, tt.query); code != tt.code || !strings.Contains(msg, tt.want) {
				t.Fatalf("%d %q, want %d with %q", code, msg, tt.code, tt.want)
			}
		})
	}
}

// TestEvents_BoundedSearch searches text that only the oldest of many
// events has: each page walks a bounded number of events and says how far
// back it searched, and following the cursors finds it.
func TestEvents_BoundedSearch(t *testing.T) {
	t.Parallel()
	ts := newTestAPI(t)
	base := time.Now().Add(-2 * time.Hour)
	const n = service.HistoryTextScanBudget + 5000
	calls := make([]*dispatch.Call, 0, n)
	var needle string
	for i := range n {
		at := base.Add(time.Duration(i) * time.Millisecond)
		body := `{"type":"t","i":` + fmt.Sprint(i) + `}`
		if i == 0 {
			body = `{"type":"t","needle":true}`
		}
		c := &dispatch.Call{ID: uuidAt(t, at), Function: "handleEvent", Input: []byte(body), State: dispatch.StateDone, Tag: "t",
			RunAfter: at, CreatedAt: at, Output: []byte(`{}`)}
		if i == 0 {
			needle = c.ID
		}
		calls = append(calls, c)
	}
	if _, err := ts.store.CallInsertMany(context.Background(), &dispatch.CallInsertParams{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	query := "q=needle"
	for pages := 1; ; pages++ {
		var page service.EventPage
		w := ts.do(t, "GET", "/v1/events?"+query, "")
		if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &page) != nil {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		if page.Scanned > service.HistoryTextScanBudget {
			t.Fatalf("a page walked %d events, over its bound of %d", page.Scanned, service.HistoryTextScanBudget)
		}
		if len(page.Events) == 1 {
			if page.Events[0].ID != needle || pages < 2 {
				t.Fatalf("found %s on page %d", page.Events[0].ID, pages)
			}
			return
		}
		if page.NextCursor == "" || page.SearchedTo == nil || pages > 20 {
			t.Fatalf("page %d: no match, next %q, searched to %v", pages, page.NextCursor, page.SearchedTo)
		}
		query = "q=needle&cursor=" + page.NextCursor
	}
}

// TestReplay_API replays stored events to destinations added after them:
// counts, idempotence, force, types, the period a destination was
// disabled, and the mistakes refused.
func TestReplay_API(t *testing.T) {
	t.Parallel()
	recv := newReceiver(t)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--retry-initial", "10ms"}, nil)
	post := func(body string) string {
		var out struct{ ID string }
		if code := call(t, "POST", base+"/v1/event", body, &out); code != 202 {
			t.Fatalf("post: %d", code)
		}
		return out.ID
	}
	start := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	orders := []string{post(`{"type":"order.paid"}`), post(`{"type":"order.shipped"}`)}
	other := post(`{"type":"user.created"}`)

	var dst struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL + "/a", "filter": []string{"order.*"}}, &dst); code != 201 {
		t.Fatalf("create: %d", code)
	}
	replay := func(body map[string]any) service.ReplayView {
		t.Helper()
		var job service.ReplayView
		if code := call(t, "POST", base+"/v1/destinations/"+dst.ID+"/replay", body, &job); code != 202 {
			t.Fatalf("replay %v: %d", body, code)
		}
		eventually(t, "the replay done", 10*time.Second, func() bool {
			call(t, "GET", base+"/v1/replays/"+job.ID, nil, &job)
			return job.State == "done"
		})
		return job
	}
	deliveriesTo := func(event string) int {
		var ev service.EventView
		call(t, "GET", base+"/v1/events/"+event, nil, &ev)
		n := 0
		for _, d := range ev.Deliveries {
			if d.DestinationID == dst.ID {
				n++
			}
		}
		return n
	}
	var count service.ReplayCount
	if code := call(t, "POST", base+"/v1/destinations/"+dst.ID+"/replay", map[string]any{"since": start, "dry_run": true}, &count); code != 200 ||
		count != (service.ReplayCount{Events: 2}) {
		t.Fatalf("dry run: %d %+v, want the 2 orders", code, count)
	}
	if job := replay(map[string]any{"since": start}); job.Created != 2 || job.Skipped != 0 || job.Total != 2 || job.Progress != 1 {
		t.Fatalf("first replay %+v, want 2 created", job)
	}
	for _, id := range orders {
		recv.waitAll(t, map[string]string{id: map[bool]string{true: `{"type":"order.paid"}`, false: `{"type":"order.shipped"}`}[id == orders[0]]}, 10*time.Second)
		if n := deliveriesTo(id); n != 1 {
			t.Fatalf("event %s has %d deliveries to the destination, want 1", id, n)
		}
	}
	if n := deliveriesTo(other); n != 0 {
		t.Fatalf("an event the destination does not want got %d deliveries", n)
	}
	if job := replay(map[string]any{"since": start}); job.Created != 0 || job.Skipped != 2 {
		t.Fatalf("second replay %+v, want both skipped", job)
	}
	if job := replay(map[string]any{"since": start, "force": true, "types": []string{"order.paid"}}); job.Created != 1 {
		t.Fatalf("forced replay of order.paid %+v, want 1 created", job)
	}
	if n := deliveriesTo(orders[0]); n != 2 {
		t.Fatalf("after a forced replay: %d deliveries, want 2", n)
	}
	eventually(t, "the events delivered again", 10*time.Second, func() bool {
		var ev service.EventView
		call(t, "GET", base+"/v1/events/"+orders[0], nil, &ev)
		return ev.State == "delivered"
	})

	// Disabled, it misses events; enabled again, it says which period, and
	// a replay of that period sends them.
	var d struct {
		Missed *struct{ Since, Until time.Time }
	}
	call(t, "PATCH", base+"/v1/destinations/"+dst.ID, map[string]any{"enabled": false}, nil)
	missed := post(`{"type":"order.lost"}`)
	call(t, "PATCH", base+"/v1/destinations/"+dst.ID, map[string]any{"enabled": true}, &d)
	if d.Missed == nil || !d.Missed.Until.After(d.Missed.Since) {
		t.Fatalf("enabled again: missed %+v, want the period it was disabled", d.Missed)
	}
	if n := deliveriesTo(missed); n != 0 {
		t.Fatalf("an event that arrived while disabled has %d deliveries", n)
	}
	job := replay(map[string]any{"since": d.Missed.Since.Format(time.RFC3339Nano), "until": d.Missed.Until.Format(time.RFC3339Nano)})
	if job.Created != 1 || deliveriesTo(missed) != 1 {
		t.Fatalf("replay of the missed period %+v", job)
	}
	var list struct{ Replays []service.ReplayView }
	if call(t, "GET", base+"/v1/replays?destination="+dst.ID, nil, &list); len(list.Replays) != 4 {
		t.Fatalf("%d replays listed, want 4", len(list.Replays))
	}

	for _, tc := range []struct {
		name string
		dest string
		body any
		code int
		want string
	}{
		{"NoSince", dst.ID, map[string]any{}, 400, "since is required"},
		{"Backwards", dst.ID, map[string]any{"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400, "before until"},
		{"BadType", dst.ID, map[string]any{"since": start, "types": []string{"a*b"}}, 400, "types"},
		{"Unknown", "dst_nope", map[string]any{"since": start}, 404, "dst_nope"},
		{"UnknownField", dst.ID, map[string]any{"since": start, "from": start}, 400, "unknown field"},
	} {
		var e httpapi.ErrorBody
		if code := call(t, "POST", base+"/v1/destinations/"+tc.dest+"/replay", tc.body, &e); code != tc.code || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, code, e.Error, tc.code, tc.want)
		}
	}
	if code := call(t, "GET", base+"/v1/replays/nope", nil, nil); code != 404 {
		t.Errorf("unknown replay: %d", code)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestCrossSite: a browser's state-changing request from another site is
// refused; the same from fanout's own pages, a safe method, or a client
// that is not a browser, goes through.
func TestCrossSite(t *testing.T) {
	t.Parallel()
	ts := newTestAPI(t)
	tests := []struct {
		name, method, path string
		header             []string
		code               int
	}{
		{"FormFromElsewhere", "POST", "/v1/destinations", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"OriginElsewhere", "POST", "/v1/destinations", []string{"Origin", "https://evil.example"}, 403},
		{"EventFromElsewhere", "POST", "/v1/event", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"SameOrigin", "POST", "/v1/destinations", []string{"Sec-Fetch-Site", "same-origin"}, 201},
		{"NotABrowser", "POST", "/v1/destinations", nil, 201},
		{"ReadFromElsewhere", "GET", "/v1/destinations", []string{"Sec-Fetch-Site", "cross-site"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"url":"https://example.com/x"}`
			if tt.method == "GET" {
				body = ""
			}
			w := ts.do(t, tt.method, tt.path, body, tt.header...)
			if w.Code != tt.code {
				t.Fatalf("%d %s, want %d", w.Code, w.Body, tt.code)
			}
			if tt.code == 403 && !strings.Contains(w.Body.String(), "cross-site") {
				t.Fatalf("403 without a reason: %s", w.Body)
			}
		})
	}
}

func TestConsole_Served(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(newTestService(t, openTestStore(t, t.TempDir())).handler)
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/console/" {
		t.Fatalf("/: %d to %q, want a redirect to the console", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, path := range []string{"/console/", "/console/app.js", "/console/style.css", "/console/vendor/uPlot.iife.min.js"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Security-Policy") != console.Policy ||
			resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("%s: %d, CSP %q", path, resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
		}
	}
}

// TestStats_Figures: deliveries show in /v1/stats within a second.
func TestStats_Figures(t *testing.T) {
	t.Parallel()
	recv := newReceiver(t)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--destination", recv.URL + "/s"}, nil)
	for range 20 {
		post(t, base+"/v1/event", `{"type":"x"}`)
	}
	var s service.StatsView
	eventually(t, "the deliveries in the figures", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/stats", nil, &s)
		return s.Rates.Delivered > 0 && s.Accepted == 20 && s.Rates.P50 != nil
	})
	if len(s.Series.Time) != service.StatsBuckets || len(s.Destinations) != 1 || s.Destinations[0].State != "active" ||
		!strings.Contains(s.Scope, "this replica") {
		t.Fatalf("stats %+v", s)
	}
	last := len(s.Series.Accepted) - 1
	if s.Series.Accepted[last]+s.Series.Accepted[last-1] == 0 {
		t.Fatalf("no events in the last buckets: %v", s.Series.Accepted[last-1:])
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// FuzzEventsQuery: any query of GET /v1/events is answered or refused as
// a client mistake, never with a panic or a storage error.
func FuzzEventsQuery(f *testing.F) {
	for _, s := range []string{"", "type=order.*&state=failed", "q=%25_&limit=3", "since=2026-01-01T00:00:00Z&until=2025-01-01T00:00:00Z",
		"cursor=MDAwMDAwMDAuYQ", "type=*,a.*,b", "type=%ff", "destination=x"} {
		f.Add(s)
	}
	ts := newTestAPI(f)
	f.Fuzz(func(t *testing.T, query string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		ef := service.EventFilter{Type: q.Get("type"), State: q.Get("state"), Destination: q.Get("destination"), Since: q.Get("since"),
			Until: q.Get("until"), Q: q.Get("q")}
		_, err = ts.svc.Events(context.Background(), service.AllTenants(), ef, q.Get("cursor"), 5)
		if err != nil && !errors.Is(err, service.ErrInvalid) && !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("%q: %v, want a client mistake", query, err)
		}
	})
}

// FuzzReplayRequest: any body of POST /v1/destinations/{id}/replay is
// refused as a client mistake or makes a job that stays in its range.
func FuzzReplayRequest(f *testing.F) {
	for _, s := range []string{`{"since":"2026-01-01T00:00:00Z"}`, `{"since":"2026-01-01T00:00:00Z","until":"2026-01-02T00:00:00Z","types":["a.*"],"force":true}`,
		`{"since":"x"}`, `{"types":["*"]}`, `{"since":"2026-01-01T00:00:00Z","types":["a,b"]}`, `{}`} {
		f.Add([]byte(s))
	}
	ts := newTestAPI(f)
	u := "https://example.com/x"
	d, err := ts.svc.CreateDestination(context.Background(), service.AllTenants(), service.DefaultTenant, &service.DestinationInput{URL: &u})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		var in service.ReplayRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&in) != nil {
			return
		}
		job, err := ts.svc.CheckReplay(context.Background(), service.AllTenants(), d.ID, &in, now)
		if err != nil {
			if !errors.Is(err, service.ErrInvalid) {
				t.Fatalf("%s: %v, want a client mistake", body, err)
			}
			return
		}
		if !job.Since.Before(job.Until) || job.Until.After(now) {
			t.Fatalf("%s: job range %v to %v", body, job.Since, job.Until)
		}
		p := ts.svc.ReplayScan(job, "")
		if p.After >= p.Before {
			t.Fatalf("%s: the scan's ids run from %q to %q", body, p.After, p.Before)
		}
	})
}

// TestQueries_Bounds: a filter the store could not run, or would run
// wrong, is a 400 that says why, never a 503 or a silent mis-filter: more
// type patterns than the store takes in one query, and times outside the
// years that timestamps and ids compare in.
func TestQueries_Bounds(t *testing.T) {
	t.Parallel()
	f := newHistoryFixture(t)
	patterns := func(n int) string {
		p := make([]string, n)
		for i := range p {
			p[i] = fmt.Sprintf("t%d.*", i)
		}
		return strings.Join(p, ",")
	}
	tests := []struct {
		name, path string
		want       int
		wantErr    string
	}{
		{"MostPatterns", "/v1/events?type=" + patterns(service.MaxTypePatterns), 200, ""},
		{"TooManyPatterns", "/v1/events?type=" + patterns(3000), 400, "at most 100"},
		{"UntilYear9999", "/v1/events?until=9999-01-01T00:00:00Z", 400, "outside the years"},
		{"SinceBefore1970", "/v1/events?since=1969-12-31T23:59:59Z", 400, "outside the years"},
		{"Until2261", "/v1/events?until=2261-12-31T23:59:59Z", 200, ""},
		{"Since1970", "/v1/events?since=1970-01-01T00:00:00Z", 200, ""},
		{"DeliveriesUntil9999", "/v1/deliveries?until=9999-01-01T00:00:00Z", 400, "outside the years"},
		{"DeliveriesSince1900", "/v1/deliveries?since=1900-01-01T00:00:00Z", 400, "outside the years"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := f.svc.do(t, "GET", tc.path, "")
			if w.Code != tc.want || !strings.Contains(w.Body.String(), tc.wantErr) {
				t.Fatalf("GET %.80s: %d %s, want %d %q", tc.path, w.Code, w.Body, tc.want, tc.wantErr)
			}
		})
	}
	// A re-drive selects by the same filter.
	w := f.svc.do(t, "POST", "/v1/deliveries/retry", `{"state":"failed","until":"9999-01-01T00:00:00Z"}`)
	if w.Code != 400 || !strings.Contains(w.Body.String(), "outside the years") {
		t.Fatalf("re-drive until 9999: %d %s, want 400", w.Code, w.Body)
	}
}
