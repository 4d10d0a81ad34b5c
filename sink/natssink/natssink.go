// Package natssink delivers events to NATS JetStream.
//
// Delivered means JetStream acknowledged the message: the stream that
// captures the subject stored it (on disk, for a stream with file storage,
// replicated as the stream says) and answered with a PubAck. Each message
// carries Nats-Msg-Id = the delivery's id, so that a resend after a crash or
// a lost ack within the stream's duplicate window (Duplicates, two minutes
// by default) is dropped by JetStream and acknowledged as a duplicate.
package natssink

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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// Kind is the "nats" destination type.
var Kind = &sink.Kind{
	Name:      "nats",
	Delivered: "JetStream acknowledged the message (PubAck): the stream that captures the subject stored it",
	Secrets:   []string{"password", "token"},
	URLs:      []string{"url"},
	Parse:     Parse,
}

// Config is a NATS JetStream destination.
type Config struct {
	// URL is the server, or several separated by commas:
	// nats://host:4222, tls://host:4222 (TLS with the system's roots). It
	// may carry user:password@.
	URL string `json:"url"`
	// Subject is where messages are published; a stream must capture it.
	Subject string `json:"subject"`
	// User and Password, or Token, authenticate, unless the URL does.
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
	// Stream, when set, is the stream that must capture Subject: a
	// publish that another stream captures fails, for good.
	Stream string `json:"stream,omitempty"`
}

// Parse decodes and validates a NATS config.
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
	if strings.TrimSpace(c.URL) == "" {
		return sink.Errorf("url", "required: nats://host:4222")
	}
	for _, s := range strings.Split(c.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil {
			return sink.Errorf("url", "%s does not parse", sink.RedactString(s))
		}
		if u.Scheme != "nats" && u.Scheme != "tls" {
			return sink.Errorf("url", "%s: want nats:// or tls://", sink.RedactURL(s))
		}
		if u.Hostname() == "" {
			return sink.Errorf("url", "%s: no host", sink.RedactURL(s))
		}
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
			return sink.Errorf("url", "%s: a NATS URL has no path or query", sink.RedactURL(s))
		}
		// nats.go reads a userinfo without a password as a token, which
		// the config's masking (user:password@) would show to anyone who
		// may read the destination.
		if _, hasPassword := u.User.Password(); u.User != nil && !hasPassword {
			return sink.Errorf("url", "%s: a token in the URL would be shown with the destination: set it in token", sink.RedactURL(s))
		}
	}
	if err := checkSubject(c.Subject); err != nil {
		return sink.Errorf("subject", "%v", err)
	}
	if c.Token != "" && (c.User != "" || c.Password != "") {
		return sink.Errorf("token", "set a token or a user and password, not both")
	}
	if c.Password != "" && c.User == "" {
		return sink.Errorf("user", "required with a password")
	}
	if c.Stream != "" && strings.ContainsAny(c.Stream, ".*> \t\r\n/\\") {
		return sink.Errorf("stream", "%q: a stream name has no dots, wildcards, slashes or spaces", c.Stream)
	}
	return nil
}

// checkSubject accepts a subject one can publish to: dot-separated tokens,
// none empty, no wildcards, no white space.
func checkSubject(s string) error {
	if s == "" {
		return errors.New("required: the subject to publish to (a stream must capture it)")
	}
	if len(s) > 1024 {
		return errors.New("longer than 1024 bytes")
	}
	for _, tok := range strings.Split(s, ".") {
		switch {
		case tok == "":
			return fmt.Errorf("%q has an empty token", s)
		case tok == "*" || tok == ">":
			return fmt.Errorf("%q has a wildcard: publish to a plain subject", s)
		case strings.ContainsAny(tok, " \t\r\n\x00"):
			return fmt.Errorf("%q has white space", s)
		}
	}
	return nil
}

// Target is the servers (without credentials) and the subject.
func (c *Config) Target() string {
	return sink.RedactString(c.URL, c.SecretValues()...) + " subject " + c.Subject
}

// SecretValues are the password, the token, the passwords of the URLs and
// the URLs themselves.
func (c *Config) SecretValues() []string {
	out := []string{c.Password, c.Token}
	for _, s := range strings.Split(c.URL, ",") {
		if p := sink.URLPassword(strings.TrimSpace(s)); p != "" {
			out = append(out, p, s)
		}
	}
	return out
}

