package service

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"fanout/destination"
	"fanout/dispatch"
)

// The tenant portal: a page (served by the HTTP layer at
// /portal/{tenant}/{page key}/)
// that an operator hands to a customer, with a short-lived token of that
// customer's tenant in the fragment of its URL. The page is the console
// restricted to one tenant: everything it does goes through the same API
// with that token, so that the tenant's scope, not the page, is what walls
// the other tenants off. What the service adds for it: minting the link
// (CreatePortal), what the page draws itself with (PortalInfo), the event
// types a tenant's endpoints may subscribe to (EventTypes, from its own
// history only), and the test-send of an example event to one destination
// (TestSend).

// PortalConfig is the operator's settings of the portals.
type PortalConfig struct {
	// PublicURL is --public-url: the base of portal links; empty, the
	// address the operator's request reached fanout by.
	PublicURL string
	// Branding is what every portal shows of the operator.
	Branding Branding
}

// Branding is the operator's name, logo and accent colour, shown by the
// portal (--portal-name, --portal-logo-url, --portal-accent).
type Branding struct {
	Name    string `json:"name"`
	LogoURL string `json:"logo_url,omitempty"`
	Accent  string `json:"accent,omitempty"`
}

var accentColour = regexp.MustCompile(`^#[0-9a-fA-F]{6}$`)

