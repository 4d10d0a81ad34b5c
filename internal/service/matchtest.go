package service

import (
	"encoding/json"
	"fmt"
	"time"

	"fanout/destination"
	"fanout/destination/match"
)

// MatchTest is a question to POST /v1/match: would a destination with this
// type filter and this payload filter get this event?
type MatchTest struct {
	Filter []string        `json:"filter"`
	Match  json.RawMessage `json:"match"`
	Event  json.RawMessage `json:"event"`
}

// MatchResult is the answer: whether it matches, and when not, why not.
type MatchResult struct {
	Matches bool     `json:"matches"`
	Reasons []string `json:"reasons,omitempty"`
}

// TestMatch answers a MatchTest for an event of tenant received now, with
// the rules routing applies (the type filter, then the payload filter).
// The console and the portal ask it while a filter is edited.
func (s *Service) TestMatch(tenant string, in *MatchTest) (*MatchResult, error) {
	if len(in.Event) == 0 {
		return nil, Invalid("event is required: the event to test, as it would be sent")
	}
	d := &destination.Destination{Filter: in.Filter}
	if err := d.ValidateFilter(); err != nil {
		return nil, Invalid("%v", err)
	}
	var f *match.Filter
	if len(in.Match) > 0 && string(in.Match) != "null" {
		var err error
		if f, err = match.Compile(in.Match); err != nil {
			return nil, Invalid("match: %v", err)
		}
	}
	eventType := EventFields(in.Event).Type
	if !d.Matches(eventType) {
		return &MatchResult{Reasons: []string{fmt.Sprintf("type %q is not in filter %q", eventType, in.Filter)}}, nil
	}
	if f == nil {
		return &MatchResult{Matches: true}, nil
	}
	ok, why := f.Explain(in.Event, match.Envelope{Type: eventType, Tenant: tenant, Time: s.now().UTC().Truncate(time.Millisecond)})
	return &MatchResult{Matches: ok, Reasons: why}, nil
}
