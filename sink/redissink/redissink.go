// Package redissink delivers events to Redis Streams.
//
// Delivered means Redis executed the XADD: the entry is in the stream, in
// memory and in the append-only file as the server's appendfsync says
// (always: on disk before the answer; everysec: within a second). A resend
// of the same delivery within the dedup window (two minutes by default) is
// not added again: a marker key per delivery id, written in the same
// script as the XADD, says it was.
package redissink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/sink"
	"fanout/webhook"
)

// Kind is the "redis" destination type.
var Kind = &sink.Kind{
	Name:      "redis",
	Delivered: "Redis added the entry to the stream (XADD answered), durable as the server's appendfsync says",
	Secrets:   []string{"password"},
	URLs:      []string{"url"},
	Parse:     Parse,
}

// DefaultDedupWindow is how long a delivery id is remembered when the
// config says nothing: JetStream's default duplicate window.
const DefaultDedupWindow = 2 * time.Minute

// Config is a Redis Streams destination.
type Config struct {
	// URL is the server: redis://[user:password@]host:6379[/db], or
	// rediss:// for TLS with the system's roots.
	URL string `json:"url"`
	// Password authenticates (with the URL's user, if any) unless the URL
	// carries one.
	Password string `json:"password,omitempty"`
	// Stream is the key of the stream.
	Stream string `json:"stream"`
	// MaxLen, when above 0, trims the stream to about that many entries
	// (MAXLEN ~) as entries are added; Exact trims to exactly that many,
	// which costs Redis more.
	MaxLen int64 `json:"maxlen,omitempty"`
	Exact  bool  `json:"exact,omitempty"`
	// DedupWindow is how long a delivery id is remembered so that a
	// resend is not added twice ("2m" by default, "0s" never).
	DedupWindow string `json:"dedup_window,omitempty"`

	window time.Duration
}

// Parse decodes and validates a Redis config.
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
		return sink.Errorf("url", "required: redis://host:6379")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return sink.Errorf("url", "does not parse")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return sink.Errorf("url", "%s: want redis:// or rediss:// (a unix socket is not a destination)", sink.RedactURL(c.URL))
	}
	if u.Hostname() == "" {
		return sink.Errorf("url", "%s: no host", sink.RedactURL(c.URL))
	}
	if _, err := c.options(); err != nil {
		return sink.Errorf("url", "%v", sink.RedactString(err.Error(), c.SecretValues()...))
	}
	if c.Stream == "" {
		return sink.Errorf("stream", "required: the key of the stream")
	}
	if len(c.Stream) > 512 {
		return sink.Errorf("stream", "longer than 512 bytes")
	}
	if c.MaxLen < 0 {
		return sink.Errorf("maxlen", "must be 0 (no trimming) or more")
	}
	if c.Exact && c.MaxLen == 0 {
		return sink.Errorf("exact", "trims to maxlen: set maxlen too")
	}
	c.window = DefaultDedupWindow
	if c.DedupWindow != "" {
		w, err := time.ParseDuration(c.DedupWindow)
		if err != nil {
			return sink.Errorf("dedup_window", "%q: want a duration such as \"2m\" or \"0s\" (off)", c.DedupWindow)
		}
		c.window = w
	}
	if w := c.window; w < 0 || (w > 0 && w < time.Second) || w > 7*24*time.Hour {
		return sink.Errorf("dedup_window", "%v: want 0s (off) or from 1s to 168h", w)
	}
	return nil
}

// options are the client's options from the URL.
func (c *Config) options() (*redis.Options, error) {
	o, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, err
	}
	if c.Password != "" && o.Password == "" {
		o.Password = c.Password
	}
	return o, nil
}

// Target is the server (without credentials) and the stream.
func (c *Config) Target() string {
	return sink.RedactURL(c.URL) + " stream " + c.Stream
}

// SecretValues are the password and the URL's.
func (c *Config) SecretValues() []string {
	out := []string{c.Password}
	if p := sink.URLPassword(c.URL); p != "" {
		out = append(out, p, c.URL)
	}
	return out
}

// Open makes the client and checks the server answers (and takes the
// credentials) with a PING.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	quiet.Do(func() { redis.SetLogger(discard{}) })
	o, err := c.options()
	if err != nil {
		return nil, sink.Fail(err, c.SecretValues()...)
	}
	tlsConfig := o.TLSConfig
	o.TLSConfig = nil
	o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return env.DialTLS(ctx, network, addr, tlsConfig)
	}
	o.DialTimeout = env.ConnectTimeout()
	// One dial per attempt, one retry of a command (a pooled connection
	// that a restart closed): the runtime retries with backoff and the
	// breaker, which see the failure rather than a client that hides it.
	o.DialerRetries = 1
	o.MaxRetries = 1
	o.ContextTimeoutEnabled = true
	o.DisableIdentity = true
	o.ClientName = "fanout"
	s := &Sender{cfg: c, client: redis.NewClient(o), window: c.window}
	if err := s.client.Ping(ctx).Err(); err != nil {
		_ = s.client.Close()
		return nil, s.classify(fmt.Errorf("connecting to %s: %w", c.Target(), err))
	}
	return s, nil
}

