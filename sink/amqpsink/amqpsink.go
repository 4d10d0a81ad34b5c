// Package amqpsink delivers events to RabbitMQ (AMQP 0-9-1).
//
// Delivered means RabbitMQ confirmed the message (publisher confirms): it
// was routed to at least one queue (the publish is mandatory: an unroutable
// message comes back and is retried, unless the config says otherwise)
// and every queue it went to took responsibility for it, which for a
// durable queue and a persistent message means written to disk. Each
// message carries message-id = the delivery's id, the same on every
// attempt, for consumers to drop the duplicates a retry may make: RabbitMQ
// itself does not deduplicate.
package amqpsink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// Kind is the "rabbitmq" destination type.
var Kind = &sink.Kind{
	Name:      "rabbitmq",
	Delivered: "RabbitMQ confirmed the message (publisher confirm) after routing it to at least one queue, on disk for a durable queue",
	Secrets:   []string{"password"},
	URLs:      []string{"url"},
	Parse:     Parse,
}

// DefaultChannels is how many publishes a sender has in flight at most
// when the config says nothing: one per AMQP channel.
const DefaultChannels = 16

// Config is a RabbitMQ destination.
type Config struct {
	// URL is the broker: amqp://[user:password@]host:5672/vhost, or
	// amqps:// for TLS with the system's roots.
	URL string `json:"url"`
	// Password authenticates (with the URL's user) unless the URL carries
	// one.
	Password string `json:"password,omitempty"`
	// Exchange is where messages are published; "" is the default
	// exchange, which routes to the queue named by the routing key.
	Exchange string `json:"exchange"`
	// RoutingKey routes each message; "{type}" in it becomes the event's
	// type ("events.{type}" on a topic exchange).
	RoutingKey string `json:"routing_key"`
	// Mandatory (true unless set to false) has RabbitMQ return a message
	// that no queue takes, and the delivery is retried; false lets the
	// broker drop it and counts it delivered.
	Mandatory *bool `json:"mandatory,omitempty"`
	// Channels bounds the publishes in flight (DefaultChannels).
	Channels int `json:"channels,omitempty"`
}

// Parse decodes and validates a RabbitMQ config.
func Parse(raw json.RawMessage) (sink.Config, error) {
	var c Config
	if err := sink.DecodeStrict(raw, &c); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) validate() error {
	if c.URL == "" {
		return sink.Errorf("url", "required: amqp://host:5672/vhost")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return sink.Errorf("url", "does not parse")
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return sink.Errorf("url", "%s: want amqp:// or amqps://", sink.RedactURL(c.URL))
	}
	if u.Hostname() == "" {
		return sink.Errorf("url", "%s: no host", sink.RedactURL(c.URL))
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return sink.Errorf("url", "%s", sink.RedactString(err.Error(), c.SecretValues()...))
	}
	if len(c.Exchange) > 255 {
		return sink.Errorf("exchange", "longer than 255 bytes")
	}
	if c.RoutingKey == "" && c.Exchange == "" {
		return sink.Errorf("routing_key", "required with the default exchange: the name of the queue")
	}
	if len(c.RoutingKey) > 255 {
		return sink.Errorf("routing_key", "longer than 255 bytes")
	}
	if c.Channels < 0 || c.Channels > 1024 {
		return sink.Errorf("channels", "%d: want 1 to 1024 (default %d)", c.Channels, DefaultChannels)
	}
	return nil
}

func (c *Config) mandatory() bool { return c.Mandatory == nil || *c.Mandatory }

// Target is the broker (without credentials), exchange and routing key.
func (c *Config) Target() string {
	ex := c.Exchange
	if ex == "" {
		ex = "(default)"
	}
	return sink.RedactURL(c.URL) + " exchange " + ex + " routing key " + c.RoutingKey
}

// SecretValues are the password and the URL's.
func (c *Config) SecretValues() []string {
	out := []string{c.Password}
	if p := sink.URLPassword(c.URL); p != "" {
		out = append(out, p, c.URL)
	}
	return out
}

// Open connects to the broker.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	n := c.Channels
	if n == 0 {
		n = DefaultChannels
	}
	s := &Sender{cfg: c, env: env, slots: make(chan struct{}, n)}
	s.mu.Lock()
	_, err := s.connLocked(ctx)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Sender publishes over one connection, one publish in flight per channel,
// so that a returned message is never mistaken for another's; a connection
// that closed (a broker restart) is dialed again at the next Send.
type Sender struct {
	cfg   *Config
	env   sink.Env
	slots chan struct{} // one per publish in flight

	mu      sync.Mutex
	conn    *amqp.Connection
	blocked *atomic.Bool // of conn: RabbitMQ blocks publishers (an alarm)
	free    []*channel
	closed  bool
}

// channel is an AMQP channel in confirm mode with its returns.
type channel struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	closing chan *amqp.Error // why the broker closed the channel
}

// closedBecause is the error the broker closed c with, if it did.
func (c *channel) closedBecause() *amqp.Error {
	select {
	case e := <-c.closing:
		return e
	default:
		return nil
	}
}

