// Package ebsink delivers events to an Amazon EventBridge event bus.
//
// Delivered means EventBridge accepted the entry: PutEvents answered with
// no failed entry and an event id for it, and EventBridge matches it
// against the bus's rules and delivers it to their targets by its own
// retry policy. The entry's detail is the event's body, which must be a
// JSON object (an event whose body is not is refused for good, saying
// why); its detail-type is the event's type (or the configured one) and
// its source the configured one. With "envelope": true the detail is
// {"fanout": {delivery and event id, type, tenant, key}, "data": body},
// for rules that route by tenant. EventBridge has no deduplication: a
// resend after a lost answer is a second event, as with any at-least-once
// delivery; the envelope's delivery_id lets a consumer drop it.
package ebsink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge/types"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

// Delivered is what a nil Send means.
const Delivered = "EventBridge accepted the event (PutEvents returned its id with no failed entry) and delivers it to the targets of the bus's matching rules"

// Kind is the "eventbridge" destination type, without ambient credentials.
var Kind = NewKind(sink.Ambient{})

// NewKind returns the "eventbridge" kind; amb.AWS lets a config use
// fanout's own AWS credentials (see sink.Ambient).
func NewKind(amb sink.Ambient) *sink.Kind {
	return &sink.Kind{
		Name:      "eventbridge",
		Delivered: Delivered,
		Secrets:   awsbase.Secrets,
		URLs:      append([]string{"event_bus"}, awsbase.URLs...),
		Parse:     func(raw json.RawMessage) (sink.Config, error) { return parse(raw, amb) },
	}
}

// DefaultSource is the source of events when the config names none.
const DefaultSource = "fanout"

// Config is an EventBridge destination.
type Config struct {
	awsbase.Auth
	// EventBus is the bus's name or ARN (default "default").
	EventBus string `json:"event_bus,omitempty"`
	// Source is the events' source, which rules match on (default
	// "fanout"); EventBridge keeps "aws." sources for AWS.
	Source string `json:"source,omitempty"`
	// DetailType is every event's detail-type; by default the event's
	// type.
	DetailType string `json:"detail_type,omitempty"`
	// Envelope wraps the body: {"fanout": {...}, "data": body}.
	Envelope bool `json:"envelope,omitempty"`
}

// Parse decodes and validates an EventBridge config for a kind without
// ambient credentials.
func Parse(raw json.RawMessage) (sink.Config, error) { return parse(raw, sink.Ambient{}) }

func parse(raw json.RawMessage, amb sink.Ambient) (sink.Config, error) {
	var c Config
	if err := sink.DecodeStrict(raw, &c); err != nil {
		return nil, err
	}
	if err := c.validate(amb); err != nil {
		return nil, err
	}
	return &c, nil
}

var busName = regexp.MustCompile(`^[A-Za-z0-9/._-]{1,256}$`)

func (c *Config) validate(amb sink.Ambient) error {
	if c.EventBus == "" {
		c.EventBus = "default"
	}
	if strings.HasPrefix(c.EventBus, "arn:") {
		a, err := arn.Parse(c.EventBus)
		if err != nil || a.Service != "events" || !strings.HasPrefix(a.Resource, "event-bus/") {
			return sink.Errorf("event_bus", "%q is not an event bus ARN: want arn:aws:events:REGION:ACCOUNT:event-bus/NAME", c.EventBus)
		}
	} else if !busName.MatchString(c.EventBus) {
		return sink.Errorf("event_bus", "%q is not a bus name (letters, digits, / . _ -)", c.EventBus)
	}
	if c.Source == "" {
		c.Source = DefaultSource
	}
	if len(c.Source) > 256 || strings.HasPrefix(strings.ToLower(c.Source), "aws.") || strings.ContainsAny(c.Source, " \t\r\n") {
		return sink.Errorf("source", "%q: at most 256 characters without spaces, not starting with aws. (AWS's own sources)", c.Source)
	}
	if len(c.DetailType) > 128 || strings.ContainsAny(c.DetailType, "\r\n") {
		return sink.Errorf("detail_type", "at most 128 characters on one line")
	}
	return c.Auth.Validate(amb)
}

