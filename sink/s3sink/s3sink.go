// Package s3sink delivers events to Amazon S3 (or a store that speaks its
// API) as one object per event.
//
// Delivered means S3 stored the object: PutObject answered 200, which S3
// does once the object is durably stored. The object's key comes from a
// template with the event's id or the delivery's (required, so that two
// events never share a key), its type, tenant and the date; its content
// type is the event's, and its metadata carries the delivery and event id,
// the type, the tenant and the key. A resend writes the same key with the
// same bytes, so it leaves the bucket as it was: the kind is idempotent by
// key, as long as the key does not move with the date between the two
// attempts (see Config.KeyTemplate).
package s3sink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

// Delivered is what a nil Send means.
const Delivered = "S3 stored the object (PutObject answered 200); a resend writes the same key with the same bytes"

// Kind is the "s3" destination type, without ambient credentials.
var Kind = NewKind(sink.Ambient{})

// NewKind returns the "s3" kind; amb.AWS lets a config use fanout's own AWS
// credentials (see sink.Ambient).
func NewKind(amb sink.Ambient) *sink.Kind {
	return &sink.Kind{
		Name:      "s3",
		Delivered: Delivered,
		Secrets:   awsbase.Secrets,
		URLs:      append([]string{"bucket"}, awsbase.URLs...),
		Parse:     func(raw json.RawMessage) (sink.Config, error) { return parse(raw, amb) },
	}
}

// DefaultKeyTemplate is the key of an object when the config has no
// template: a prefix per type and day, the event's id.
const DefaultKeyTemplate = "events/{type}/{date}/{event_id}"

// Config is an S3 destination.
type Config struct {
	awsbase.Auth
	// Bucket is the bucket's name.
	Bucket string `json:"bucket"`
	// KeyTemplate is the objects' key, with placeholders: {event_id},
	// {delivery_id} (one of the two is required), {type}, {tenant},
	// {date} (2006-01-02), {year}, {month}, {day}, {hour}. The date is
	// the event's (sink.Message.Time, when fanout accepted it), in UTC, so
	// that a retry across midnight writes the same object; the attempt's
	// when the message has no time. Default DefaultKeyTemplate.
	KeyTemplate string `json:"key_template,omitempty"`
	// PathStyle addresses the bucket in the path (host/bucket/key) rather
	// than the host (bucket.host/key): for MinIO, LocalStack, moto. It
	// defaults to true with an endpoint_url, false without.
	PathStyle *bool `json:"path_style,omitempty"`
	// StorageClass is the objects' storage class (default the bucket's).
	StorageClass string `json:"storage_class,omitempty"`
}

// Parse decodes and validates an S3 config for a kind without ambient
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
	bucketName  = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	placeholder = regexp.MustCompile(`\{[^{}]*\}`)
)

var placeholders = map[string]bool{
	"{event_id}": true, "{delivery_id}": true, "{type}": true, "{tenant}": true,
	"{date}": true, "{year}": true, "{month}": true, "{day}": true, "{hour}": true,
}

var storageClasses = map[string]bool{
	"STANDARD": true, "REDUCED_REDUNDANCY": true, "STANDARD_IA": true, "ONEZONE_IA": true,
	"INTELLIGENT_TIERING": true, "GLACIER": true, "DEEP_ARCHIVE": true, "GLACIER_IR": true, "EXPRESS_ONEZONE": true,
}

