package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"fanout/destination"
	"fanout/dispatch"
)

// Tenants are the customers of the operator's own service (Svix's
// applications, Outpost's tenants): each has its destinations, its events
// and, through scoped tokens and portals, its own view of them. An id is the
// caller's (its customer id: PUT /v1/tenants/{id} creates or updates), a
// tenant is a store document, and every replica reads the same ones.
//
// An event of a tenant is a handleEvent call keyed by the tenant's key, a
// name the tenant got when it was created: the history of a tenant is a
// scan by key, the runtime's per-key fairness applies between tenants, and
// a tenant that is deleted and created again under the same id gets a new
// key, so that it never sees the events of the one before. The default
// tenant (DefaultTenant) has the key "": the events of a store from before
// tenants are its own.

// DefaultTenant is the tenant of everything sent without one.
const DefaultTenant = destination.DefaultTenant

// TenantDocKind is the kind of the store documents that hold tenants.
const TenantDocKind = "tenant"

// Tenant is one tenant.
type Tenant struct {
	ID       string            `json:"id"`
	Name     string            `json:"name,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// IngestRate bounds the events per second this tenant may send to
	// each fanout process, with a burst of IngestBurst; 0 takes
	// --tenant-ingest-rate (and its burst).
	IngestRate  float64   `json:"ingest_rate,omitempty"`
	IngestBurst int       `json:"ingest_burst,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Version     int64     `json:"version"`

	// PortalFrameAncestors are the https origins that may frame this
	// tenant's portal (portal.go); none: no one.
	PortalFrameAncestors []string `json:"portal_frame_ancestors,omitempty"`
}

// storedTenant is a tenant's document: the tenant and its key.
type storedTenant struct {
	Tenant
	Key string `json:"key"`
}

// TenantInput creates or changes a tenant (PUT /v1/tenants/{id}): an absent
// field is left as it is.
type TenantInput struct {
	Name        *string            `json:"name"`
	Metadata    *map[string]string `json:"metadata"`
	IngestRate  *float64           `json:"ingest_rate"`
	IngestBurst *int               `json:"ingest_burst"`

	// PortalFrameAncestors replaces the origins that may frame the
	// tenant's portal; [] removes them.
	PortalFrameAncestors *[]string `json:"portal_frame_ancestors"`
}

// tenantID is what a tenant id may be: it travels in paths and keys.
var tenantID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// ValidTenantID says what is wrong with a tenant id, or nil.
func ValidTenantID(id string) error {
	if !tenantID.MatchString(id) {
		return Invalid("tenant id %q: up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit", id)
	}
	return nil
}

// tenants caches the tenants for the hot paths (ingest checks that its
// tenant exists; routing reads a key's tenant). A miss reloads from the
// store before it answers "no such tenant", so that a tenant created on
// another replica is found at once; a deletion elsewhere is seen within the
// refresh interval (its events then have no destination of its own left).
type tenants struct {
	store    dispatch.DocStore
	mu       sync.RWMutex
	byID     map[string]*storedTenant
	byKey    map[string]string
	limiters map[string]*tenantLimiter
	// defaultRate and defaultBurst are --tenant-ingest-rate's.
	defaultRate  float64
	defaultBurst int
	now          func() time.Time
}

// tenantLimiter is a tenant's ingest bucket, and the settings it was made
// with (a change makes a new one).
type tenantLimiter struct {
	rate  float64
	burst int
	lim   *rate.Limiter
}

func newTenants(store dispatch.DocStore, defaultRate float64, defaultBurst int, now func() time.Time) *tenants {
	return &tenants{store: store, byID: map[string]*storedTenant{}, byKey: map[string]string{},
		limiters: map[string]*tenantLimiter{}, defaultRate: defaultRate, defaultBurst: defaultBurst, now: now}
}

// refresh reloads every tenant.
func (ts *tenants) refresh(ctx context.Context) error {
	docs, err := ts.store.DocList(ctx, TenantDocKind)
	if err != nil {
		return err
	}
	byID, byKey := make(map[string]*storedTenant, len(docs)), make(map[string]string, len(docs))
	for _, doc := range docs {
		t, err := decodeTenant(doc)
		if err != nil {
			return err
		}
		byID[t.ID], byKey[t.Key] = t, t.ID
	}
	ts.mu.Lock()
	ts.byID, ts.byKey = byID, byKey
	ts.mu.Unlock()
	return nil
}

