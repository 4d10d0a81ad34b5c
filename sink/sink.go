// Package sink delivers events to message brokers: NATS JetStream, Redis
// Streams, RabbitMQ and the others, each a Kind in its own package. A kind
// parses and validates its destination's configuration, says which of its
// fields are secrets, and opens a Sender; a Pool keeps one open Sender per
// destination version and closes it when the destination changes or goes.
//
// A Sender's answer means the same for every kind, so that the dispatch
// runtime treats a broker like an HTTP destination: nil is delivered (what
// "delivered" is, each kind's doc says: the broker acknowledged the message,
// durably where it can), an error that wraps dispatch.ErrPermanent is final
// (the configuration cannot work: refused credentials, a blocked address),
// and any other error is retried with backoff: a broker that is down, a full
// queue, a broker that refuses for now. Errors never carry a credential: every
// kind passes what its client returns through Redact.
package sink

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"fanout/dispatch"
	"fanout/webhook"
)

// Message is one delivery of one event to a broker destination.
type Message struct {
	// DeliveryID is the delivery's id: the same on every attempt, and the
	// idempotency key of every kind whose broker drops duplicates
	// (JetStream's Nats-Msg-Id, AMQP's message-id...).
	DeliveryID string
	EventID    string
	Type       string
	Tenant     string
	// Body is the event as it was accepted, byte for byte.
	Body        []byte
	ContentType string
	// Key orders or partitions messages where the broker has such a thing
	// (a Kafka partition key, an SQS FIFO group); "" is none.
	Key string
	// Headers are the destination's own, added to each message.
	Headers map[string]string
	// Time is when the event was accepted (zero: unknown), for kinds that
	// file messages by date (s3's {date}): a retry the next day files the
	// event where the first attempt did.
	Time time.Time
}

// The names under which a message carries fanout's own attributes, in the
// headers (or fields) of every kind that has them.
const (
	HeaderDeliveryID = "fanout-delivery-id"
	HeaderEventID    = "fanout-event-id"
	HeaderEventType  = "fanout-event-type"
	HeaderTenant     = "fanout-tenant"
	HeaderKey        = "fanout-key"
)

// Sender sends messages to one destination. It is safe for concurrent use.
type Sender interface {
	// Send delivers m, or returns why not: an error wrapping
	// dispatch.ErrPermanent when retrying cannot help, any other error
	// when it may. It returns when ctx is done at the latest.
	Send(ctx context.Context, m *Message) error
	// Close releases the sender's connections. Sends in flight may fail.
	Close() error
}

// Outcome is what a Send's error means to the runtime.
type Outcome int

// The outcomes of a Send.
const (
	Done Outcome = iota
	Retryable
	Permanent
)

func (o Outcome) String() string {
	switch o {
	case Done:
		return "done"
	case Retryable:
		return "retryable"
	}
	return "permanent"
}

// OutcomeOf classifies the error of a Send as the dispatch runtime does.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Done
	case dispatch.ErrorStatus(err).Retryable():
		return Retryable
	}
	return Permanent
}

// Retry marks err as worth a retry (a broker down, a full queue), whatever
// its own classification, and redacts the secrets in its message.
func Retry(err error, secrets ...string) error {
	return &classified{err: Redact(err, secrets...), status: dispatch.StatusTemporary}
}

// Fail marks err as final (bad credentials, a stream that refuses the
// subject for good), and redacts the secrets in its message.
func Fail(err error, secrets ...string) error {
	return &classified{err: Redact(err, secrets...), status: dispatch.StatusPermanent}
}

type classified struct {
	err    error
	status dispatch.Status
}

func (e *classified) Error() string           { return e.err.Error() }
func (e *classified) Unwrap() error           { return e.err }
func (e *classified) Status() dispatch.Status { return e.status }

// Env is what a kind needs from fanout to open a sender.
type Env struct {
	// Dial connects every TCP connection of every kind, including those to
	// addresses a cluster hands out at run time: it is the SSRF guard's
	// (webhook.Guard.DialContext), so that a broker on an internal address
	// is refused unless the operator allowed its network. Required.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds connecting and each handshake (default
	// DefaultTimeout); a Send is bounded by its context.
	Timeout time.Duration
}

// DefaultTimeout bounds connecting to a broker when Env says nothing.
const DefaultTimeout = 10 * time.Second

// ConnectTimeout is e's connect timeout.
func (e Env) ConnectTimeout() time.Duration {
	if e.Timeout > 0 {
		return e.Timeout
	}
	return DefaultTimeout
}

// DialTimeout dials addr with e.Dial within the connect timeout, for
// clients whose dialers take no context (NATS, AMQP).
func (e Env) DialTimeout(network, addr string) (net.Conn, error) {
	if e.Dial == nil {
		return nil, errNoDial
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.ConnectTimeout())
	defer cancel()
	return e.Dial(ctx, network, addr)
}

// DialContext is e.Dial, or an error when it is missing: a kind never
// falls back to an unguarded dialer.
func (e Env) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if e.Dial == nil {
		return nil, errNoDial
	}
	return e.Dial(ctx, network, addr)
}

var errNoDial = fmt.Errorf("%w: sink: no dialer (Env.Dial) configured", dispatch.ErrPermanent)

// ErrClosed is returned by a Sender used after Close; it is retryable: the
// next attempt gets the sender that replaced it.
var ErrClosed = fmt.Errorf("%w: sink: sender closed", dispatch.ErrTemporary)

// GuardedEnv is the Env of a process whose SSRF guard is g: every broker
// connection is dialed through g, so that what --allow-network allows for
// webhooks it allows for brokers, and nothing else.
func GuardedEnv(g *webhook.Guard, timeout time.Duration) Env {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return Env{Dial: g.DialContext(timeout), Timeout: timeout}
}

// DialTLS dials addr with e's dialer and, when cfg is set, makes the
// connection TLS, for clients that use TLS only through their own dialer
// (go-redis, franz-go): the guard checks the address before the handshake.
func (e Env) DialTLS(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
	conn, err := e.DialContext(ctx, network, addr)
	if err != nil || cfg == nil {
		return conn, err
	}
	c := cfg.Clone()
	if c.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			c.ServerName = host
		}
	}
	tc := tls.Client(conn, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}
