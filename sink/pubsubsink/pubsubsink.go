// Package pubsubsink delivers events to Google Cloud Pub/Sub topics.
//
// Delivered means Pub/Sub accepted the message: the publish returned the
// server's message id, which Pub/Sub gives once it has stored the message
// in more than one zone. The message is the event's body as is, with
// attributes carrying the delivery and event id, the event type, the
// tenant and the key. With "ordering": true the message's key is its
// ordering key, so that a subscription with message ordering receives the
// events of one key in the order they were published. Pub/Sub has no
// deduplication on publish: a resend after a lost answer is a second
// message (the fanout-delivery-id attribute lets a subscriber drop it).
//
// A config brings a service account key (credentials_json, of type
// service_account only: other credential types make the client fetch
// URLs or run programs named in the file), or names an emulator, or, where
// the operator allows it (--allow-ambient-google), asks for fanout's own
// application default credentials.
package pubsubsink

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/auth/credentials"
	"cloud.google.com/go/pubsub/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// Delivered is what a nil Send means.
const Delivered = "Pub/Sub accepted the message (the publish returned its message id)"

// Kind is the "pubsub" destination type, without ambient credentials.
var Kind = NewKind(sink.Ambient{})

// NewKind returns the "pubsub" kind; amb.Google lets a config use fanout's
// own application default credentials (see sink.Ambient).
func NewKind(amb sink.Ambient) *sink.Kind {
	return &sink.Kind{
		Name:      "pubsub",
		Delivered: Delivered,
		Secrets:   []string{"credentials_json"},
		URLs:      []string{"emulator_host", "endpoint"},
		Parse:     func(raw json.RawMessage) (sink.Config, error) { return parse(raw, amb) },
	}
}

// Scope is the OAuth scope of publishing.
const Scope = "https://www.googleapis.com/auth/pubsub"

// DefaultEndpoint is Pub/Sub's global endpoint.
const DefaultEndpoint = "pubsub.googleapis.com:443"

// Config is a Pub/Sub destination.
type Config struct {
	// ProjectID is the topic's project.
	ProjectID string `json:"project_id"`
	// Topic is the topic's id ("orders") or full name
	// ("projects/P/topics/orders", whose project must be ProjectID).
	Topic string `json:"topic"`
	// CredentialsJSON is a service account key file's content.
	CredentialsJSON string `json:"credentials_json,omitempty"`
	// EmulatorHost is the host:port of a Pub/Sub emulator (or pstest):
	// plain gRPC without credentials.
	EmulatorHost string `json:"emulator_host,omitempty"`
	// Endpoint replaces DefaultEndpoint (a regional endpoint, Private
	// Service Connect): host:port, over TLS.
	Endpoint string `json:"endpoint,omitempty"`
	// Ordering publishes each message with its key as ordering key.
	Ordering bool `json:"ordering,omitempty"`
	// AmbientCredentials uses fanout's own application default
	// credentials (--allow-ambient-google).
	AmbientCredentials bool `json:"ambient_credentials,omitempty"`

	allowAmbient bool
	key          serviceAccount
}

// serviceAccount is what the kind reads of a key file.
type serviceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
}

// Parse decodes and validates a Pub/Sub config for a kind without ambient
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