func decodeTenant(doc *dispatch.Doc) (*storedTenant, error) {
	var t storedTenant
	if err := json.Unmarshal(doc.Data, &t); err != nil {
		return nil, fmt.Errorf("tenant %s: %w", doc.ID, err)
	}
	t.ID, t.Version, t.CreatedAt, t.UpdatedAt = doc.ID, doc.Version, doc.CreatedAt, doc.UpdatedAt
	return &t, nil
}

// get returns a tenant. A miss reads that one tenant from the store (an
// indexed read, like a scoped token's, so that asking for tenants that do
// not exist costs no more than that), so that a tenant created on another
// replica is found at once. The default tenant always exists: a stored one
// carries its settings, else it has none.
func (ts *tenants) get(ctx context.Context, id string) (*storedTenant, error) {
	t := ts.cached(id)
	if t != nil {
		return t, nil
	}
	doc, err := ts.store.DocGet(ctx, TenantDocKind, id)
	if errors.Is(err, dispatch.ErrNotFound) {
		return nil, NotFound("no tenant with id %q", id)
	}
	if err != nil {
		return nil, err
	}
	if t, err = decodeTenant(doc); err != nil {
		return nil, err
	}
	ts.mu.Lock()
	ts.byID[t.ID], ts.byKey[t.Key] = t, t.ID
	ts.mu.Unlock()
	return t, nil
}

// cached returns tenant id as known without asking the store, or nil.
func (ts *tenants) cached(id string) *storedTenant {
	ts.mu.RLock()
	t := ts.byID[id]
	ts.mu.RUnlock()
	if t == nil && id == DefaultTenant {
		return implicitDefault // changed elsewhere: seen at the next refresh
	}
	return t
}

// run reloads the tenants every interval until ctx ends: changes made on
// other replicas (a rate, a deletion) are seen within it.
func (ts *tenants) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = ts.refresh(ctx) // a store failing is told by readiness; the cache is kept
		}
	}
}

// implicitDefault is the default tenant while none is stored: no name, no
// settings, key "". Shared and never changed (every ingest without a
// tenant reads it).
var implicitDefault = &storedTenant{Tenant: Tenant{ID: DefaultTenant}}

// key is the key of the events of tenant id.
func (ts *tenants) key(ctx context.Context, id string) (string, error) {
	if id == DefaultTenant {
		return "", nil
	}
	t, err := ts.get(ctx, id)
	if err != nil {
		return "", err
	}
	return t.Key, nil
}

// ofKey is the tenant of an event's key; ok is false for a key no tenant
// has any more (its tenant was deleted). An error is the store's: the
// caller must not take it for a deleted tenant.
func (ts *tenants) ofKey(ctx context.Context, key string) (string, bool, error) {
	if key == "" {
		return DefaultTenant, true, nil
	}
	ts.mu.RLock()
	id, ok := ts.byKey[key]
	ts.mu.RUnlock()
	if ok {
		return id, true, nil
	}
	if err := ts.refresh(ctx); err != nil {
		return "", false, err
	}
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	id, ok = ts.byKey[key]
	return id, ok, nil
}

// any reports whether a tenant other than the default was ever stored
// (then the history must tell keys apart).
func (ts *tenants) any() bool {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	for id := range ts.byID {
		if id != DefaultTenant {
			return true
		}
	}
	return false
}

// allow takes n events from tenant's ingest bucket; when it is empty, wait
// says how long until n fit.
func (ts *tenants) allow(t *storedTenant, n int) (ok bool, wait time.Duration) {
	r, burst := ts.defaultRate, ts.defaultBurst
	if t.IngestRate > 0 {
		r, burst = t.IngestRate, t.IngestBurst
	}
	if r <= 0 {
		return true, 0
	}
	burst = max(burst, int(r), 1)
	ts.mu.Lock()
	l := ts.limiters[t.ID]
	if l == nil || l.rate != r || l.burst != burst {
		l = &tenantLimiter{rate: r, burst: burst, lim: rate.NewLimiter(rate.Limit(r), burst)}
		ts.limiters[t.ID] = l
	}
	ts.mu.Unlock()
	if n > burst {
		// More than the bucket holds: it would never fit. Take the
		// batch when the bucket is full, as a burst of its own.
		n = burst
	}
	now := ts.now()
	res := l.lim.ReserveN(now, n)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// ErrTooMany: the tenant sent more than its ingest rate; RetryAfter says
// when to send again.
type ErrTooMany struct {
	Tenant     string
	RetryAfter time.Duration
	// Message, when set, says what else there was too much of.
	Message string
}

func (e *ErrTooMany) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("tenant %q sent more events than its ingest rate allows; nothing was stored, send again in %s",
		e.Tenant, e.RetryAfter.Round(time.Millisecond))
}

