package service

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strings"

	"fanout/destination"
	"fanout/destination/match"
	"fanout/destination/transform"
	"fanout/sink"
	"fanout/webhook"
)

// DestinationInput is a change to a destination, as POST and PATCH
// /v1/destinations send it: a field that is absent is left as it is (or
// defaulted, on creation).
type DestinationInput struct {
	// Type is the destination's kind, at creation only: "webhook" (the
	// default) or a broker kind; Config is a broker's config.
	Type   *string          `json:"type"`
	Config *json.RawMessage `json:"config"`

	URL         *string   `json:"url"`
	Description *string   `json:"description"`
	Enabled     *bool     `json:"enabled"`
	Filter      *[]string `json:"filter"`
	// Match is a payload filter; {} removes it.
	Match *json.RawMessage `json:"match"`
	// Ordering delivers the events of one key in order; {} removes it.
	Ordering       *destination.Ordering      `json:"ordering"`
	Secret         *string                    `json:"secret"`
	MaxConcurrency *int                       `json:"max_concurrency"`
	RateLimit      *destination.Throttle      `json:"rate_limit"`
	Headers        *map[string]string         `json:"headers"`
	Retry          *destination.RetrySettings `json:"retry"`
	Paused         *bool                      `json:"paused"`
	// AllTenants, at creation only: the operator's destination of every
	// tenant's events.
	AllTenants *bool `json:"all_tenants"`
	// Transform is a transformation's source; "" removes it. Setting or
	// changing it needs RightTransform.
	Transform *string `json:"transform"`
	// compiled is Match, compiled by check.
	compiled *match.Filter
}

// check refuses what apply would read wrong: a zero max_concurrency is
// not "the default" (leave it out for that), and the destination's own
// validation would take it for absent.
func (in *DestinationInput) check() error {
	if in.Match != nil {
		f, err := match.Compile(*in.Match)
		if err != nil {
			return Invalid("match: %v", err)
		}
		in.compiled = f
	}
	if in.Transform != nil && *in.Transform != "" {
		// Its length only: parsing and running it (checkTransform, in a
		// worker) wait for the caller's right to set it.
		if err := transform.CheckSource(*in.Transform); err != nil {
			return Invalid("transform: %v", err)
		}
	}
	if in.MaxConcurrency != nil && *in.MaxConcurrency < 1 {
		return Invalid("max_concurrency must be between 1 and %d; leave it out for the default (%d)",
			destination.MaxConcurrency, destination.DefaultConcurrency)
	}
	return nil
}

func (in *DestinationInput) apply(d *destination.Destination) {
	set(&d.URL, in.URL)
	set(&d.Description, in.Description)
	if in.Enabled != nil && *in.Enabled != d.Enabled {
		// Enabled again: why it was disabled no longer holds. Disabled
		// by a person: the reason fanout had (a breaker's) is not theirs.
		d.Reason = ""
	}
	set(&d.Enabled, in.Enabled)
	set(&d.Filter, in.Filter)
	set(&d.Transform, in.Transform)
	if in.compiled != nil {
		d.Match = in.compiled
		if d.Match.String() == "{}" {
			d.Match = nil // {}: every event, as without
		}
	}
	if in.Secret != nil {
		// A form that showed the masked secret posts back its mask:
		// that keeps the secret.
		d.Secret = destination.UnmaskSecret(*in.Secret, d.Secret)
	}
	if in.Ordering != nil {
		d.Ordering = nil // {}: none
		if *in.Ordering != (destination.Ordering{}) {
			o := *in.Ordering
			d.Ordering = &o
		}
	}
	set(&d.MaxConcurrency, in.MaxConcurrency)
	set(&d.RateLimit, in.RateLimit)
	if in.Headers != nil {
		d.Headers = destination.UnmaskHeaders(*in.Headers, d.Headers)
	}
	if in.Retry != nil {
		d.Retry = in.Retry
		if *in.Retry == (destination.RetrySettings{}) {
			d.Retry = nil // {} goes back to the default policy
		}
	}
	set(&d.Paused, in.Paused)
	if in.Paused != nil && !d.Paused {
		d.CircuitOpenUntil, d.Reason = nil, ""
	}
}