var (
	projectRE = regexp.MustCompile(`^[a-z][a-z0-9.:-]{4,61}[a-z0-9]$|^[a-z][a-z0-9-]{0,61}[a-z0-9]?$`)
	topicRE   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$`)
)

func checkHostPort(field, hp string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil || host == "" || port == "" || strings.Contains(hp, "/") {
		return sink.Errorf(field, "%q: want host:port", hp)
	}
	return nil
}

func (c *Config) validate(amb sink.Ambient) error {
	c.allowAmbient = amb.Google
	if name, ok := strings.CutPrefix(c.Topic, "projects/"); ok {
		proj, id, ok := strings.Cut(name, "/topics/")
		if !ok {
			return sink.Errorf("topic", "%q: want projects/PROJECT/topics/TOPIC or the topic's id", c.Topic)
		}
		if c.ProjectID == "" {
			c.ProjectID = proj
		}
		if proj != c.ProjectID {
			return sink.Errorf("topic", "the topic is in project %q, the destination's is %q", proj, c.ProjectID)
		}
		c.Topic = id
	}
	switch {
	case c.ProjectID == "":
		return sink.Errorf("project_id", "required: the Google Cloud project of the topic")
	case !projectRE.MatchString(c.ProjectID):
		return sink.Errorf("project_id", "%q is not a project id", c.ProjectID)
	case c.Topic == "":
		return sink.Errorf("topic", "required: the topic's id")
	case !topicRE.MatchString(c.Topic) || strings.HasPrefix(c.Topic, "goog"):
		return sink.Errorf("topic", "%q is not a topic id (3 to 255 letters, digits, - _ . ~ + %%, starting with a letter, not goog)", c.Topic)
	}
	if c.Endpoint != "" {
		if err := checkHostPort("endpoint", c.Endpoint); err != nil {
			return err
		}
	}
	n := 0
	for _, set := range []bool{c.CredentialsJSON != "", c.EmulatorHost != "", c.AmbientCredentials} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return sink.Errorf("credentials_json", "required: a service account key (or emulator_host for an emulator)")
	case n > 1:
		return sink.Errorf("credentials_json", "set one of credentials_json, emulator_host and ambient_credentials")
	case c.EmulatorHost != "":
		if c.Endpoint != "" {
			return sink.Errorf("endpoint", "not with emulator_host")
		}
		return checkHostPort("emulator_host", c.EmulatorHost)
	case c.AmbientCredentials:
		if !amb.Google {
			return sink.Errorf("ambient_credentials", "fanout's own Google credentials are not available to destinations: the operator allows them for their own destinations with %s", sink.FlagAmbientGoogle)
		}
		return nil
	}
	return c.checkKey()
}

// checkKey accepts a service account key and nothing else: an external
// account or impersonation file would make the client fetch the URLs or run
// the programs it names.
func (c *Config) checkKey() error {
	if err := json.Unmarshal([]byte(c.CredentialsJSON), &c.key); err != nil {
		return sink.Errorf("credentials_json", "not a JSON key file: %v", err)
	}
	if c.key.Type != "service_account" {
		return sink.Errorf("credentials_json", "a key of type %q: only service_account keys are accepted", c.key.Type)
	}
	if c.key.ClientEmail == "" || c.key.PrivateKey == "" {
		return sink.Errorf("credentials_json", "the key has no client_email or private_key")
	}
	block, _ := pem.Decode([]byte(c.key.PrivateKey))
	if block == nil {
		return sink.Errorf("credentials_json", "private_key is not PEM")
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		if _, err := x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
			return sink.Errorf("credentials_json", "private_key does not parse")
		}
	}
	return nil
}

// AmbientFlag is sink.FlagAmbientGoogle when the config uses fanout's own
// credentials.
func (c *Config) AmbientFlag() string {
	if c.AmbientCredentials {
		return sink.FlagAmbientGoogle
	}
	return ""
}

// Target is the topic and where it is reached.
func (c *Config) Target() string {
	where := c.Endpoint
	if c.EmulatorHost != "" {
		where = "emulator " + c.EmulatorHost
	}
	if where == "" {
		where = DefaultEndpoint
	}
	return "pubsub projects/" + c.ProjectID + "/topics/" + c.Topic + " at " + where
}

// SecretValues are the key file and its private key, for sink.Redact.
func (c *Config) SecretValues() []string {
	return []string{c.CredentialsJSON, c.key.PrivateKey, c.key.PrivateKeyID}
}

// credentials are the credentials requests are made with: the config's
// key, signing its own tokens (a self-signed JWT: no token exchange, so no
// request to the token_uri the file names), or the ambient ones; nil for
// an emulator.
func (c *Config) credentials(client *http.Client) (*auth.Credentials, error) {
	switch {
	case c.EmulatorHost != "":
		return nil, nil
	case c.AmbientCredentials:
		if !c.allowAmbient {
			return nil, sink.Fail(fmt.Errorf("ambient Google credentials are off (%s): the destination cannot authenticate", sink.FlagAmbientGoogle))
		}
		// The search's requests (the metadata server) are fanout's own,
		// to its own environment: not through the guard.
		creds, err := credentials.DetectDefault(&credentials.DetectOptions{Scopes: []string{Scope}})
		if err != nil {
			return nil, sink.Fail(fmt.Errorf("finding the ambient Google credentials: %w", err))
		}
		return creds, nil
	}
	creds, err := credentials.NewCredentialsFromJSON(credentials.ServiceAccount, []byte(c.CredentialsJSON), &credentials.DetectOptions{
		Scopes: []string{Scope}, UseSelfSignedJWT: true, Client: client,
	})
	if err != nil {
		return nil, sink.Fail(fmt.Errorf("the service account key: %w", err), c.SecretValues()...)
	}
	return creds, nil
}

// PublishTimeout bounds the client's own retries of one publish; the
// delivery's context usually ends first.
const PublishTimeout = 30 * time.Second

// Open makes the client and checks, through the guard, that the endpoint
// may be reached: a blocked address is refused at once, for good, rather
// than by the client's retries until the delivery times out.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	if os.Getenv("PUBSUB_EMULATOR_HOST") != "" {
		// The client library would send every topic's messages to that
		// emulator, without credentials.
		return nil, sink.Retry(errors.New("PUBSUB_EMULATOR_HOST is set in fanout's environment: unset it (a destination names its emulator in emulator_host)"))
	}
	s := &Sender{cfg: c}
	addr := c.Endpoint
	if addr == "" {
		addr = DefaultEndpoint
	}
	if c.EmulatorHost != "" {
		addr = c.EmulatorHost
	}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := env.DialContext(ctx, "tcp", addr)
		var blocked *webhook.BlockedError
		if errors.As(err, &blocked) {
			s.blocked.Store(&err)
		}
		return conn, err
	}
	probe, err := dial(ctx, addr)
	if err != nil {
		return nil, s.classify(fmt.Errorf("connecting to %s: %w", c.Target(), err))
	}
	_ = probe.Close()

	tr := &http.Transport{Proxy: nil, DialContext: env.DialContext, TLSHandshakeTimeout: env.ConnectTimeout()}
	s.closeIdle = tr.CloseIdleConnections
	creds, err := c.credentials(&http.Client{Transport: tr})
	if err != nil {
		return nil, err
	}
	opts := []option.ClientOption{
		option.WithEndpoint(addr),
		option.WithGRPCDialOption(grpc.WithContextDialer(dial)),
		option.WithTelemetryDisabled(),
	}
	if creds == nil {
		opts = append(opts, option.WithoutAuthentication(), option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	} else {
		opts = append(opts, option.WithAuthCredentials(creds))
	}
	client, err := pubsub.NewClient(ctx, c.ProjectID, opts...)
	if err != nil {
		return nil, s.classify(fmt.Errorf("connecting to %s: %w", c.Target(), err))
	}
	pub := client.Publisher(c.Topic)
	pub.EnableMessageOrdering = c.Ordering
	pub.PublishSettings.Timeout = PublishTimeout
	// A delivery waits for its own message: a short bundling delay keeps
	// the latency of a lone message low while a busy destination still
	// sends batches.
	pub.PublishSettings.DelayThreshold = time.Millisecond
	s.client, s.pub = client, pub
	return s, nil
}

// Sender publishes to one topic.
type Sender struct {
	cfg       *Config
	client    *pubsub.Client
	pub       *pubsub.Publisher
	closeIdle func()
	blocked   atomic.Pointer[error] // the last dial the guard refused

	mu     sync.Mutex
	closed bool
}

// Send publishes m and waits for the server's message id.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	attrs := make(map[string]string, 5+len(m.Headers))
	for k, v := range m.Headers {
		if strings.HasPrefix(strings.ToLower(k), "goog") {
			return fmt.Errorf("%w: header %q cannot be a Pub/Sub attribute: goog is Google's prefix", dispatch.ErrPermanent, k)
		}
		attrs[k] = v
	}
	set := func(k, v string) {
		if v != "" {
			attrs[k] = v
		}
	}
	set(sink.HeaderDeliveryID, m.DeliveryID)
	set(sink.HeaderEventID, m.EventID)
	set(sink.HeaderEventType, m.Type)
	set(sink.HeaderTenant, m.Tenant)
	set(sink.HeaderKey, m.Key)
	set("content-type", m.ContentType)
	msg := &pubsub.Message{Data: m.Body, Attributes: attrs}
	if s.cfg.Ordering {
		msg.OrderingKey = m.Key
	}
	_, err := s.pub.Publish(ctx, msg).Get(ctx)
	if err == nil {
		return nil
	}
	if msg.OrderingKey != "" {
		// The publisher pauses a key after a failure, so that a later
		// message of it cannot overtake; the runtime retries this one.
		s.pub.ResumePublish(msg.OrderingKey)
	}
	return s.classify(fmt.Errorf("publishing to %s: %w", s.cfg.Target(), err))
}

// classify: a blocked address and refused credentials (the config's key)
// are permanent, as is a message Pub/Sub refuses; a missing topic and a
// denied permission are retried (a topic can be created, a role granted
// without an edit of the destination; the breaker and the retry budget end
// it), and so is all the rest: unavailable, exhausted, timeouts.
func (s *Sender) classify(err error) error {
	secrets := s.cfg.SecretValues()
	var blocked *webhook.BlockedError
	if errors.As(err, &blocked) {
		return sink.Fail(err, secrets...)
	}
	if b := s.blocked.Load(); b != nil {
		// gRPC keeps its dialer's error as text only.
		return sink.Fail(fmt.Errorf("%w (%v)", err, *b), secrets...)
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unauthenticated:
			if s.cfg.AmbientCredentials {
				return sink.Retry(err, secrets...)
			}
			return sink.Fail(err, secrets...)
		case codes.InvalidArgument, codes.OutOfRange, codes.Unimplemented, codes.FailedPrecondition:
			return sink.Fail(err, secrets...)
		}
		if st.Code() != codes.OK && st.Code() != codes.Unknown {
			return sink.Retry(err, secrets...)
		}
	}
	if st := dispatch.ErrorStatus(err); st.Retryable() {
		return sink.Redact(err, secrets...)
	}
	return sink.Retry(err, secrets...)
}

// Close stops the publisher and closes the client, without waiting: Stop
// waits for the messages the publisher still holds, which a server that
// does not answer keeps for up to PublishTimeout, and the pool closes a
// sender when its destination changes, where nothing should wait.
func (s *Sender) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	go func() {
		s.pub.Stop()
		s.closeIdle()
		_ = s.client.Close()
	}()
	return nil
}