// Tenant returns a tenant in scope.
func (s *Service) Tenant(ctx context.Context, scope Scope, id string) (*Tenant, error) {
	if !scope.Allows(id) {
		return nil, NotFound("no tenant with id %q", id)
	}
	t, err := s.tenants.get(ctx, id)
	if err != nil {
		return nil, err
	}
	out := t.Tenant
	return &out, nil
}

// TenantPage is a page of tenants.
type TenantPage struct {
	Tenants    []Tenant `json:"tenants"`
	NextCursor string   `json:"next_cursor,omitempty"`
}

// Tenants lists tenants by id, after cursor (an id), limit at most.
func (s *Service) Tenants(ctx context.Context, cursor string, limit int) (*TenantPage, error) {
	if err := s.tenants.refresh(ctx); err != nil {
		return nil, err
	}
	s.tenants.mu.RLock()
	all := make([]Tenant, 0, len(s.tenants.byID)+1)
	hasDefault := false
	for _, t := range s.tenants.byID {
		all = append(all, t.Tenant)
		hasDefault = hasDefault || t.ID == DefaultTenant
	}
	s.tenants.mu.RUnlock()
	if !hasDefault {
		all = append(all, Tenant{ID: DefaultTenant})
	}
	slices.SortFunc(all, func(a, b Tenant) int { return strings.Compare(a.ID, b.ID) })
	i, _ := slices.BinarySearchFunc(all, cursor, func(t Tenant, c string) int { return strings.Compare(t.ID, c) })
	for i < len(all) && cursor != "" && all[i].ID <= cursor {
		i++
	}
	page := &TenantPage{Tenants: all[i:min(len(all), i+limit)]}
	if i+limit < len(all) {
		page.NextCursor = page.Tenants[len(page.Tenants)-1].ID
	}
	return page, nil
}

// PutTenant creates tenant id, or changes it; created says which.
func (s *Service) PutTenant(ctx context.Context, id string, in *TenantInput) (t *Tenant, created bool, err error) {
	if err := ValidTenantID(id); err != nil {
		return nil, false, err
	}
	if err := in.check(); err != nil {
		return nil, false, err
	}
	for range 5 {
		now := s.now().UTC()
		doc, err := s.store.DocGet(ctx, TenantDocKind, id)
		switch {
		case errors.Is(err, dispatch.ErrNotFound):
			st := &storedTenant{Tenant: Tenant{ID: id}, Key: newTenantKey()}
			if id == DefaultTenant {
				st.Key = ""
			}
			in.apply(&st.Tenant)
			data, err := json.Marshal(st)
			if err != nil {
				return nil, false, err
			}
			err = s.store.DocCreate(ctx, &dispatch.Doc{Kind: TenantDocKind, ID: id, Data: data, Version: 1, CreatedAt: now, UpdatedAt: now})
			if errors.Is(err, dispatch.ErrDocExists) {
				continue // created meanwhile: update it
			}
			if err != nil {
				return nil, false, err
			}
			st.CreatedAt, st.UpdatedAt, st.Version = now, now, 1
			_ = s.tenants.refresh(ctx)
			out := st.Tenant
			return &out, true, nil
		case err != nil:
			return nil, false, err
		}
		st, err := decodeTenant(doc)
		if err != nil {
			return nil, false, err
		}
		in.apply(&st.Tenant)
		data, err := json.Marshal(st)
		if err != nil {
			return nil, false, err
		}
		next := &dispatch.Doc{Kind: TenantDocKind, ID: id, Data: data, Version: doc.Version, CreatedAt: doc.CreatedAt, UpdatedAt: now}
		err = s.store.DocUpdate(ctx, next)
		if errors.Is(err, dispatch.ErrDocConflict) || errors.Is(err, dispatch.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		st.Version, st.UpdatedAt = next.Version, now
		_ = s.tenants.refresh(ctx)
		out := st.Tenant
		return &out, false, nil
	}
	return nil, false, Conflict("tenant %s keeps changing under this request; try again", id)
}

func newTenantKey() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "tenant:" + hex.EncodeToString(b[:])
}

