// Package snssink delivers events to Amazon SNS topics, standard or FIFO.
//
// Delivered means SNS accepted the message: Publish answered with a message
// id, and SNS stores the message redundantly and delivers it to the
// topic's subscriptions by its own retry policy (what a subscriber does
// with it is beyond fanout). The message is the event's body as is, with
// message attributes carrying the delivery and event id, the event type,
// the tenant and the key. On a FIFO topic (an ARN ending in .fifo)
// MessageDeduplicationId is the delivery's id, so that a resend within
// five minutes is dropped, and MessageGroupId is the message's key, or a
// fixed group for events without one.
package snssink

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sns/types"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

// Delivered is what a nil Send means.
const Delivered = "SNS accepted the message (Publish returned its id) and delivers it to the topic's subscriptions; on a FIFO topic a resend of the same delivery within five minutes is dropped"

// Kind is the "sns" destination type, without ambient credentials.
var Kind = NewKind(sink.Ambient{})

// NewKind returns the "sns" kind; amb.AWS lets a config use fanout's own
// AWS credentials (see sink.Ambient).
func NewKind(amb sink.Ambient) *sink.Kind {
	return &sink.Kind{
		Name:      "sns",
		Delivered: Delivered,
		Secrets:   awsbase.Secrets,
		URLs:      append([]string{"topic_arn"}, awsbase.URLs...),
		Parse:     func(raw json.RawMessage) (sink.Config, error) { return parse(raw, amb) },
	}
}

// DefaultGroup is the FIFO message group of messages without a key.
const DefaultGroup = "fanout"

// Config is an SNS destination.
type Config struct {
	awsbase.Auth
	// TopicARN is the topic, arn:aws:sns:eu-west-1:123456789012:orders.
	TopicARN string `json:"topic_arn"`
	// Subject is the subject of e-mail subscriptions, optional.
	Subject string `json:"subject,omitempty"`
	// MessageGroupID is the FIFO group of messages without a key (default
	// "fanout").
	MessageGroupID string `json:"message_group_id,omitempty"`
}

// Parse decodes and validates an SNS config for a kind without ambient
// credentials.
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

func (c *Config) validate(amb sink.Ambient) error {
	if c.TopicARN == "" {
		return sink.Errorf("topic_arn", "required: arn:aws:sns:REGION:ACCOUNT:TOPIC")
	}
	a, err := arn.Parse(c.TopicARN)
	if err != nil || a.Service != "sns" || a.Resource == "" || strings.Contains(a.Resource, ":") {
		return sink.Errorf("topic_arn", "%q is not a topic ARN: want arn:aws:sns:REGION:ACCOUNT:TOPIC", c.TopicARN)
	}
	if c.Region != "" && a.Region != c.Region {
		return sink.Errorf("topic_arn", "the topic is in %s, the destination's region is %s: SNS takes a publish in the topic's region only", a.Region, c.Region)
	}
	if len(c.Subject) > 100 || strings.ContainsAny(c.Subject, "\r\n") {
		return sink.Errorf("subject", "at most 100 characters on one line")
	}
	if c.MessageGroupID != "" && !c.FIFO() {
		return sink.Errorf("message_group_id", "only for a FIFO topic (an ARN ending in .fifo)")
	}
	if err := awsbase.CheckGroup("message_group_id", c.MessageGroupID); err != nil {
		return err
	}
	return c.Auth.Validate(amb)
}

// FIFO reports whether the topic is a FIFO topic.
func (c *Config) FIFO() bool { return strings.HasSuffix(c.TopicARN, ".fifo") }

// Target is the topic.
func (c *Config) Target() string { return "sns " + c.TopicARN + " at " + c.Where() }

// Open makes the SNS client; it sends nothing until the first message.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	cfg, closeIdle, err := c.Load(ctx, env)
	if err != nil {
		return nil, err
	}
	group := c.MessageGroupID
	if group == "" {
		group = DefaultGroup
	}
	return &Sender{cfg: c, client: sns.NewFromConfig(cfg), closeIdle: closeIdle, group: group}, nil
}

// Sender publishes to one topic.
type Sender struct {
	cfg       *Config
	client    *sns.Client
	closeIdle func()
	group     string

	mu     sync.Mutex
	closed bool
}

// Send publishes m and waits for SNS's answer.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	if err := awsbase.CheckText("SNS", m.Body); err != nil {
		return err
	}
	attrs, err := awsbase.Attributes(m)
	if err != nil {
		return err
	}
	in := &sns.PublishInput{
		TopicArn:          aws.String(s.cfg.TopicARN),
		Message:           aws.String(string(m.Body)),
		MessageAttributes: make(map[string]types.MessageAttributeValue, len(attrs)),
	}
	if s.cfg.Subject != "" {
		in.Subject = aws.String(s.cfg.Subject)
	}
	for _, a := range attrs {
		in.MessageAttributes[a.Name] = types.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String(a.Value)}
	}
	if s.cfg.FIFO() {
		in.MessageDeduplicationId = aws.String(awsbase.DedupID(m.DeliveryID))
		in.MessageGroupId = aws.String(awsbase.GroupID(m.Key, s.group))
	}
	out, err := s.client.Publish(ctx, in)
	if err != nil {
		return awsbase.Classify(fmt.Errorf("publishing to %s: %w", s.cfg.Target(), err), s.cfg.AmbientCredentials, s.cfg.SecretValues()...)
	}
	if awsbase.StringValue(out.MessageId) == "" {
		return fmt.Errorf("%w: %s answered without a message id", dispatch.ErrTemporary, s.cfg.Target())
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
