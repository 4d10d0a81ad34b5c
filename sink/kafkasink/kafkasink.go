// Package kafkasink delivers events to Kafka.
//
// Delivered means every in-sync replica of the partition has the record:
// the producer is idempotent and asks for acks=all, so the leader answers
// only once the record is replicated as the topic's min.insync.replicas
// requires, and a retry inside the client (after a lost answer) is not
// written twice. Kafka has no dedup across producers: a delivery retried by
// fanout after its attempt failed may be written again; every record
// carries the delivery's id in its fanout-delivery-id header for consumers
// to drop it.
package kafkasink

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// Kind is the "kafka" destination type.
var Kind = &sink.Kind{
	Name:      "kafka",
	Delivered: "every in-sync replica of the partition has the record (idempotent producer, acks=all)",
	Secrets:   []string{"password"},
	Address:   []string{"brokers", "tls", "sasl", "username"},
	Parse:     Parse,
}

// Config is a Kafka destination.
type Config struct {
	// Brokers are the seed brokers, host:port; the cluster names the
	// others, and every one is dialed through the SSRF guard.
	Brokers []string `json:"brokers"`
	// Topic is where records go.
	Topic string `json:"topic"`
	// PartitionKey is a dotted path into the event ("data.customer_id",
	// as gjson reads it) whose value keys the record, so that one
	// customer's events keep their order in one partition. Without it, the
	// delivery's ordering key, if any, keys the record; an event without
	// the field goes unkeyed.
	PartitionKey string `json:"partition_key,omitempty"`
	// TLS connects with TLS (the system's roots).
	TLS bool `json:"tls,omitempty"`
	// SASL is "plain", "scram-sha-256" or "scram-sha-512", with Username
	// and Password; "" is none.
	SASL     string `json:"sasl,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// Parse decodes and validates a Kafka config.
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
	if len(c.Brokers) == 0 {
		return sink.Errorf("brokers", `required: ["host:9092"]`)
	}
	for i, b := range c.Brokers {
		host, port, err := net.SplitHostPort(b)
		if strings.Contains(b, "://") || strings.Contains(b, "@") || err != nil || host == "" {
			return sink.Errorf(fmt.Sprintf("brokers[%d]", i), "%q: want host:port", sink.RedactString(b))
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return sink.Errorf(fmt.Sprintf("brokers[%d]", i), "%q: the port is not a number from 1 to 65535", b)
		}
	}
	if c.Topic == "" {
		return sink.Errorf("topic", "required")
	}
	if len(c.Topic) > 249 || strings.Trim(c.Topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" || c.Topic == "." || c.Topic == ".." {
		return sink.Errorf("topic", "%q: a topic name is 1 to 249 letters, digits, '.', '_' or '-'", c.Topic)
	}
	if c.PartitionKey != "" && (strings.HasPrefix(c.PartitionKey, ".") || strings.HasSuffix(c.PartitionKey, ".") || strings.Contains(c.PartitionKey, "..")) {
		return sink.Errorf("partition_key", "%q: want a dotted path such as data.customer_id", c.PartitionKey)
	}
	switch c.SASL {
	case "":
		if c.Username != "" || c.Password != "" {
			return sink.Errorf("sasl", `set "plain", "scram-sha-256" or "scram-sha-512" to use username and password`)
		}
	case "plain", "scram-sha-256", "scram-sha-512":
		if c.Username == "" {
			return sink.Errorf("username", "required with sasl")
		}
		if c.Password == "" {
			return sink.Errorf("password", "required with sasl")
		}
	default:
		return sink.Errorf("sasl", "%q: want plain, scram-sha-256 or scram-sha-512", c.SASL)
	}
	return nil
}

// Target is the seed brokers and the topic.
func (c *Config) Target() string {
	return strings.Join(c.Brokers, ",") + " topic " + c.Topic
}

// SecretValues is the password.
func (c *Config) SecretValues() []string { return []string{c.Password} }

func (c *Config) mechanism() sasl.Mechanism {
	switch c.SASL {
	case "plain":
		return plain.Auth{User: c.Username, Pass: c.Password}.AsMechanism()
	case "scram-sha-256":
		return scram.Auth{User: c.Username, Pass: c.Password}.AsSha256Mechanism()
	case "scram-sha-512":
		return scram.Auth{User: c.Username, Pass: c.Password}.AsSha512Mechanism()
	}
	return nil
}

// Open makes the client and checks that the cluster answers (and takes
// the credentials) and knows the topic.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	var tlsConfig *tls.Config
	if c.TLS {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	timeout := env.ConnectTimeout()
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID("fanout"),
		kgo.Dialer(func(ctx context.Context, network, host string) (net.Conn, error) {
			return env.DialTLS(ctx, network, host, tlsConfig)
		}),
		kgo.DialTimeout(timeout),
		kgo.DefaultProduceTopic(c.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // the default with idempotence: said, not assumed
		kgo.ProducerLinger(0),
		// A record that cannot be written in this long fails, and the
		// runtime retries the delivery with backoff.
		kgo.RecordDeliveryTimeout(3 * timeout),
		kgo.UnknownTopicRetries(2),
	}
	if m := c.mechanism(); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	dials := &dialErrors{}
	opts = append(opts, kgo.WithHooks(dials))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, sink.Fail(err, c.SecretValues()...)
	}
	s := &Sender{cfg: c, client: cl, dials: dials}
	// A metadata request for the topic: the connection, the credentials
	// and the topic, checked before the first delivery needs them.
	if err := s.ping(ctx); err != nil {
		cl.Close()
		return nil, err
	}
	return s, nil
}

// Sender produces to one topic through one client, which keeps a
// connection to each broker it needs.
type Sender struct {
	cfg    *Config
	client *kgo.Client
	dials  *dialErrors
}

// dialErrors keeps the last refusal of the SSRF guard, from any of the
// client's connections: the client retries a broker it cannot reach
// without failing the record, so a delivery whose partition leader sits on
// a refused address would otherwise only time out.
type dialErrors struct {
	blocked atomic.Pointer[webhook.BlockedError]
}

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (d *dialErrors) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	var be *webhook.BlockedError
	if errors.As(err, &be) {
		d.blocked.Store(be)
	} else if err == nil {
		d.blocked.Store(nil)
	}
}

func (s *Sender) ping(ctx context.Context) error {
	if err := s.client.Ping(ctx); err != nil {
		return s.classify(fmt.Errorf("connecting to %s: %w", s.cfg.Target(), err))
	}
	return nil
}

// Send produces m and waits for the record's acknowledgement.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	r := &kgo.Record{Topic: s.cfg.Topic, Value: m.Body}
	key := m.Key
	if s.cfg.PartitionKey != "" {
		key = ""
		if v := gjson.GetBytes(m.Body, s.cfg.PartitionKey); v.Exists() && v.Type != gjson.Null {
			key = v.String()
		}
	}
	if key != "" {
		r.Key = []byte(key)
	}
	add := func(k, v string) {
		if v != "" {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
	}
	add(sink.HeaderDeliveryID, m.DeliveryID)
	add(sink.HeaderEventID, m.EventID)
	add(sink.HeaderEventType, m.Type)
	add(sink.HeaderTenant, m.Tenant)
	add("content-type", m.ContentType)
	for k, v := range m.Headers {
		add(k, v)
	}
	// Not ProduceSync: an idempotent producer does not give up a record
	// that was sent without an answer (failing it could break the
	// partition's sequence), so it would wait for a broker that is down
	// as long as it is down. The delivery stops waiting when its context
	// ends and is retried; the record may still be written meanwhile,
	// which the delivery id in its headers lets consumers drop.
	done := make(chan error, 1)
	s.client.Produce(ctx, r, func(_ *kgo.Record, err error) { done <- err })
	select {
	case err := <-done:
		if err != nil {
			return s.classify(fmt.Errorf("producing to %s: %w", s.cfg.Target(), err))
		}
		return nil
	case <-ctx.Done():
		if be := s.dials.blocked.Load(); be != nil {
			return sink.Fail(fmt.Errorf("producing to %s: a broker of the cluster: %w", s.cfg.Target(), be))
		}
		return fmt.Errorf("%w: no acknowledgement from %s (the record may still be written): %v",
			dispatch.ErrTimeout, s.cfg.Target(), ctx.Err())
	}
}

// classify makes err permanent when the same record meets it again (the
// guard refused a broker, credentials or ACLs refused, a record too large,
// an invalid topic) and retryable otherwise: a broker down, a leader
// moving, a full quota, a timeout.
func (s *Sender) classify(err error) error {
	secrets := s.cfg.SecretValues()
	var blocked *webhook.BlockedError
	var ke *kerr.Error
	switch {
	case errors.As(err, &blocked):
		return sink.Fail(err, secrets...)
	case errors.As(err, &ke):
		if kerr.IsRetriable(ke) || ke == kerr.UnknownTopicOrPartition || ke == kerr.ThrottlingQuotaExceeded {
			return sink.Retry(err, secrets...)
		}
		return sink.Fail(err, secrets...)
	case errors.Is(err, kgo.ErrRecordTimeout), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %v", dispatch.ErrTimeout, sink.Redact(err, secrets...))
	}
	return sink.Retry(err, secrets...)
}

// Close flushes nothing (every Send waited for its record) and closes the
// client's connections.
func (s *Sender) Close() error {
	s.client.Close()
	return nil
}