func (s *Sender) connLocked(ctx context.Context) (*amqp.Connection, error) {
	if s.closed {
		return nil, sink.ErrClosed
	}
	if s.conn != nil && !s.conn.IsClosed() {
		return s.conn, nil
	}
	s.free = nil
	timeout := s.env.ConnectTimeout()
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), time.Millisecond)
	}
	cfg := amqp.Config{
		Properties: amqp.Table{"connection_name": "fanout", "product": "fanout"},
		Heartbeat:  10 * time.Second,
		Dial: func(network, addr string) (net.Conn, error) {
			conn, err := s.env.DialTimeout(network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake's deadline; amqp091 clears it once open.
			_ = conn.SetDeadline(time.Now().Add(timeout))
			return conn, nil
		},
	}
	raw := s.cfg.URL
	if s.cfg.Password != "" && sink.URLPassword(raw) == "" {
		uri, err := amqp.ParseURI(raw)
		if err != nil {
			return nil, sink.Fail(err, s.cfg.SecretValues()...)
		}
		uri.Password = s.cfg.Password
		raw = uri.String()
	}
	conn, err := amqp.DialConfig(raw, cfg)
	if err != nil {
		return nil, s.classify(fmt.Errorf("connecting to %s: %w", s.cfg.Target(), err))
	}
	blocked := new(atomic.Bool)
	notes := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
	go func() {
		for b := range notes {
			blocked.Store(b.Active)
		}
	}()
	s.conn, s.blocked = conn, blocked
	return conn, nil
}

// take returns a free channel, or opens one.
func (s *Sender) take(ctx context.Context) (*channel, *atomic.Bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	conn, err := s.connLocked(ctx)
	if err != nil {
		return nil, nil, err
	}
	for len(s.free) > 0 {
		c := s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
		if !c.ch.IsClosed() {
			return c, s.blocked, nil
		}
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, s.classify(fmt.Errorf("opening a channel to %s: %w", s.cfg.Target(), err))
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, nil, s.classify(fmt.Errorf("confirm mode on %s: %w", s.cfg.Target(), err))
	}
	return &channel{conn: conn, ch: ch, returns: ch.NotifyReturn(make(chan amqp.Return, 1)),
		closing: ch.NotifyClose(make(chan *amqp.Error, 1))}, s.blocked, nil
}

// give puts a channel back for the next publish; a channel whose state is
// unknown (a publish that timed out may still be confirmed, or returned,
// later) is closed instead.
func (s *Sender) give(c *channel, reuse bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reuse && !s.closed && c.conn == s.conn && !c.ch.IsClosed() {
		s.free = append(s.free, c)
		return
	}
	_ = c.ch.Close()
}

// Send publishes m, persistent and mandatory, and waits for the broker's
// confirm.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for a channel to %s: %v", dispatch.ErrTimeout, s.cfg.Target(), ctx.Err())
	}
	c, blocked, err := s.take(ctx)
	if err != nil {
		return err
	}
	if blocked.Load() {
		s.give(c, true)
		return fmt.Errorf("%w: %s blocks publishers (a memory or disk alarm)", dispatch.ErrThrottled, s.cfg.Target())
	}
	headers := amqp.Table{}
	for k, v := range m.Headers {
		headers[k] = v
	}
	set := func(k, v string) {
		if v != "" {
			headers[k] = v
		}
	}
	set(sink.HeaderDeliveryID, m.DeliveryID)
	set(sink.HeaderEventID, m.EventID)
	set(sink.HeaderEventType, m.Type)
	set(sink.HeaderTenant, m.Tenant)
	set(sink.HeaderKey, m.Key)
	pub := amqp.Publishing{
		Headers: headers, ContentType: m.ContentType, DeliveryMode: amqp.Persistent,
		MessageId: m.DeliveryID, Type: m.Type, AppId: "fanout", Body: m.Body,
	}
	key := strings.ReplaceAll(s.cfg.RoutingKey, "{type}", m.Type)
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, s.cfg.Exchange, key, s.cfg.mandatory(), false, pub)
	if err != nil {
		s.give(c, false)
		return s.classify(fmt.Errorf("publishing to %s: %w", s.cfg.Target(), err))
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		s.give(c, false)
		if ctx.Err() != nil {
			return fmt.Errorf("%w: no confirm from %s: %v", dispatch.ErrTimeout, s.cfg.Target(), ctx.Err())
		}
		if why := c.closedBecause(); why != nil {
			err = why
		}
		return s.classify(fmt.Errorf("waiting for the confirm of %s: %w", s.cfg.Target(), err))
	}
	// A returned message comes before its confirm, on the same channel,
	// and this channel had nothing else in flight.
	select {
	case r, ok := <-c.returns:
		if ok {
			s.give(c, true)
			return fmt.Errorf("%w: %s returned the message: no queue takes routing key %q (%d %s)",
				dispatch.ErrTemporary, s.cfg.Target(), key, r.ReplyCode, r.ReplyText)
		}
	default:
	}
	if !acked {
		// A channel error (an exchange that does not exist) nacks what
		// was in flight as it closes the channel; the close is notified
		// first: say why.
		if why := c.closedBecause(); why != nil {
			s.give(c, false)
			return s.classify(fmt.Errorf("publishing to %s: %w", s.cfg.Target(), why))
		}
		s.give(c, true)
		return fmt.Errorf("%w: %s refused the message (nack): a full queue that rejects publishes, or a broker error",
			dispatch.ErrThrottled, s.cfg.Target())
	}
	s.give(c, true)
	return nil
}

// permanent are the AMQP reply codes that the same publish meets again:
// access refused (credentials, permissions), not found (the exchange),
// precondition failed, not allowed (the vhost), content too large.
var permanent = map[int]bool{
	amqp.AccessRefused: true, amqp.NotFound: true, amqp.PreconditionFailed: true,
	amqp.NotAllowed: true, amqp.ContentTooLarge: true,
}

func (s *Sender) classify(err error) error {
	secrets := s.cfg.SecretValues()
	var blocked *webhook.BlockedError
	var ae *amqp.Error
	switch {
	case errors.As(err, &blocked):
		return sink.Fail(err, secrets...)
	case errors.As(err, &ae) && permanent[ae.Code]:
		return sink.Fail(err, secrets...)
	}
	return sink.Retry(err, secrets...)
}

// Close closes the connection.
func (s *Sender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.free = nil
	if s.conn != nil {
		return s.conn.Close()
	}
	return nil
}