// set sets *dst to *v when v is given.
func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// destinationError says a registry error in the service's words.
func destinationError(id string, err error) error {
	var de *destination.Error
	switch {
	case errors.As(err, &de):
		return Invalid("%s", de.Error())
	case errors.Is(err, destination.ErrNotFound):
		return NotFound("no destination with id %q", id)
	case errors.Is(err, destination.ErrExists):
		return Conflict("a destination with this id exists")
	}
	return err
}

// Secrets are write-only: a destination's signing secrets and header
// values are answered in full by CreateDestination and RotateSecret (the
// calls that set them) and by DestinationSecrets (their own route); every
// other answer holds the destination Masked.

// destinationInScope reports whether destination id is scope's: every
// destination, deleted ones too, is the operator's; a tenant's are those it
// owns now.
func (s *Service) destinationInScope(scope Scope, id string) bool {
	if scope.All() {
		return true
	}
	d, ok := s.Dests.Get(id)
	return ok && scope.Allows(d.Owner())
}

// Destinations returns the destinations in scope, ordered by id, masked.
func (s *Service) Destinations(scope Scope) []*destination.Destination {
	list := []*destination.Destination{}
	for _, d := range s.Dests.List() {
		if scope.Allows(d.Owner()) {
			list = append(list, d.Masked())
		}
	}
	return list
}

// destination returns one destination in scope; one of another tenant is
// not found, as one that does not exist.
func (s *Service) destination(scope Scope, id string) (*destination.Destination, error) {
	d, ok := s.Dests.Get(id)
	if !ok || !scope.Allows(d.Owner()) {
		return nil, destinationError(id, destination.ErrNotFound)
	}
	return d, nil
}

// Destination returns one destination in scope, masked.
func (s *Service) Destination(scope Scope, id string) (*destination.Destination, error) {
	d, err := s.destination(scope, id)
	if err != nil {
		return nil, err
	}
	return d.Masked(), nil
}

// DestinationSecrets returns a destination's secrets and header values in
// full.
func (s *Service) DestinationSecrets(scope Scope, id string) (*destination.Secrets, error) {
	d, err := s.destination(scope, id)
	if err != nil {
		return nil, err
	}
	return d.Secrets(), nil
}

// CreateDestination creates a destination of tenant, enabled unless in
// says otherwise; one of every tenant (all_tenants) needs scope to be all.
// The answer shows its secret and headers in full.
func (s *Service) CreateDestination(ctx context.Context, scope Scope, tenant string, in *DestinationInput) (*destination.Destination, error) {
	typ := destination.TypeWebhook
	if in.Type != nil && *in.Type != "" {
		typ = *in.Type
	}
	if typ == destination.TypeWebhook && in.URL == nil {
		return nil, Invalid("url is required")
	}
	if err := in.check(); err != nil {
		return nil, err
	}
	if err := s.checkKind(scope, typ); err != nil {
		return nil, err
	}
	if in.Transform != nil && *in.Transform != "" && !scope.MayTransform() {
		return nil, noTransformRight()
	}
	d := &destination.Destination{Enabled: true, Tenant: tenant}
	if in.AllTenants != nil && *in.AllTenants {
		if !scope.All() {
			return nil, Forbidden("all_tenants destinations get every tenant's events: only an operator creates them")
		}
		d.Tenant, d.AllTenants = "", true
	} else {
		if !scope.Allows(tenant) {
			return nil, NotFound("no tenant with id %q", tenant)
		}
		if _, err := s.tenants.get(ctx, tenant); err != nil {
			return nil, err
		}
		if scope.Limited() {
			n := 0
			for _, o := range s.Dests.List() {
				if o.Owner() == tenant {
					n++
				}
			}
			if n >= MaxTenantDestinations {
				return nil, Conflict("tenant %s has %d destinations, the most a tenant may create (an operator may add more)", tenant, n)
			}
		}
	}
	// Last of the checks: a worker runs the program's top level, which is
	// not spent on a request refused anyway.
	if in.Transform != nil && *in.Transform != "" {
		if err := s.checkTransform(ctx, *in.Transform); err != nil {
			return nil, err
		}
	}
	in.apply(d)
	d.Type = typ
	if err := s.setConfig(scope, d, in, nil); err != nil {
		return nil, err
	}
	if err := s.Dests.Create(ctx, d); err != nil {
		return nil, destinationError(d.ID, err)
	}
	return d, nil
}