// Target is the bus.
func (c *Config) Target() string { return "eventbridge bus " + c.EventBus + " at " + c.Where() }

// Open makes the EventBridge client; it sends nothing until the first
// event.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	cfg, closeIdle, err := c.Load(ctx, env)
	if err != nil {
		return nil, err
	}
	return &Sender{cfg: c, client: eventbridge.NewFromConfig(cfg), closeIdle: closeIdle}, nil
}

// Sender puts events on one bus.
type Sender struct {
	cfg       *Config
	client    *eventbridge.Client
	closeIdle func()

	mu     sync.Mutex
	closed bool
}

// detail is the entry's detail: the body, a JSON object, or the envelope.
func (c *Config) detail(m *sink.Message) (string, error) {
	body := bytes.TrimSpace(m.Body)
	if len(body) == 0 || body[0] != '{' || !json.Valid(body) {
		return "", fmt.Errorf("%w: EventBridge takes a JSON object as an event's detail, and the event's body (%s) is not one", dispatch.ErrPermanent, describe(m))
	}
	if !c.Envelope {
		return string(body), nil
	}
	env := struct {
		Fanout struct {
			DeliveryID string `json:"delivery_id"`
			EventID    string `json:"event_id"`
			Type       string `json:"type"`
			Tenant     string `json:"tenant,omitempty"`
			Key        string `json:"key,omitempty"`
		} `json:"fanout"`
		Data json.RawMessage `json:"data"`
	}{Data: body}
	env.Fanout.DeliveryID, env.Fanout.EventID, env.Fanout.Type, env.Fanout.Tenant, env.Fanout.Key = m.DeliveryID, m.EventID, m.Type, m.Tenant, m.Key
	b, err := json.Marshal(env)
	if err != nil {
		return "", fmt.Errorf("%w: %v", dispatch.ErrPermanent, err)
	}
	return string(b), nil
}

func describe(m *sink.Message) string {
	body := bytes.TrimSpace(m.Body)
	switch {
	case len(body) == 0:
		return "empty"
	case !json.Valid(body):
		ct := m.ContentType
		if ct == "" {
			ct = "no content type"
		}
		return "not JSON, " + ct
	}
	return "JSON, but not an object"
}

// Send puts m on the bus and waits for EventBridge's answer.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	detail, err := s.cfg.detail(m)
	if err != nil {
		return err
	}
	detailType := s.cfg.DetailType
	if detailType == "" {
		detailType = m.Type
	}
	if detailType == "" {
		return fmt.Errorf("%w: the event has no type, and the destination no detail_type for EventBridge", dispatch.ErrPermanent)
	}
	out, err := s.client.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []types.PutEventsRequestEntry{{
		EventBusName: aws.String(s.cfg.EventBus),
		Source:       aws.String(s.cfg.Source),
		DetailType:   aws.String(detailType),
		Detail:       aws.String(detail),
	}}})
	secrets := s.cfg.SecretValues()
	if err != nil {
		return awsbase.Classify(fmt.Errorf("putting an event on %s: %w", s.cfg.Target(), err), s.cfg.AmbientCredentials, secrets...)
	}
	if out.FailedEntryCount > 0 || len(out.Entries) != 1 || awsbase.StringValue(out.Entries[0].EventId) == "" {
		code, msg := "", ""
		if len(out.Entries) > 0 {
			code, msg = awsbase.StringValue(out.Entries[0].ErrorCode), awsbase.StringValue(out.Entries[0].ErrorMessage)
		}
		if code == "" {
			return fmt.Errorf("%w: %s answered without an event id or an error (%d entries, %d failed)", dispatch.ErrTemporary, s.cfg.Target(), len(out.Entries), out.FailedEntryCount)
		}
		return awsbase.ClassifyCode(fmt.Errorf("%s refused the event: %s: %s", s.cfg.Target(), code, msg), code, secrets...)
	}
	return nil
}

// Close closes the idle connections; a Send after it fails with
// sink.ErrClosed.
func (s *Sender) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.closeIdle()
	return nil
}