// CheckBranding says what is wrong with the operator's branding, or nil.
func CheckBranding(b Branding) error {
	var errs []error
	if len(b.Name) > 100 {
		errs = append(errs, errors.New("--portal-name is up to 100 characters"))
	}
	if b.LogoURL != "" {
		u, err := url.Parse(b.LogoURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || len(b.LogoURL) > 2048 {
			errs = append(errs, fmt.Errorf("--portal-logo-url %q must be an https URL (the portal's page loads nothing else)", b.LogoURL))
		}
	}
	if b.Accent != "" && !accentColour.MatchString(b.Accent) {
		errs = append(errs, fmt.Errorf("--portal-accent %q must be a colour written #rrggbb", b.Accent))
	}
	return errors.Join(errs...)
}

// Portal access levels: what a portal's token may do.
const (
	PortalRead   = "read"
	PortalManage = "manage"
)

// Bounds of a portal link's life.
const (
	portalDefaultLife = time.Hour
	portalMaxLife     = 24 * time.Hour
)

// PortalInput is the body of POST /v1/tenants/{tenant}/portal.
type PortalInput struct {
	// Access is "read" (see only) or "manage" (the default: endpoints,
	// test-sends, rotations, re-drive and replay too).
	Access string `json:"access"`
	// ExpiresIn is the link's life, "1h" by default, at most 24h.
	ExpiresIn string `json:"expires_in"`
	// Transform, on a "manage" portal, lets the tenant edit its
	// destinations' transformations (RightTransform); without it the
	// portal shows them read-only.
	Transform bool `json:"transform"`
	// Kinds, on a "manage" portal, lets the tenant create broker
	// destinations of these kinds (see TokenInput.Kinds).
	Kinds []string `json:"kinds"`
}

// PortalLink is a portal's URL, shown once: the token is in its fragment.
type PortalLink struct {
	URL       string    `json:"url"`
	TokenID   string    `json:"token_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CreatePortal mints a token of tenant for a portal and returns the link to
// hand to the tenant's customer: <base>/portal/<tenant>/<page key>/#token=<token>,
// base being --public-url, else fallbackBase (where the operator reached
// fanout). The token travels in the fragment, which browsers send to no
// server and put in no Referer; the page key (see pageKey) lets the page
// alone be framed by the tenant's portal_frame_ancestors. Its rights are read, or read and manage for
// a "manage" portal; never view_secret: a portal sees a secret once, in the
// answer of a creation or a rotation. It is an ordinary scoped token:
// listed by GET /v1/tokens, revoked by DELETE /v1/tokens/{id}, and gone
// with its tenant.
func (s *Service) CreatePortal(ctx context.Context, tenant string, in *PortalInput, fallbackBase string) (*PortalLink, error) {
	rights := []Right{RightRead, RightManage}
	switch in.Access {
	case "", PortalManage:
	case PortalRead:
		rights = []Right{RightRead}
	default:
		return nil, Invalid("access must be %q or %q, not %q", PortalRead, PortalManage, in.Access)
	}
	life := portalDefaultLife
	if in.ExpiresIn != "" {
		d, err := time.ParseDuration(in.ExpiresIn)
		if err != nil || d <= 0 || d > portalMaxLife {
			return nil, Invalid("expires_in must be a duration up to 24h, like \"1h\", not %q", in.ExpiresIn)
		}
		life = d
	}
	if in.Transform {
		if len(rights) == 1 {
			return nil, Invalid("transform is for a manage portal: a read one changes nothing")
		}
		rights = append(rights, RightTransform)
	}
	if len(in.Kinds) > 0 && !slices.Contains(rights, RightManage) {
		return nil, Invalid("kinds is for a manage portal: a read one creates nothing")
	}
	if err := ValidTenantID(tenant); err != nil {
		return nil, NotFound("no tenant with id %q", tenant)
	}
	base := s.portal.PublicURL
	if base == "" {
		base = fallbackBase
	}
	access := PortalManage
	if !slices.Contains(rights, RightManage) {
		access = PortalRead
	}
	tok, err := s.MintToken(ctx, &TokenInput{Name: "portal (" + access + ")", Rights: rights, Tenant: tenant,
		Kinds: in.Kinds, ExpiresIn: life.String()})
	if err != nil {
		return nil, err
	}
	id, secret, ok := parseToken(tok.Token)
	if !ok {
		return nil, fmt.Errorf("portal: minted token %s is not shaped as a token", tok.ID)
	}
	link := strings.TrimSuffix(base, "/") + "/portal/" + url.PathEscape(tenant) + "/" + pageKey(id, hashSecret(secret)) +
		"/#token=" + url.QueryEscape(tok.Token)
	return &PortalLink{URL: link, TokenID: tok.ID, ExpiresAt: *tok.ExpiresAt}, nil
}

// PortalInfo is what the portal's page draws itself with: GET /v1/portal.
type PortalInfo struct {
	Tenant struct {
		ID   string `json:"id"`
		Name string `json:"name,omitempty"`
	} `json:"tenant"`
	Branding  Branding   `json:"branding"`
	Rights    []Right    `json:"rights"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Kinds are the broker kinds the portal may create.
	Kinds []string `json:"kinds,omitempty"`
}

// PortalInfo answers the page of a token of one tenant; an operator's token
// or one of every tenant has no portal (403).
func (s *Service) PortalInfo(ctx context.Context, p *Principal) (*PortalInfo, error) {
	if p.Operator || p.AllTenants || p.Tenant == "" {
		return nil, Forbidden("a portal is one tenant's: open it with the link of POST /v1/tenants/{tenant}/portal")
	}
	t, err := s.Tenant(ctx, p.Scope(), p.Tenant)
	if err != nil {
		return nil, err
	}
	var out PortalInfo
	out.Tenant.ID, out.Tenant.Name = t.ID, t.Name
	out.Branding = s.portal.Branding
	out.Rights, out.Kinds = p.Rights, p.Kinds
	if tok, err := s.TokenByID(ctx, p.Token); err == nil {
		out.ExpiresAt = tok.ExpiresAt
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	return &out, nil
}

// The page key. A portal's frame-ancestors tell that its tenant exists and
// which origins embed it, so the page answers them only to the holder of a
// live link of that tenant; to anyone else, whatever tenant id the address
// names, the same page with frame-ancestors 'none'. The token cannot say
// it: it travels in the fragment, which no browser sends, and a framed
// page is loaded without cookies. So the link's path carries a page key,
// /portal/<tenant>/pk_<token id>_<mac>/, the mac derived (one-way) from the
// token's stored hash: it names the token and shows that whoever made the
// link had the token or the store (see pageKey), grants nothing in the
// API, and can be in an access log. The
// page keeps its path when it clears the fragment, so a reload in a frame
// is framed again, until the token expires or is revoked.

// pageKeyPrefix starts a page key: a path segment so shaped is a key, not
// one of the page's files (PortalPageKeyPrefix for the HTTP layer).
const pageKeyPrefix = "pk_"

// PortalPageKeyPrefix starts the path segment of a portal link that is its
// page key.
const PortalPageKeyPrefix = pageKeyPrefix

// pageKey is the page key of the token id whose secret hashes to hash. It
// is derived from stored data, not from a secret of the server: whoever
// reads the store can compute it, and learns nothing the store does not
// already show (tenants, their frame ancestors); whoever does not cannot,
// since the hash is of 32 random bytes. It grants nothing in the API.
func pageKey(id, hash string) string {
	sum := sha256.Sum256([]byte("fanout portal page key\x00" + hash))
	return pageKeyPrefix + strings.TrimPrefix(id, "tok_") + "_" + base64.RawURLEncoding.EncodeToString(sum[:16])
}

// parsePageKey returns the token id a page key names; ok is false for
// anything not shaped as one (no store is read for it).
func parsePageKey(key string) (id string, ok bool) {
	rest, ok := strings.CutPrefix(key, pageKeyPrefix)
	if !ok || len(rest) != 16+1+22 || rest[16] != '_' {
		return "", false
	}
	if _, err := hex.DecodeString(rest[:16]); err != nil {
		return "", false
	}
	if _, err := base64.RawURLEncoding.DecodeString(rest[17:]); err != nil {
		return "", false
	}
	return "tok_" + rest[:16], true
}

// PortalFrameAncestors are the origins that may frame the portal page of
// tenant opened with the page key key: the tenant's portal_frame_ancestors
// if key is that of a live token of that tenant (not expired, not
// revoked), none otherwise, nor when the store fails (the page is served
// all the same, and alike: it holds no data, and any other answer would
// tell who is a tenant). Without a well-shaped key, nothing is read: the
// time of the answer does not depend on the tenant either.
func (s *Service) PortalFrameAncestors(ctx context.Context, tenant, key string) []string {
	id, ok := parsePageKey(key)
	if !ok || ValidTenantID(tenant) != nil {
		return nil
	}
	doc, err := s.store.DocGet(ctx, TokenDocKind, id)
	if err != nil {
		return nil
	}
	tok, err := decodeToken(doc)
	if err != nil || tok.Hash == "" {
		return nil
	}
	// Compared in constant time: timing tells nothing of the mac.
	if subtle.ConstantTimeCompare([]byte(pageKey(tok.ID, tok.Hash)), []byte(key)) != 1 {
		return nil
	}
	if tok.AllTenants || tok.Tenant != tenant || (tok.ExpiresAt != nil && !s.now().Before(*tok.ExpiresAt)) {
		return nil
	}
	t, err := s.tenants.get(ctx, tenant)
	if err != nil {
		return nil
	}
	return t.PortalFrameAncestors
}

// maxFrameAncestors bounds a tenant's portal_frame_ancestors.
const maxFrameAncestors = 20

// httpsOrigin is an origin as it goes into a Content-Security-Policy:
// nothing there can end the directive or start another.
var httpsOrigin = regexp.MustCompile(`^https://[a-z0-9]([a-z0-9.-]{0,252})(:[0-9]{1,5})?$`)

// checkFrameAncestors validates the origins that may frame a tenant's
// portal, and writes each as its origin (https://host[:port], lower case).
func checkFrameAncestors(list []string) ([]string, error) {
	if len(list) > maxFrameAncestors {
		return nil, Invalid("portal_frame_ancestors has %d origins; at most %d", len(list), maxFrameAncestors)
	}
	out := make([]string, 0, len(list))
	for _, o := range list {
		u, err := url.Parse(o)
		ok := err == nil && u.Scheme == "https" && u.Host != "" && u.User == nil && (u.Path == "" || u.Path == "/") &&
			u.RawQuery == "" && u.Fragment == "" && !u.ForceQuery
		origin := ""
		if ok {
			origin = "https://" + strings.ToLower(u.Host)
			ok = httpsOrigin.MatchString(origin)
		}
		if !ok {
			return nil, Invalid("portal_frame_ancestors: %q is not an https origin like https://app.example.com", o)
		}
		if !slices.Contains(out, origin) {
			out = append(out, origin)
		}
	}
	return out, nil
}

// Bounds of the event types of a tenant.
const (
	eventTypesScan = 10000 // the tenant's most recent events looked at
	eventTypesMax  = 500   // types answered
)

// EventTypes are the distinct types of the most recent events (up to
// eventTypesScan) of scope's tenant, sorted: what a tenant's endpoints may
// subscribe to, derived from its own history only, never from another
// tenant's. An operator's scope of every tenant answers the default
// tenant's (tenant is the one the request acts for).
func (s *Service) EventTypes(ctx context.Context, scope Scope, tenant string) ([]string, error) {
	if !scope.Allows(tenant) {
		return nil, NotFound("no tenant with id %q", tenant)
	}
	key, err := s.tenants.key(ctx, tenant)
	if err != nil {
		return nil, err
	}
	p := &dispatch.CallScanParams{Function: s.fns.HandleEvent.Name(), Key: &key, TagPrefixes: []string{""},
		Limit: eventTypesScan, Scan: eventTypesScan}
	seen := map[string]bool{}
	types := []string{}
	for scanned := 0; scanned < eventTypesScan; {
		p.Scan = eventTypesScan - scanned
		res, err := s.store.CallScan(ctx, p)
		if err != nil {
			return nil, err
		}
		scanned += res.Scanned
		for _, c := range res.Calls {
			if t := c.Call.Tag; t != "" && !seen[t] && len(types) < eventTypesMax && t != testEventType {
				seen[t] = true
				types = append(types, t)
			}
		}
		if res.Next == "" || res.Scanned == 0 {
			break
		}
		p.Before = res.Next
	}
	slices.Sort(types)
	return types, nil
}

// TestEvent is the body of POST /v1/destinations/{id}/test.
type TestEvent struct {
	// Type is the example's type (testEventType by default).
	Type string `json:"type"`
	// Payload is a JSON object whose fields go into the example, beside
	// its type and a "test": true.
	Payload json.RawMessage `json:"payload"`
}

// TestSent is what a test-send stored.
type TestSent struct {
	EventID    string `json:"event_id"`
	DeliveryID string `json:"delivery_id"`
}

// testEventType is the type of an example event by default; the list of a
// tenant's event types leaves it out.
const testEventType = "fanout.test"

// testMetaPrefix starts the Call.Meta of a test event: the byte, then the
// id of its one destination. A trace context (tracing.go) starts with 1 or
// '{', so the two are never mistaken; a test event is not traced.
const testMetaPrefix = 2

// testTarget is the destination a test event's Meta names, if it is one.
func testTarget(meta []byte) (string, bool) {
	if len(meta) < 2 || meta[0] != testMetaPrefix {
		return "", false
	}
	return string(meta[1:]), true
}

// TestSend sends an example event to one destination of scope, and to no
// other: the event is an ordinary event of the destination's tenant
// (stored, signed, retried, in its history, counted against its ingest
// rate), but its call carries the destination's id in its Meta, and
// handleEvent routes an event so marked to that destination alone (if it
// still belongs to the event's tenant), whatever the filters of the
// tenant's other destinations and of the operator's all_tenants ones. Since
// the Meta is stored with the call, a fan-out run again after a crash, on
// any replica, routes it the same way; the destination's filter is not
// asked (a test of an endpoint that filters out the example's type still
// reaches it).
func (s *Service) TestSend(ctx context.Context, scope Scope, id string, in *TestEvent) (*TestSent, error) {
	d, err := s.destination(scope, id)
	if err != nil {
		return nil, err
	}
	if d.AllTenants {
		return nil, Invalid("destination %s gets every tenant's events: a test event is one tenant's", id)
	}
	if !d.Enabled {
		return nil, Conflict("destination %s is disabled: enable it before sending it a test event", id)
	}
	typ := in.Type
	if typ == "" {
		typ = testEventType
	}
	if len(typ) > 200 || (typ != testEventType && isNotice(typ)) {
		return nil, Invalid("type %q: up to 200 characters, not one of fanout's own (fanout.*) other than fanout.test", typ)
	}
	event := map[string]json.RawMessage{}
	if len(in.Payload) > 0 && string(in.Payload) != "null" {
		if err := json.Unmarshal(in.Payload, &event); err != nil {
			return nil, Invalid("payload must be a JSON object")
		}
	}
	event["type"], _ = json.Marshal(typ)
	event["test"] = json.RawMessage("true")
	if _, ok := event["timestamp"]; !ok {
		event["timestamp"], _ = json.Marshal(s.now().UTC().Format(time.RFC3339))
	}
	body, err := json.Marshal(event)
	if err != nil {
		return nil, err
	}
	if len(body) > 64<<10 {
		return nil, Invalid("an example event is at most 64 KiB")
	}
	t, err := s.tenants.get(ctx, d.Owner())
	if err != nil {
		return nil, err
	}
	if ok, wait := s.tenants.allow(t, 1); !ok {
		return nil, &ErrTooMany{Tenant: t.ID, RetryAfter: wait}
	}
	call, err := s.fns.HandleEvent.BuildCall(body)
	if err != nil {
		return nil, err
	}
	// Listed as fanout.test whatever its type, and never replayed: a
	// test event is for its one destination (a token without the ingest
	// right sends it too).
	call.Tag, call.Key = testEventType, t.Key
	call.Meta = append([]byte{testMetaPrefix}, d.ID...)
	batch := s.rt.Batch()
	batch.Add(call)
	ids, err := batch.Dispatch(ctx)
	if errors.Is(err, dispatch.ErrStopped) {
		return nil, fmt.Errorf("%w: %w", ErrShuttingDown, err)
	}
	if err != nil {
		return nil, err
	}
	// handleEvent's one Gather is its first: its one child is index 0.
	return &TestSent{EventID: ids[0], DeliveryID: dispatch.ChildID(ids[0], 0, 0)}, nil
}

// testDestination is the one destination a test event of tenant goes to:
// the one its Meta names, if it is still that tenant's; none otherwise.
func testDestination(dests *destination.Registry, tenant, id string) []*destination.Destination {
	d, ok := dests.Get(id)
	if !ok || d.AllTenants || tenant == "" || d.Owner() != tenant {
		return nil
	}
	return []*destination.Destination{d}
}

// PortalBranding is the operator's branding of the portals.
func (s *Service) PortalBranding() Branding { return s.portal.Branding }