// UpdateDestination applies a change to a destination in scope and returns
// it masked. A secret or header value sent as the mask of the stored one
// keeps the stored one.
func (s *Service) UpdateDestination(ctx context.Context, scope Scope, id string, in *DestinationInput) (*destination.Destination, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	if in.AllTenants != nil {
		return nil, Invalid("all_tenants is set when a destination is created, and kept")
	}
	// A caller without the right may send back the program it read (a
	// form does), which is no change and is not run; the update refuses
	// any other.
	if in.Transform != nil && *in.Transform != "" && scope.MayTransform() {
		if _, err := s.destination(scope, id); err != nil {
			return nil, err // not the caller's: no program of its runs
		}
		if err := s.checkTransform(ctx, *in.Transform); err != nil {
			return nil, err
		}
	}
	d, err := s.Dests.Update(ctx, id, func(d *destination.Destination) error {
		if !scope.Allows(d.Owner()) {
			return destination.ErrNotFound
		}
		if in.Transform != nil && *in.Transform != d.Transform && !scope.MayTransform() {
			return errNoTransformRight // the same program sent back by a form is no change
		}
		if in.Type != nil && cmp.Or(*in.Type, destination.TypeWebhook) != d.Type {
			return Invalid("type is set when a destination is created, and kept: create a %s destination instead", *in.Type)
		}
		oldAddr, oldHeaders, oldConfig := d.URL, d.Headers, d.Config
		if d.IsBroker() {
			oldAddr = "broker://" + d.Target
		}
		in.apply(d)
		if err := s.setConfig(scope, d, in, oldConfig); err != nil {
			return err
		}
		newAddr := d.URL
		if d.IsBroker() {
			newAddr = "broker://" + d.Target // the header values go with each message to where it connects
		}
		if !scope.SeesSecrets() && keepsHeadersForNewHost(oldAddr, newAddr, oldHeaders, d.Headers) {
			return errHeadersToNewHost
		}
		return nil
	})
	if errors.Is(err, errNoTransformRight) {
		return nil, noTransformRight()
	}
	if errors.Is(err, errHeadersToNewHost) {
		return nil, Forbidden("a new url (another host) would receive this destination's header values, which this token may not see: " +
			"send headers again along with the url (their values, or {} for none), or use a token with view_secret")
	}
	if err != nil {
		return nil, destinationError(id, err)
	}
	return d.Masked(), nil
}

var errHeadersToNewHost = errors.New("header values to a new host")

// checkKind refuses a destination type scope may not create: an unknown
// one (400), a broker kind the token was not granted (403).
func (s *Service) checkKind(scope Scope, typ string) error {
	if typ == destination.TypeWebhook {
		return nil
	}
	kinds := s.Dests.Kinds()
	if kinds == nil {
		return Invalid("type %q: this fanout delivers to webhooks only", typ)
	}
	if _, err := kinds.Kind(typ); err != nil {
		return Invalid("%v", err)
	}
	if !scope.MayKind(typ) {
		return Forbidden("a %s destination connects to a broker from fanout's network: an operator's right, "+
			"which this token was not granted (an operator mints one with \"kinds\": [%q])", typ, typ)
	}
	return nil
}

