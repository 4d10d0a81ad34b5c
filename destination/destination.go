// Package destination is where events go: the destinations of fanout, their
// validation, their event-type filters, and the registry that keeps them in
// the store and caches them for the hot path.
package destination

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"fanout/destination/match"
	"fanout/destination/transform"
	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// Destination is one URL that events are delivered to.
type Destination struct {
	ID string `json:"id"`
	// Tenant is the tenant the destination belongs to: it gets that
	// tenant's events, and that tenant's tokens see it. Empty in a store
	// written before tenants: the default tenant (see Owner).
	Tenant string `json:"tenant,omitempty"`
	// AllTenants destinations are the operator's: they get the events of
	// every tenant (an audit log, a data lake), and no tenant sees them.
	AllTenants bool `json:"all_tenants,omitempty"`
	// Type is the destination's kind: TypeWebhook (an HTTP endpoint at
	// URL; a document stored without a type is one) or a broker kind of
	// package sink ("nats", "kafka", "sqs"...), whose address and
	// credentials are in Config.
	Type string `json:"type"`
	URL  string `json:"url,omitempty"`
	// Config is a broker destination's config, the JSON object its kind
	// parses (sink.Kind.Parse); nil for a webhook. Its credentials are
	// write-only: Masked shows it masked by its kind.
	Config json.RawMessage `json:"config,omitempty"`
	// Target and Delivered are shown, not stored: where a broker
	// destination's messages go (its address, without secrets) and what
	// a delivery to it means. The registry sets them (see describe).
	Target      string `json:"target,omitempty"`
	Delivered   string `json:"delivered,omitempty"`
	Description string `json:"description,omitempty"`
	// Enabled destinations get events; a disabled one gets no new events
	// and its pending deliveries wait until it is enabled again.
	Enabled bool `json:"enabled"`
	// Filter lists the event types the destination wants, matched against
	// an event's "type" field: "order.paid" exactly, "order.*" by prefix,
	// "*" anything. No filter: every event, with a type or not.
	Filter []string `json:"filter,omitempty"`
	// Match, when set, keeps only the events whose payload (and type,
	// tenant, time) it matches, among those Filter lets through: the
	// filter language of package match.
	Match *match.Filter `json:"match,omitempty"`
	// Transform, when set, is the source of a JavaScript
	// handler(webhook) that changes each delivery before it is signed
	// and sent, or cancels it (package transform). The service compiles
	// it when it is set; deliveries compile it once per process.
	Transform string `json:"transform,omitempty"`
	// Ordering, when set, delivers the events of one key one at a time,
	// in order (see Ordering).
	Ordering *Ordering `json:"ordering,omitempty"`
	// Secret signs deliveries (Standard Webhooks). PreviousSecret, after a
	// rotation, signs too until PreviousSecretExpires.
	Secret                string     `json:"secret,omitempty"` // none on a broker destination
	PreviousSecret        string     `json:"previous_secret,omitempty"`
	PreviousSecretExpires *time.Time `json:"previous_secret_expires_at,omitempty"`
	// MaxConcurrency caps deliveries in flight to this destination, per
	// fanout process (default DefaultConcurrency); within it the limit
	// adapts to how the destination answers, and a slow or failing one
	// soon gets few.
	MaxConcurrency int `json:"max_concurrency"`
	// RateLimit, when set, throttles deliveries: so many per second,
	// minute or hour, with a burst (see Throttle).
	RateLimit Throttle `json:"rate_limit,omitzero"`
	// Headers are added to every delivery.
	Headers map[string]string `json:"headers,omitempty"`
	// Retry replaces the default retry policy for this destination.
	Retry *RetrySettings `json:"retry,omitempty"`
	// Paused destinations keep their deliveries without attempting them.
	// A person pauses one by API; the circuit breaker pauses one until
	// CircuitOpenUntil after its deliveries kept failing.
	Paused           bool       `json:"paused"`
	CircuitOpenUntil *time.Time `json:"circuit_open_until,omitempty"`
	// Reason says why the destination was last paused or disabled by fanout
	// (the breaker, a 410 Gone).
	Reason string `json:"reason,omitempty"`
	// DisabledAt is when it was last disabled, while it is. Missed, once it
	// is enabled again, is the period it was disabled: the events that
	// arrived then were not routed to it, and a replay of that period
	// (POST /v1/destinations/{id}/replay) sends them.
	DisabledAt *time.Time `json:"disabled_at,omitempty"`
	Missed     *Period    `json:"missed,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	// Version is the stored version, for updates that must not overwrite a
	// change made meanwhile.
	Version int64 `json:"version"`
	// maskedConfig is Config as Masked shows it, set by the registry.
	maskedConfig json.RawMessage
}

// TypeWebhook is the type of an HTTP destination, the default.
const TypeWebhook = "webhook"

// IsBroker reports whether the destination is a broker kind's, not a
// webhook.
func (d *Destination) IsBroker() bool { return d.Type != "" && d.Type != TypeWebhook }

// Address is where the destination's deliveries go, for lists: a
// webhook's URL, a broker destination's Target (without secrets).
func (d *Destination) Address() string {
	if d.IsBroker() {
		return d.Target
	}
	return d.URL
}

// RetrySettings are a destination's own retry schedule: they amend the
// default policy (a dispatch.Backoff, exponential backoff with full jitter)
// field by field; Policy makes the dispatch.RetryPolicy of them.
type RetrySettings struct {
	Initial     Duration `json:"initial,omitempty"`
	Max         Duration `json:"max,omitempty"`
	MaxAge      Duration `json:"max_age,omitempty"`
	MaxAttempts int      `json:"max_attempts,omitempty"`
}

// Duration is a time.Duration written as "90s" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "90s", "1h30m" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err := json.Unmarshal(b, &secs); err != nil {
			return errors.New(`a duration is a string like "90s" or "2h", or a number of seconds`)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}

// Period is a time range, since inclusive, until exclusive.
type Period struct {
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
}

// noteEnabled keeps the record of the period a destination was disabled,
// when a change moves it from wasEnabled to its Enabled at now.
func (d *Destination) noteEnabled(wasEnabled bool, now time.Time) {
	switch {
	case wasEnabled && !d.Enabled:
		d.DisabledAt = &now
	case !wasEnabled && d.Enabled:
		since := d.UpdatedAt // disabled before this was recorded: its last change is the best guess
		if d.DisabledAt != nil {
			since = *d.DisabledAt
		}
		d.Missed, d.DisabledAt = &Period{Since: since, Until: now}, nil
	}
}

// DefaultTenant is the tenant of events and destinations that name none:
// every event and destination of a fanout without tenants.
const DefaultTenant = "default"

// Owner is the tenant whose destination this is: "" for an operator's
// destination of every tenant.
func (d *Destination) Owner() string {
	switch {
	case d.AllTenants:
		return ""
	case d.Tenant == "":
		return DefaultTenant
	}
	return d.Tenant
}

// Limits of destination fields.
const (
	MaxURLLength = 2048
	// DefaultConcurrency is as many deliveries as the delivery client
	// keeps connections to one host (webhook.Config.MaxConnsPerHost's
	// default): more would only wait for one of them.
	DefaultConcurrency = 256
	MaxConcurrency     = 1024
	maxFilters         = 100
	maxHeaders         = 50
)

// Error is a problem with a destination that its author must fix: the HTTP
// API answers it with 400 and its message.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

func invalid(format string, args ...any) error { return &Error{msg: fmt.Sprintf(format, args...)} }

// reservedHeaders are set by fanout on every delivery.
var reservedHeaders = map[string]bool{
	"content-type": true, "content-length": true, "host": true, "user-agent": true, "transfer-encoding": true,
	"connection": true, "webhook-id": true, "webhook-timestamp": true, "webhook-signature": true,
}

// ValidateFilter checks the type filter.
func (d *Destination) ValidateFilter() error {
	if len(d.Filter) > maxFilters {
		return invalid("filter has more than %d event types", maxFilters)
	}
	for _, f := range d.Filter {
		if err := validatePattern(f); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks a destination and fills defaults. guard, when set, refuses
// URLs whose host is an address it blocks (a name is checked at dial time).
// It knows no broker kind: the registry validates with its kinds
// (ValidateKinds).
func (d *Destination) Validate(guard *webhook.Guard) error {
	_, err := d.ValidateKinds(guard, nil)
	return err
}

// ValidateKinds checks a destination of any type, a broker kind's config by
// its kind in kinds (nil: webhooks only), fills defaults, and returns the
// parsed config of a broker destination (nil for a webhook). A broker's
// addresses are checked by the guard when they are dialed: clusters hand
// out further addresses at run time.
func (d *Destination) ValidateKinds(guard *webhook.Guard, kinds *sink.Registry) (sink.Config, error) {
	if d.Type == "" {
		d.Type = TypeWebhook
	}
	var cfg sink.Config
	if d.IsBroker() {
		var err error
		if cfg, err = d.validateBroker(kinds); err != nil {
			return nil, err
		}
	} else {
		if len(d.Config) > 0 {
			return nil, invalid("config is for broker destinations (a type such as nats or sqs); a webhook has url, headers and secret")
		}
		if err := ValidateURL(d.URL, guard); err != nil {
			return nil, err
		}
	}
	return cfg, d.validateRest()
}

// validateBroker checks what differs for a broker destination: no url, no
// signing secret, no transformation, a config its kind accepts.
func (d *Destination) validateBroker(kinds *sink.Registry) (sink.Config, error) {
	if kinds == nil {
		return nil, invalid("type %q: this fanout delivers to webhooks only", d.Type)
	}
	if _, err := kinds.Kind(d.Type); err != nil {
		return nil, invalid("%v", err)
	}
	switch {
	case d.URL != "":
		return nil, invalid("url is for webhooks: a %s destination's address is in its config", d.Type)
	case len(d.Config) == 0 || string(d.Config) == "null":
		return nil, invalid("config is required for a %s destination", d.Type)
	case d.Transform != "":
		return nil, invalid("transform applies to webhooks only: a %s destination gets the event as it was accepted", d.Type)
	case d.Secret != "" || d.PreviousSecret != "":
		return nil, invalid("secret signs webhook deliveries: a %s destination has none", d.Type)
	}
	for k := range d.Headers {
		if strings.HasPrefix(strings.ToLower(k), "fanout-") {
			return nil, invalid("header %s: fanout-* headers are set by fanout and cannot be overridden", k)
		}
	}
	cfg, err := kinds.Parse(d.Type, d.Config)
	if err != nil {
		return nil, invalid("%v", err)
	}
	return cfg, nil
}

// validateRest checks the fields every type has.
func (d *Destination) validateRest() error {
	if len(d.Description) > 1000 {
		return invalid("description is longer than 1000 characters")
	}
	if err := d.ValidateFilter(); err != nil {
		return err
	}
	if len(d.Transform) > transform.MaxSourceBytes {
		return invalid("transform is longer than %d bytes", transform.MaxSourceBytes)
	}
	if d.Ordering != nil {
		if err := d.Ordering.Validate(); err != nil {
			return err
		}
	}
	if d.Secret == "" && !d.IsBroker() {
		d.Secret = webhook.GenerateSecret()
	}
	if _, err := webhook.ParseSecret(d.Secret); err != nil && !d.IsBroker() {
		return invalid("secret: %v", err)
	}
	if d.PreviousSecret != "" {
		if _, err := webhook.ParseSecret(d.PreviousSecret); err != nil {
			return invalid("previous_secret: %v", err)
		}
	}
	if d.MaxConcurrency == 0 {
		d.MaxConcurrency = DefaultConcurrency
	}
	if d.MaxConcurrency < 1 || d.MaxConcurrency > MaxConcurrency {
		return invalid("max_concurrency must be between 1 and %d", MaxConcurrency)
	}
	if err := d.RateLimit.validate(); err != nil {
		return err
	}
	if len(d.Headers) > maxHeaders {
		return invalid("more than %d headers", maxHeaders)
	}
	for k, v := range d.Headers {
		// The checks net/http makes before it sends a header: one it
		// refuses would fail every delivery.
		if !httpguts.ValidHeaderFieldName(k) {
			return invalid("header name %q is not a valid HTTP field name", k)
		}
		if reservedHeaders[strings.ToLower(k)] {
			return invalid("header %s is set by fanout and cannot be overridden", k)
		}
		if !httpguts.ValidHeaderFieldValue(v) || len(v) > 4096 {
			return invalid("header %s has a value with a control character or over 4096 bytes", k)
		}
	}
	if r := d.Retry; r != nil {
		if r.Initial < 0 || r.Max < 0 || r.MaxAge < 0 || r.MaxAttempts < 0 {
			return invalid("retry values cannot be negative")
		}
		if !(&dispatch.Backoff{MaxAge: time.Duration(r.MaxAge), MaxAttempts: r.MaxAttempts}).Bounded() {
			return invalid("retry needs max_age or max_attempts, or deliveries would be retried forever")
		}
	}
	return nil
}

// ValidateURL accepts absolute http and https URLs without credentials, of
// sane length, whose host is not an address the guard refuses.
func ValidateURL(raw string, guard *webhook.Guard) error {
	if raw == "" {
		return invalid("url is required")
	}
	if len(raw) > MaxURLLength {
		return invalid("url is longer than %d characters", MaxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return invalid("url %q is not a URL", webhook.RedactURL(raw))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid("url %q must be http or https", webhook.Redact(u))
	case u.Host == "" || u.Hostname() == "":
		return invalid("url %q has no host", webhook.Redact(u))
	case u.User != nil:
		return invalid("url %q carries credentials; send them as a header instead", webhook.Redact(u))
	case u.Fragment != "":
		return invalid("url %q has a fragment, which is never sent", webhook.Redact(u))
	}
	if guard != nil {
		if addr, err := netip.ParseAddr(u.Hostname()); err == nil {
			if err := guard.Check(addr); err != nil {
				return invalid("url %q: %v", webhook.Redact(u), err)
			}
		}
	}
	return nil
}

func validatePattern(p string) error {
	switch {
	case p == "*":
		return nil
	case p == "" || len(p) > 200:
		return invalid("filter entries are event types of 1 to 200 characters")
	case strings.Contains(strings.TrimSuffix(p, "*"), "*"):
		return invalid("filter %q: only a trailing * is allowed (order.*)", p)
	case strings.ContainsAny(p, " \t\r\n"):
		return invalid("filter %q has white space", p)
	}
	return nil
}

// Matches reports whether the destination wants an event of this type ("" if
// the event has none).
func (d *Destination) Matches(eventType string) bool {
	if len(d.Filter) == 0 {
		return true
	}
	for _, p := range d.Filter {
		switch {
		case p == "*":
			return true
		case strings.HasSuffix(p, "*"):
			if eventType != "" && strings.HasPrefix(eventType, p[:len(p)-1]) {
				return true
			}
		case p == eventType:
			return true
		}
	}
	return false
}

// PausedAt reports whether deliveries are held back at now, and why.
func (d *Destination) PausedAt(now time.Time) bool {
	return !d.Enabled || d.Paused || (d.CircuitOpenUntil != nil && now.Before(*d.CircuitOpenUntil))
}

// Keys returns the signing keys in force at now: the secret, and the
// previous one during its grace period.
func (d *Destination) Keys(now time.Time) [][]byte {
	var keys [][]byte
	if k, err := webhook.ParseSecret(d.Secret); err == nil {
		keys = append(keys, k)
	}
	if d.PreviousSecret != "" && d.PreviousSecretExpires != nil && now.Before(*d.PreviousSecretExpires) {
		if k, err := webhook.ParseSecret(d.PreviousSecret); err == nil {
			keys = append(keys, k)
		}
	}
	return keys
}

// Policy returns the destination's retry policy, or nil for the default.
func (d *Destination) Policy(def *dispatch.Backoff) dispatch.RetryPolicy {
	if d.Retry == nil {
		return nil
	}
	p := *def
	if d.Retry.Initial > 0 {
		p.Initial = time.Duration(d.Retry.Initial)
	}
	if d.Retry.Max > 0 {
		p.Max = time.Duration(d.Retry.Max)
	}
	p.MaxAge = time.Duration(d.Retry.MaxAge)
	p.MaxAttempts = d.Retry.MaxAttempts
	return &p
}

// Header returns the destination's own headers.
func (d *Destination) Header() http.Header {
	if len(d.Headers) == 0 {
		return nil
	}
	h := make(http.Header, len(d.Headers))
	for k, v := range d.Headers {
		h.Set(k, v)
	}
	return h
}

// NewID returns a new destination id.
func NewID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "dst_" + hex.EncodeToString(b[:])
}

// ConfiguredID is the id of a destination created from --destination: the
// same URL gives the same id, so that a restart finds it instead of adding
// it again.
func ConfiguredID(rawURL string) string {
	sum := sha256.Sum256([]byte(rawURL))
	return "dst_cfg_" + hex.EncodeToString(sum[:8])
}
