// Package sqssink delivers events to Amazon SQS queues, standard or FIFO.
//
// Delivered means SQS accepted the message: SendMessage answered with a
// message id (and the MD5 of the body the SDK checks), so the queue stores
// it redundantly until a consumer deletes it or its retention ends. Each
// message carries the event's body as is and message attributes with the
// delivery and event id, the event type, the tenant and the key. On a FIFO
// queue (a URL ending in .fifo) MessageDeduplicationId is the delivery's
// id, so that a resend within SQS's five-minute window (after a crash, or
// an answer lost) is accepted and dropped; MessageGroupId is the message's
// key, so that events of one key are delivered in order, or a fixed group
// for events without one. A standard queue has no deduplication: a resend
// may be a second copy, as with any at-least-once delivery.
package sqssink

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

// Delivered is what a nil Send means.
const Delivered = "SQS accepted the message (SendMessage returned its id); on a FIFO queue a resend of the same delivery within five minutes is dropped"

// Kind is the "sqs" destination type, without ambient credentials.
var Kind = NewKind(sink.Ambient{})

// NewKind returns the "sqs" kind; amb.AWS lets a config use fanout's own
// AWS credentials (see sink.Ambient).
func NewKind(amb sink.Ambient) *sink.Kind {
	return &sink.Kind{
		Name:      "sqs",
		Delivered: Delivered,
		Secrets:   awsbase.Secrets,
		URLs:      append([]string{"queue_url"}, awsbase.URLs...),
		Parse:     func(raw json.RawMessage) (sink.Config, error) { return parse(raw, amb) },
	}
}

// DefaultGroup is the FIFO message group of messages without a key.
const DefaultGroup = "fanout"

// Config is an SQS destination.
type Config struct {
	awsbase.Auth
	// QueueURL is the queue's URL,
	// https://sqs.eu-west-1.amazonaws.com/123456789012/orders(.fifo).
	QueueURL string `json:"queue_url"`
	// MessageGroupID is the FIFO group of messages without a key
	// (default "fanout"): they are delivered in order, one at a time.
	MessageGroupID string `json:"message_group_id,omitempty"`
}

// Parse decodes and validates an SQS config for a kind without ambient
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
	if c.QueueURL == "" {
		return sink.Errorf("queue_url", "required: https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE")
	}
	u, err := url.Parse(c.QueueURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Hostname() == "" {
		return sink.Errorf("queue_url", "want https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE")
	}
	if u.User != nil {
		return sink.Errorf("queue_url", "has user info: put credentials in access_key_id and secret_access_key")
	}
	if parts := strings.Split(strings.Trim(u.Path, "/"), "/"); len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return sink.Errorf("queue_url", "%s: the path is /ACCOUNT/QUEUE", sink.RedactURL(c.QueueURL))
	}
	if c.MessageGroupID != "" && !c.FIFO() {
		return sink.Errorf("message_group_id", "only for a FIFO queue (a queue URL ending in .fifo)")
	}
	if err := awsbase.CheckGroup("message_group_id", c.MessageGroupID); err != nil {
		return err
	}
	return c.Auth.Validate(amb)
}

// FIFO reports whether the queue is a FIFO queue.
func (c *Config) FIFO() bool { return strings.HasSuffix(c.QueueURL, ".fifo") }

// Target is the queue.
func (c *Config) Target() string { return "sqs " + sink.RedactURL(c.QueueURL) }

// Open makes the SQS client; it sends nothing until the first message.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	cfg, closeIdle, err := c.Load(ctx, env)
	if err != nil {
		return nil, err
	}
	group := c.MessageGroupID
	if group == "" {
		group = DefaultGroup
	}
	return &Sender{cfg: c, client: sqs.NewFromConfig(cfg), closeIdle: closeIdle, group: group}, nil
}

// Sender sends messages to one queue.
type Sender struct {
	cfg       *Config
	client    *sqs.Client
	closeIdle func()
	group     string

	mu     sync.Mutex
	closed bool
}

// Send sends m and waits for SQS's answer.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	if err := awsbase.CheckText("SQS", m.Body); err != nil {
		return err
	}
	attrs, err := awsbase.Attributes(m)
	if err != nil {
		return err
	}
	in := &sqs.SendMessageInput{
		QueueUrl:          aws.String(s.cfg.QueueURL),
		MessageBody:       aws.String(string(m.Body)),
		MessageAttributes: make(map[string]types.MessageAttributeValue, len(attrs)),
	}
	for _, a := range attrs {
		in.MessageAttributes[a.Name] = types.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String(a.Value)}
	}
	if s.cfg.FIFO() {
		in.MessageDeduplicationId = aws.String(awsbase.DedupID(m.DeliveryID))
		in.MessageGroupId = aws.String(awsbase.GroupID(m.Key, s.group))
	}
	out, err := s.client.SendMessage(ctx, in)
	if err != nil {
		return awsbase.Classify(fmt.Errorf("sending to %s: %w", s.cfg.Target(), err), s.cfg.AmbientCredentials, s.cfg.SecretValues()...)
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
