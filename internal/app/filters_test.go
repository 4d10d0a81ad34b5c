package app

import (
	"strings"
	"testing"
	"time"

	"fanout/internal/httpapi"
	"fanout/internal/service"
)

// TestRun_PayloadFilters: a destination's payload filter keeps the events
// it matches, checked at creation with a 400 naming what is wrong; a replay
// applies it again; POST /v1/match says whether an event would match, and
// why not.
func TestRun_PayloadFilters(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)
	big, all := newReceiver(t), newReceiver(t)
	for _, bad := range []struct{ match, want string }{
		{`{"data.amount":{"$gte":"x","$bogus":1}}`, "$bogus"},
		{`{"data.amount":{"$gte":[1]}}`, "$gte"},
		{`{"$or":{}}`, "$or"},
		{`{"a":{"$regex":"("}}`, "$regex"},
	} {
		var e httpapi.ErrorBody
		if code := call(t, "POST", base+"/v1/destinations", `{"url":"`+big.URL+`","match":`+bad.match+`}`, &e); code != 400 || !strings.Contains(e.Error, bad.want) {
			t.Errorf("match %s: %d %q, want 400 naming %s", bad.match, code, e.Error, bad.want)
		}
	}
	var d struct {
		ID    string
		Match map[string]any
	}
	filter := `{"data.amount":{"$gte":100},"data.currency":{"$in":["EUR","USD"]}}`
	if code := call(t, "POST", base+"/v1/destinations", `{"url":"`+big.URL+`","filter":["order.*"],"match":`+filter+`}`, &d); code != 201 || d.Match == nil {
		t.Fatalf("create with a filter: %d %+v", code, d)
	}
	if code := call(t, "POST", base+"/v1/destinations", `{"url":"`+all.URL+`"}`, nil); code != 201 {
		t.Fatalf("create: %d", code)
	}
	yes := postEvent(t, base, `{"type":"order.paid","data":{"amount":150,"currency":"EUR"}}`)
	small := postEvent(t, base, `{"type":"order.paid","data":{"amount":50,"currency":"EUR"}}`)
	yen := postEvent(t, base, `{"type":"order.paid","data":{"amount":150,"currency":"JPY"}}`)
	other := postEvent(t, base, `{"type":"user.created","data":{"amount":150,"currency":"EUR"}}`)
	eventually(t, "the unfiltered destination has all four", 10*time.Second, func() bool {
		for _, id := range []string{yes, small, yen, other} {
			if _, ok := all.has(id); !ok {
				return false
			}
		}
		_, ok := big.has(yes)
		return ok
	})
	for _, id := range []string{small, yen, other} {
		if _, ok := big.has(id); ok {
			t.Errorf("the filtered destination got %s, which its filter refuses", id)
		}
	}
	// A replay applies the filter again.
	var job service.ReplayView
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	if code := call(t, "POST", base+"/v1/destinations/"+d.ID+"/replay", `{"since":"`+since+`","force":true}`, &job); code != 202 {
		t.Fatalf("replay: %d", code)
	}
	eventually(t, "the replay done", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/replays/"+job.ID, nil, &job)
		return job.State == "done"
	})
	if job.Created != 1 {
		t.Errorf("the replay gave %d deliveries, want 1 (the one event its filter matches)", job.Created)
	}
	// PATCH with {} removes the filter.
	var cleared struct{ Match map[string]any }
	if code := call(t, "PATCH", base+"/v1/destinations/"+d.ID, `{"match":{}}`, &cleared); code != 200 || cleared.Match != nil {
		t.Fatalf("PATCH match {}: %d %+v", code, cleared)
	}
	// The test-match endpoint.
	for _, tc := range []struct {
		body    string
		matches bool
		reason  string
	}{
		{`{"filter":["order.*"],"match":` + filter + `,"event":{"type":"order.paid","data":{"amount":150,"currency":"USD"}}}`, true, ""},
		{`{"filter":["order.*"],"match":` + filter + `,"event":{"type":"order.paid","data":{"amount":50,"currency":"USD"}}}`, false, "data.amount"},
		{`{"filter":["order.*"],"event":{"type":"user.created"}}`, false, "not in filter"},
		{`{"match":{"$tenant":"default"},"event":{"type":"x"}}`, true, ""},
	} {
		var res service.MatchResult
		if code := call(t, "POST", base+"/v1/match", tc.body, &res); code != 200 || res.Matches != tc.matches ||
			(tc.reason != "" && !strings.Contains(strings.Join(res.Reasons, "; "), tc.reason)) {
			t.Errorf("POST /v1/match %s: %d %+v, want matches %v with a reason naming %q", tc.body, code, res, tc.matches, tc.reason)
		}
	}
	var e httpapi.ErrorBody
	if code := call(t, "POST", base+"/v1/match", `{"match":{"$nope":1},"event":{}}`, &e); code != 400 || !strings.Contains(e.Error, "$nope") {
		t.Errorf("a bad filter to /v1/match: %d %q", code, e.Error)
	}
}
