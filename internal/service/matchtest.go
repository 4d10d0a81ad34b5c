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
	// ContentType, when set, asks about a raw event of that content type
	// and of type Type (its ?type=): payload filters see no fields of it,
	// so Event is not needed.
	ContentType string `json:"content_type,omitempty"`
	Type        string `json:"type,omitempty"`
}

// MatchResult is the answer: whether it matches, and when not, why not.
type MatchResult struct {
	Matches bool     `json:"matches"`
	Reasons []string `json:"reasons,omitempty"`
	// Note says what the filters could not see (a raw event's body).
	Note string `json:"note,omitempty"`
}

// TestMatch answers a MatchTest for an event of tenant received now, with
// the rules routing applies (the type filter, then the payload filter).
// The console and the portal ask it while a filter is edited.
func (s *Service) TestMatch(tenant string, in *MatchTest) (*MatchResult, error) {
	event, eventType := []byte(in.Event), EventFields(in.Event).Type
	var note string
	if in.ContentType != "" {
		// A raw event: its type is the request's, its body is not read.
		if _, err := CheckRawContentType(in.ContentType); err != nil {
			return nil, err
		}
		if err := CheckRawType(in.Type); err != nil {
			return nil, err
		}
		event, eventType = noFields, in.Type
		note = "a raw event (" + in.ContentType + ") has no payload fields: a payload filter sees only its type, tenant and time"
	} else if len(in.Event) == 0 {
		return nil, Invalid("event is required: the event to test, as it would be sent (or content_type and type for a raw event)")
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
	if !d.Matches(eventType) {
		return &MatchResult{Reasons: []string{fmt.Sprintf("type %q is not in filter %q", eventType, in.Filter)}, Note: note}, nil
	}
	if f == nil {
		return &MatchResult{Matches: true, Note: note}, nil
	}
	ok, why := f.Explain(event, match.Envelope{Type: eventType, Tenant: tenant, Time: s.now().UTC().Truncate(time.Millisecond)})
	return &MatchResult{Matches: ok, Reasons: why, Note: note}, nil
}