func (in *TenantInput) check() error {
	if in.Name != nil && (len(*in.Name) > 200 || !utf8.ValidString(*in.Name)) {
		return Invalid("name is up to 200 characters of UTF-8")
	}
	if in.Metadata != nil {
		if len(*in.Metadata) > 50 {
			return Invalid("metadata has more than 50 keys")
		}
		for k, v := range *in.Metadata {
			if k == "" || len(k) > 100 || len(v) > 1000 || !utf8.ValidString(k) || !utf8.ValidString(v) {
				return Invalid("metadata %q: keys up to 100 characters, values up to 1000, UTF-8", k)
			}
		}
	}
	if in.IngestRate != nil && (*in.IngestRate < 0 || *in.IngestRate > 1e6) {
		return Invalid("ingest_rate must be between 0 (fanout's default, --tenant-ingest-rate) and 1000000 events per second")
	}
	if in.IngestBurst != nil && (*in.IngestBurst < 0 || *in.IngestBurst > 1e7) {
		return Invalid("ingest_burst must be between 0 (as many as ingest_rate) and 10000000 events")
	}
	if in.PortalFrameAncestors != nil {
		origins, err := checkFrameAncestors(*in.PortalFrameAncestors)
		if err != nil {
			return err
		}
		*in.PortalFrameAncestors = origins
	}
	return nil
}

func (in *TenantInput) apply(t *Tenant) {
	set(&t.Name, in.Name)
	set(&t.Metadata, in.Metadata)
	set(&t.IngestRate, in.IngestRate)
	set(&t.IngestBurst, in.IngestBurst)
	set(&t.PortalFrameAncestors, in.PortalFrameAncestors)
}

// TenantDeleted is what deleting a tenant did.
type TenantDeleted struct {
	Destinations int `json:"destinations_deleted"`
	Tokens       int `json:"tokens_revoked"`
}

// DeleteTenant deletes a tenant, its destinations (their pending
// deliveries fail for good when they next run, as for any deleted
// destination) and its tokens. Its events stay in the operator's history
// until retention removes them; the tenant's own views are gone with it,
// and a tenant created again with the same id starts with none of them. The
// default tenant cannot be deleted.
func (s *Service) DeleteTenant(ctx context.Context, id string) (*TenantDeleted, error) {
	if id == DefaultTenant {
		return nil, Conflict("the default tenant cannot be deleted: it holds what is sent without a tenant")
	}
	if _, err := s.tenants.get(ctx, id); err != nil {
		return nil, err
	}
	// Tokens first: from here on the tenant's own tools are refused.
	var out TenantDeleted
	tokens, err := s.store.DocList(ctx, TokenDocKind)
	if err != nil {
		return nil, err
	}
	for _, doc := range tokens {
		t, err := decodeToken(doc)
		if err != nil {
			return nil, err
		}
		if t.Tenant == id {
			if err := s.store.DocDelete(ctx, TokenDocKind, t.ID); err != nil && !errors.Is(err, dispatch.ErrNotFound) {
				return nil, err
			}
			out.Tokens++
		}
	}
	// Then its destinations, and the tenant last: a failure on the way
	// leaves a tenant that a repeated DELETE finishes, never destinations
	// that a tenant created again under this id would inherit.
	if err := s.Dests.Refresh(ctx); err != nil {
		return nil, err
	}
	for _, d := range s.Dests.List() {
		if d.Owner() == id {
			if err := s.Dests.Delete(ctx, d.ID); err != nil && !errors.Is(err, destination.ErrNotFound) {
				return nil, err
			}
			out.Destinations++
		}
	}
	if err := s.store.DocDelete(ctx, TenantDocKind, id); err != nil && !errors.Is(err, dispatch.ErrNotFound) {
		return nil, err
	}
	_ = s.tenants.refresh(ctx)
	return &out, nil
}