// quiet silences go-redis's own logger, which writes to stderr whatever
// its pool meets (every failed dial), outside fanout's logs; what matters
// comes back as the error of a Send. The logger is the package's, global:
// fanout has no other go-redis client.
var quiet sync.Once

type discard struct{}

func (discard) Printf(context.Context, string, ...any) {}

// Sender adds entries to one stream through a pool of connections.
type Sender struct {
	cfg    *Config
	client *redis.Client
	window time.Duration
}

// add checks the delivery's marker and adds the entry in one step, so that
// two attempts of the same delivery never both add it. KEYS: the stream,
// the marker. ARGV: the window in ms (0: no marker), maxlen (0: none), "1"
// for exact trimming, then the entry's fields and values.
var add = redis.NewScript(`
local window = tonumber(ARGV[1])
if window > 0 then
  local prev = redis.call('GET', KEYS[2])
  if prev then return prev end
end
local args = {'XADD', KEYS[1]}
if ARGV[2] ~= '0' then
  table.insert(args, 'MAXLEN')
  if ARGV[3] ~= '1' then table.insert(args, '~') end
  table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 4, #ARGV do table.insert(args, ARGV[i]) end
local id = redis.call(unpack(args))
if window > 0 then redis.call('SET', KEYS[2], id, 'PX', window) end
return id
`)

// Fields of an entry: the delivery id, the event's id, type and tenant,
// its key, the content type, the destination's headers (a JSON object)
// and the body.
const (
	FieldID          = "id"
	FieldEventID     = "event_id"
	FieldType        = "type"
	FieldTenant      = "tenant"
	FieldKey         = "key"
	FieldContentType = "content_type"
	FieldHeaders     = "headers"
	FieldBody        = "body"
)

// MarkerKey is the key that remembers a delivery in a stream.
func MarkerKey(stream, deliveryID string) string {
	return stream + ":fanout-delivered:" + deliveryID
}

// Send adds m to the stream, unless the same delivery was added within
// the dedup window.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	exact := "0"
	if s.cfg.Exact {
		exact = "1"
	}
	args := []any{s.window.Milliseconds(), s.cfg.MaxLen, exact,
		FieldID, m.DeliveryID, FieldEventID, m.EventID, FieldType, m.Type, FieldTenant, m.Tenant}
	if m.Key != "" {
		args = append(args, FieldKey, m.Key)
	}
	if m.ContentType != "" {
		args = append(args, FieldContentType, m.ContentType)
	}
	if len(m.Headers) > 0 {
		h, _ := json.Marshal(m.Headers)
		args = append(args, FieldHeaders, h)
	}
	args = append(args, FieldBody, m.Body)
	var err error
	if s.window > 0 {
		err = add.Run(ctx, s.client, []string{s.cfg.Stream, MarkerKey(s.cfg.Stream, m.DeliveryID)}, args...).Err()
	} else {
		// No marker: a plain XADD, which costs Redis less than a script.
		err = s.client.XAdd(ctx, &redis.XAddArgs{Stream: s.cfg.Stream, MaxLen: s.cfg.MaxLen, Approx: !s.cfg.Exact,
			Values: args[3:]}).Err()
	}
	if err != nil {
		return s.classify(fmt.Errorf("adding to %s: %w", s.cfg.Target(), err))
	}
	return nil
}

// permanentReplies are the error replies that the same command meets
// again: credentials refused, a key of another type, a command the user
// may not run. Others (OOM under noeviction, READONLY during a fail-over,
// LOADING, BUSY) pass.
var permanentReplies = []string{"WRONGPASS", "NOAUTH", "NOPERM", "WRONGTYPE", "ERR AUTH", "ERR invalid password"}

func (s *Sender) classify(err error) error {
	secrets := s.cfg.SecretValues()
	var blocked *webhook.BlockedError
	if errors.As(err, &blocked) {
		return sink.Fail(err, secrets...)
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		msg := reply.Error()
		for _, p := range permanentReplies {
			if strings.HasPrefix(msg, p) {
				return sink.Fail(err, secrets...)
			}
		}
	}
	return sink.Retry(err, secrets...)
}

// Close closes the connections.
func (s *Sender) Close() error { return s.client.Close() }