// Open connects to the servers. Every connection, including those to the
// servers a cluster announces later, is dialed through env.Dial.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	s := &Sender{cfg: c, env: env}
	if _, err := s.conn(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Sender publishes to JetStream over one connection, which the client
// re-establishes on its own after a broker restart; a connection that the
// client gave up on is replaced at the next Send.
type Sender struct {
	cfg *Config
	env sink.Env

	cur    atomic.Pointer[conn] // the connection Send uses, without a lock
	mu     sync.Mutex           // held to replace it
	closed bool
}

// conn is a connection and its JetStream handle.
type conn struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// dialer adapts sink.Env to nats.CustomDialer.
type dialer struct{ env sink.Env }

func (d dialer) Dial(network, addr string) (net.Conn, error) { return d.env.DialTimeout(network, addr) }

func (s *Sender) conn(ctx context.Context) (jetstream.JetStream, error) {
	if c := s.cur.Load(); c != nil && !c.nc.IsClosed() {
		return c.js, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, sink.ErrClosed
	}
	if c := s.cur.Load(); c != nil && !c.nc.IsClosed() {
		return c.js, nil
	}
	opts := []nats.Option{
		nats.Name("fanout"),
		nats.SetCustomDialer(dialer{s.env}),
		nats.Timeout(s.env.ConnectTimeout()),
		nats.MaxReconnects(-1),
		// A publish while the connection is down fails at once, and is
		// retried by the runtime, rather than waiting in a buffer for
		// its context to end.
		nats.ReconnectBufSize(-1),
		nats.NoCallbacksAfterClientClose(),
	}
	if s.cfg.User != "" {
		opts = append(opts, nats.UserInfo(s.cfg.User, s.cfg.Password))
	}
	if s.cfg.Token != "" {
		opts = append(opts, nats.Token(s.cfg.Token))
	}
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(s.cfg.URL, opts...)
		done <- result{nc, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() { // the connect ends within its timeout; drop what it makes
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("%w: connecting to %s: %v", dispatch.ErrTimeout, s.cfg.Target(), ctx.Err())
	}
	if r.err != nil {
		return nil, s.classify(fmt.Errorf("connecting to %s: %w", s.cfg.Target(), r.err))
	}
	js, err := jetstream.New(r.nc)
	if err != nil {
		r.nc.Close()
		return nil, s.classify(err)
	}
	s.cur.Store(&conn{nc: r.nc, js: js})
	return js, nil
}

// Send publishes m and waits for JetStream's PubAck. A duplicate (the same
// delivery id within the stream's window) counts as delivered.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	js, err := s.conn(ctx)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(s.cfg.Subject)
	msg.Data = m.Body
	for k, v := range m.Headers {
		msg.Header.Set(k, v)
	}
	set := func(k, v string) {
		if v != "" {
			msg.Header.Set(k, v)
		}
	}
	set(sink.HeaderDeliveryID, m.DeliveryID)
	set(sink.HeaderEventID, m.EventID)
	set(sink.HeaderEventType, m.Type)
	set(sink.HeaderTenant, m.Tenant)
	set(sink.HeaderKey, m.Key)
	set("Content-Type", m.ContentType)
	opts := []jetstream.PublishOpt{jetstream.WithMsgID(m.DeliveryID)}
	if s.cfg.Stream != "" {
		opts = append(opts, jetstream.WithExpectStream(s.cfg.Stream))
	}
	if _, err := js.PublishMsg(ctx, msg, opts...); err != nil {
		return s.classify(fmt.Errorf("publishing to %s: %w", s.cfg.Target(), err))
	}
	return nil
}

// classify makes err permanent when retrying cannot help (refused
// credentials, a blocked address, a message larger than the server takes,
// a stream that refuses the message for a reason other than load) and
// retryable otherwise (servers down, timeouts, no stream answering, which
// is what a stream between leaders looks like), redacting credentials.
func (s *Sender) classify(err error) error {
	secrets := s.cfg.SecretValues()
	var blocked *webhook.BlockedError
	var api *jetstream.APIError
	switch {
	case errors.As(err, &blocked),
		errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject):
		return sink.Fail(err, secrets...)
	case errors.As(err, &api):
		if api.Code >= 500 || api.Code == 429 || api.Code == 408 {
			return sink.Retry(err, secrets...)
		}
		return sink.Fail(err, secrets...)
	}
	return sink.Retry(err, secrets...)
}

// Close closes the connection.
func (s *Sender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if c := s.cur.Load(); c != nil {
		c.nc.Close() // a Send after this fails: the connection is closed
	}
	return nil
}