// setConfig sets the config a change sends to broker destination d, whose
// stored config was stored (nil on creation): a credential sent back
// masked is the stored one, for the same address only (the kind's
// Unmask). A new config needs the kind's right, and one that asks for
// fanout's own cloud credentials (ambient) an operator: a tenant's
// destination never acts with fanout's identity. The registry then
// validates it.
func (s *Service) setConfig(scope Scope, d *destination.Destination, in *DestinationInput, stored json.RawMessage) error {
	if in.Config == nil {
		return nil
	}
	if !d.IsBroker() || s.Dests.Kinds() == nil {
		d.Config = *in.Config // a webhook with a config: Validate says why not
		return nil
	}
	cfg, err := s.Dests.Kinds().Unmask(d.Type, *in.Config, stored)
	if err != nil {
		return Invalid("%v", err)
	}
	d.Config = cfg
	if stored != nil && bytes.Equal(cfg, stored) {
		return nil // sent back as it was: no change
	}
	if !scope.MayKind(d.Type) {
		return Forbidden("changing a %s destination's config is an operator's right, which this token was not granted "+
			"(an operator mints one with \"kinds\": [%q])", d.Type, d.Type)
	}
	parsed, err := s.Dests.Kinds().Parse(d.Type, cfg)
	if err != nil {
		return Invalid("%v", err)
	}
	if flag := sink.AmbientFlag(parsed); flag != "" && scope.Limited() {
		return Forbidden("config.ambient_credentials: fanout's own cloud credentials (%s) serve destinations an operator's token creates, "+
			"never a token's: give the destination its own credentials", flag)
	}
	d.Target = parsed.Target()
	return nil
}

// MaxTenantDestinations bounds the destinations a tenant's token may
// create for it: routing asks each of a tenant's destinations about every
// event of that tenant (and its payload filter), so that the number is
// the tenant's cost to everyone's routing.
const MaxTenantDestinations = 500

// keepsHeadersForNewHost reports whether a change sends stored header
// values (an Authorization, an API key) to another host than they were
// set for: a token that may not read them could otherwise point the
// destination at its own server and receive them with every delivery.
func keepsHeadersForNewHost(oldURL, newURL string, oldHeaders, newHeaders map[string]string) bool {
	if len(oldHeaders) == 0 || oldURL == newURL || sameOrigin(oldURL, newURL) {
		return false
	}
	for k, v := range newHeaders {
		for ok, ov := range oldHeaders {
			if strings.EqualFold(k, ok) && v == ov && v != "" {
				return true
			}
		}
	}
	return false
}

func sameOrigin(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host)
}

// DeleteDestination deletes a destination in scope; its pending deliveries
// fail for good when they next run.
func (s *Service) DeleteDestination(ctx context.Context, scope Scope, id string) error {
	if _, err := s.destination(scope, id); err != nil {
		return err
	}
	return destinationError(id, s.Dests.Delete(ctx, id))
}

// ResumeDestination lifts a pause, by a person or by the breaker: the same
// as PATCH {"paused": false}, masked as its answer is.
func (s *Service) ResumeDestination(ctx context.Context, scope Scope, id string) (*destination.Destination, error) {
	unpause := false
	return s.UpdateDestination(ctx, scope, id, &DestinationInput{Paused: &unpause})
}

// RotateSecret gives a destination a new secret; the old one keeps signing
// for the grace period. The answer shows the new secret and the previous
// one in full, the one answer after creation that does; the header values,
// which a rotation does not set, stay masked.
func (s *Service) RotateSecret(ctx context.Context, scope Scope, id string) (*destination.Destination, error) {
	d, err := s.Dests.Update(ctx, id, func(d *destination.Destination) error {
		if !scope.Allows(d.Owner()) {
			return destination.ErrNotFound
		}
		d.Secret = webhook.GenerateSecret()
		return nil
	})
	if err != nil {
		return nil, destinationError(id, err)
	}
	m := d.Masked()
	m.Secret = d.Secret
	if scope.SeesSecrets() {
		// The secret rotated out is the one receivers trust until the
		// grace ends: a token that may not read secrets does not get it.
		m.PreviousSecret = d.PreviousSecret
	}
	return m, nil
}