func (c *Config) validate(amb sink.Ambient) error {
	if c.Bucket == "" {
		return sink.Errorf("bucket", "required: the bucket's name")
	}
	if !bucketName.MatchString(c.Bucket) || strings.Contains(c.Bucket, "..") {
		return sink.Errorf("bucket", "%q is not a bucket name (3 to 63 lower-case letters, digits, dots and hyphens)", c.Bucket)
	}
	if c.KeyTemplate == "" {
		c.KeyTemplate = DefaultKeyTemplate
	}
	if len(c.KeyTemplate) > 512 || !utf8.ValidString(c.KeyTemplate) || strings.HasPrefix(c.KeyTemplate, "/") {
		return sink.Errorf("key_template", "at most 512 bytes of UTF-8, not starting with /")
	}
	for _, p := range placeholder.FindAllString(c.KeyTemplate, -1) {
		if !placeholders[p] {
			return sink.Errorf("key_template", "unknown placeholder %s: known are {event_id}, {delivery_id}, {type}, {tenant}, {date}, {year}, {month}, {day}, {hour}", p)
		}
	}
	if !strings.Contains(c.KeyTemplate, "{event_id}") && !strings.Contains(c.KeyTemplate, "{delivery_id}") {
		return sink.Errorf("key_template", "needs {event_id} or {delivery_id}: without it, events would overwrite each other")
	}
	if strings.IndexFunc(c.KeyTemplate, unicode.IsControl) >= 0 {
		return sink.Errorf("key_template", "has a control character")
	}
	if c.StorageClass != "" && !storageClasses[c.StorageClass] {
		return sink.Errorf("storage_class", "%q is not an S3 storage class (STANDARD, STANDARD_IA, INTELLIGENT_TIERING...)", c.StorageClass)
	}
	return c.Auth.Validate(amb)
}

// Target is the bucket.
func (c *Config) Target() string { return "s3 bucket " + c.Bucket + " at " + c.Where() }

// Open makes the S3 client; it sends nothing until the first object.
func (c *Config) Open(ctx context.Context, env sink.Env) (sink.Sender, error) {
	cfg, closeIdle, err := c.Load(ctx, env)
	if err != nil {
		return nil, err
	}
	pathStyle := c.EndpointURL != ""
	if c.PathStyle != nil {
		pathStyle = *c.PathStyle
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = pathStyle })
	return &Sender{cfg: c, client: client, closeIdle: closeIdle, now: time.Now}, nil
}

// Sender writes objects to one bucket.
type Sender struct {
	cfg       *Config
	client    *s3.Client
	closeIdle func()
	now       func() time.Time

	mu     sync.Mutex
	closed bool
}

// keyPart is a value placed in a key: control characters and invalid
// UTF-8 become "_", and so does an empty value, so that a key never has
// an empty segment.
func keyPart(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return '_'
		}
		return r
	}, s)
}

// Key is m's object key at time now.
func (c *Config) Key(m *sink.Message, now time.Time) string {
	now = now.UTC()
	return placeholder.ReplaceAllStringFunc(c.KeyTemplate, func(p string) string {
		switch p {
		case "{event_id}":
			return keyPart(m.EventID)
		case "{delivery_id}":
			return keyPart(m.DeliveryID)
		case "{type}":
			return keyPart(m.Type)
		case "{tenant}":
			return keyPart(m.Tenant)
		case "{date}":
			return now.Format("2006-01-02")
		case "{year}":
			return now.Format("2006")
		case "{month}":
			return now.Format("01")
		case "{day}":
			return now.Format("02")
		case "{hour}":
			return now.Format("15")
		}
		return p
	})
}

// Send writes m's object and waits for S3's answer.
func (s *Sender) Send(ctx context.Context, m *sink.Message) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return sink.ErrClosed
	}
	at := m.Time
	if at.IsZero() {
		at = s.now()
	}
	key := s.cfg.Key(m, at)
	if len(key) > 1024 {
		return fmt.Errorf("%w: the object key is %d bytes long, S3 takes at most 1024: shorten key_template", dispatch.ErrPermanent, len(key))
	}
	meta := map[string]string{}
	set := func(k, v string) {
		if v != "" {
			meta[strings.ToLower(k)] = v
		}
	}
	for k, v := range m.Headers {
		set(k, v)
	}
	set(sink.HeaderDeliveryID, m.DeliveryID)
	set(sink.HeaderEventID, m.EventID)
	set(sink.HeaderEventType, m.Type)
	set(sink.HeaderTenant, m.Tenant)
	set(sink.HeaderKey, m.Key)
	contentType := m.ContentType
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.cfg.Bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(m.Body),
		ContentLength: aws.Int64(int64(len(m.Body))),
		ContentType:   aws.String(contentType),
		Metadata:      meta,
	}
	if s.cfg.StorageClass != "" {
		in.StorageClass = types.StorageClass(s.cfg.StorageClass)
	}
	if _, err := s.client.PutObject(ctx, in); err != nil {
		return awsbase.Classify(fmt.Errorf("writing %s to %s: %w", key, s.cfg.Target(), err), s.cfg.AmbientCredentials, s.cfg.SecretValues()...)
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
