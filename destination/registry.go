package destination

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"fanout/destination/match"
	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// DocKind is the kind of the store documents that hold destinations.
const DocKind = "destination"

// Errors of the registry.
var (
	ErrNotFound = errors.New("destination not found")
	ErrExists   = errors.New("destination exists")
)

// Registry keeps destinations in the store (as documents, so that every
// replica on a shared database sees the same ones) and caches them: the hot
// paths (routing an event, a delivery, the runtime's key limits) read the
// cache, which is reloaded every RefreshInterval and after every change made
// through this registry. A change made by another replica is seen here
// within RefreshInterval.
type Registry struct {
	store    Store
	guard    *webhook.Guard
	now      func() time.Time
	log      *slog.Logger
	policy   *dispatch.Backoff
	cooldown time.Duration
	grace    time.Duration
	changed  func()
	kinds    *sink.Registry
	forget   func(id string)

	refreshMu sync.Mutex // one refresh at a time
	mu        sync.RWMutex
	byID      map[string]*Destination
	sorted    []*Destination
	index     typeIndex
	versions  map[string]int64
}

// Store keeps destinations as documents (kind DocKind): the drivers of
// dispatch implement it beside their calls, so that destinations live in
// the database the calls do.
type Store interface {
	DocCreate(ctx context.Context, doc *dispatch.Doc) error
	DocGet(ctx context.Context, kind, id string) (*dispatch.Doc, error)
	DocList(ctx context.Context, kind string) ([]*dispatch.Doc, error)
	DocUpdate(ctx context.Context, doc *dispatch.Doc) error
	DocDelete(ctx context.Context, kind, id string) error
}

// Config configures a Registry.
type Config struct {
	Store Store
	// Guard refuses URLs with blocked address literals; nil allows all.
	Guard *webhook.Guard
	// Policy is the default retry policy, which a destination's retry
	// settings amend.
	Policy *dispatch.Backoff
	// BreakerCooldown is how long a destination stays paused when the
	// circuit breaker opens (default 5m).
	BreakerCooldown time.Duration
	// SecretGrace is how long a rotated-out secret still signs (default 24h).
	SecretGrace time.Duration
	// Changed is called after the cache changed (the runtime then looks for
	// deliveries a change released).
	Changed func()
	// Kinds are the broker kinds destinations may have; nil: webhooks
	// only.
	Kinds *sink.Registry
	// Forget is called with the id of a broker destination that was
	// deleted or whose type or config changed, here or on another
	// replica: its pooled connection (sink.Pool.Forget) is to be closed.
	Forget func(id string)

	Now    func() time.Time
	Logger *slog.Logger
}

// NewRegistry returns an empty registry; call Refresh to load it.
func NewRegistry(cfg Config) *Registry {
	r := &Registry{
		store: cfg.Store, guard: cfg.Guard, now: cfg.Now, log: cfg.Logger, policy: cfg.Policy,
		cooldown: cfg.BreakerCooldown, grace: cfg.SecretGrace, changed: cfg.Changed,
		kinds: cfg.Kinds, forget: cfg.Forget,
		byID: map[string]*Destination{}, versions: map[string]int64{},
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.policy == nil {
		r.policy = dispatch.DefaultBackoff()
	}
	if r.cooldown <= 0 {
		r.cooldown = 5 * time.Minute
	}
	if r.grace <= 0 {
		r.grace = 24 * time.Hour
	}
	return r
}

// Run refreshes the cache every interval until ctx ends.
func (r *Registry) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.Refresh(ctx); err != nil {
			if !failing && ctx.Err() == nil {
				r.log.Error("reload destinations; keeping the ones known", "err", err)
			}
			failing = true
			continue
		}
		failing = false
	}
}

// Refresh reloads every destination from the store.
func (r *Registry) Refresh(ctx context.Context) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	docs, err := r.store.DocList(ctx, DocKind)
	if err != nil {
		return err
	}
	byID := make(map[string]*Destination, len(docs))
	versions := make(map[string]int64, len(docs))
	sorted := make([]*Destination, 0, len(docs))
	r.mu.RLock()
	old := r.byID
	r.mu.RUnlock()
	for _, doc := range docs {
		d, err := fromDoc(doc)
		if err != nil {
			r.log.Error("a stored destination does not decode; skipping it", "id", doc.ID, "err", err)
			continue
		}
		r.describe(d, old[d.ID])
		byID[d.ID], versions[d.ID] = d, d.Version
		sorted = append(sorted, d)
	}
	r.mu.Lock()
	changed := len(versions) != len(r.versions)
	for id, v := range versions {
		changed = changed || r.versions[id] != v
	}
	r.byID, r.sorted, r.versions, r.index = byID, sorted, versions, newTypeIndex(sorted)
	r.mu.Unlock()
	if r.forget != nil {
		for id, o := range old {
			if n := byID[id]; o.IsBroker() && (n == nil || n.Type != o.Type || !bytes.Equal(n.Config, o.Config)) {
				r.forget(id) // deleted, or connects elsewhere now
			}
		}
	}
	if changed && r.changed != nil {
		r.changed()
	}
	return nil
}

// describe sets what a broker destination shows and does not store: its
// target, what delivered means, its masked config; prev, the same
// destination as last loaded, spares parsing an unchanged config again.
func (r *Registry) describe(d, prev *Destination) {
	if !d.IsBroker() || r.kinds == nil {
		return
	}
	if prev != nil && prev.Type == d.Type && bytes.Equal(prev.Config, d.Config) && prev.maskedConfig != nil {
		d.Target, d.Delivered, d.maskedConfig = prev.Target, prev.Delivered, prev.maskedConfig
		return
	}
	k, err := r.kinds.Kind(d.Type)
	if err != nil {
		return
	}
	d.Delivered = k.Delivered
	if cfg, err := k.Parse(d.Config); err == nil {
		d.Target = cfg.Target()
	}
	if m, err := k.Mask(d.Config); err == nil {
		d.maskedConfig = m
	} else {
		d.maskedConfig = json.RawMessage(`{}`) // never the stored config
	}
}

// Kinds are the broker kinds the registry accepts, nil for none.
func (r *Registry) Kinds() *sink.Registry { return r.kinds }

func fromDoc(doc *dispatch.Doc) (*Destination, error) {
	var d Destination
	if err := json.Unmarshal(doc.Data, &d); err != nil {
		return nil, err
	}
	d.ID, d.Version, d.CreatedAt, d.UpdatedAt = doc.ID, doc.Version, doc.CreatedAt, doc.UpdatedAt
	if d.Type == "" {
		d.Type = TypeWebhook // stored before destinations had types
	}
	d.Target, d.Delivered = "", ""
	return &d, nil
}

func toDoc(d *Destination) (*dispatch.Doc, error) {
	stored := *d
	stored.Target, stored.Delivered = "", "" // shown, not stored
	data, err := json.Marshal(&stored)
	if err != nil {
		return nil, err
	}
	return &dispatch.Doc{Kind: DocKind, ID: d.ID, Data: data, Version: d.Version, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}, nil
}

// List returns every destination, ordered by id. The values are shared:
// do not change them.
func (r *Registry) List() []*Destination {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.sorted)
}

// Get returns a destination from the cache.
func (r *Registry) Get(id string) (*Destination, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.byID[id]
	return d, ok
}

// Matching returns the enabled destinations that want an event published
// for tenant: that tenant's and those of every tenant, whose type filter
// lets its type through and whose payload filter (Match), if any, matches
// the event read from payload and env (read once, and only if one of them
// has a payload filter; a nil payload skips payload filters). They come in
// id order, whatever the patterns that found them: a fan-out run again must
// number its deliveries as it did the first time. The type index is
// consulted first, so that an event looks only at the destinations that
// could want its type.
func (r *Registry) Matching(tenant, eventType string, payload []byte, env match.Envelope) []*Destination {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var found []int
	add := func(ix []int) {
		for _, i := range ix {
			d := r.sorted[i]
			if d.Enabled && (d.AllTenants || d.Owner() == tenant) {
				found = append(found, i)
			}
		}
	}
	add(r.index.any)
	if eventType != "" {
		add(r.index.exact[eventType])
		for _, p := range r.index.prefixes {
			if strings.HasPrefix(eventType, p.prefix) {
				add(p.dests)
			}
		}
	}
	slices.Sort(found)
	found = slices.Compact(found) // one destination found by two of its patterns
	var out []*Destination
	var ev *match.Event
	for _, i := range found {
		d := r.sorted[i]
		if d.Match != nil && payload != nil {
			if ev == nil {
				e := match.NewEvent(payload, env)
				ev = &e
			}
			if !d.Match.MatchEvent(ev) {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}

// typeIndex finds the destinations that may want an event of a type,
// by their position in Registry.sorted: those that take any type, those
// with the type as a pattern, and those with a prefix of it.
type typeIndex struct {
	any      []int
	exact    map[string][]int
	prefixes []prefixDests
}

type prefixDests struct {
	prefix string
	dests  []int
}

func newTypeIndex(sorted []*Destination) typeIndex {
	ix := typeIndex{exact: map[string][]int{}}
	byPrefix := map[string][]int{}
	for i, d := range sorted {
		if len(d.Filter) == 0 || slices.Contains(d.Filter, "*") {
			ix.any = append(ix.any, i)
			continue
		}
		for _, p := range d.Filter {
			if pre, ok := strings.CutSuffix(p, "*"); ok {
				byPrefix[pre] = append(byPrefix[pre], i)
			} else {
				ix.exact[p] = append(ix.exact[p], i)
			}
		}
	}
	for pre, dests := range byPrefix {
		ix.prefixes = append(ix.prefixes, prefixDests{prefix: pre, dests: dests})
	}
	return ix
}

// KeyConfig is the runtime's view of a destination (its key is its id): its
// concurrency cap, rate, pause and retry policy. A delivery to a destination
// that no longer exists is not held back: it runs and fails for good.
func (r *Registry) KeyConfig(key string) dispatch.KeyConfig {
	d, ok := r.Get(key)
	if !ok {
		return dispatch.KeyConfig{}
	}
	return dispatch.KeyConfig{
		MaxConcurrency: d.MaxConcurrency,
		Rate:           d.RateLimit.PerSecond(),
		Burst:          d.RateLimit.BurstOrDefault(),
		Paused:         d.PausedAt(r.now()),
		RetryPolicy:    d.Policy(r.policy),
	}
}

// Create validates and stores a new destination.
func (r *Registry) Create(ctx context.Context, d *Destination) error {
	if d.ID == "" {
		d.ID = NewID()
	}
	if _, err := d.ValidateKinds(r.guard, r.kinds); err != nil {
		return err
	}
	r.describe(d, nil)
	now := r.now().UTC()
	d.CreatedAt, d.UpdatedAt, d.Version = now, now, 1
	doc, err := toDoc(d)
	if err != nil {
		return err
	}
	if err := r.store.DocCreate(ctx, doc); err != nil {
		if errors.Is(err, dispatch.ErrDocExists) {
			return ErrExists
		}
		return err
	}
	return r.Refresh(ctx)
}

// Update changes a destination with apply, which may refuse. A change made
// meanwhile by someone else is read again and apply runs again on it.
func (r *Registry) Update(ctx context.Context, id string, apply func(d *Destination) error) (*Destination, error) {
	for range 5 {
		doc, err := r.store.DocGet(ctx, DocKind, id)
		if errors.Is(err, dispatch.ErrNotFound) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		d, err := fromDoc(doc)
		if err != nil {
			return nil, err
		}
		oldSecret, wasEnabled := d.Secret, d.Enabled
		if err := apply(d); err != nil {
			return nil, err
		}
		d.noteEnabled(wasEnabled, r.now().UTC())
		d.ID = id
		if d.Secret != oldSecret && d.Secret != "" && oldSecret != "" {
			// A new secret: the old one keeps signing for the grace
			// period, so that receivers can switch without losing any.
			until := r.now().UTC().Add(r.grace)
			d.PreviousSecret, d.PreviousSecretExpires = oldSecret, &until
		}
		if _, err := d.ValidateKinds(r.guard, r.kinds); err != nil {
			return nil, err
		}
		r.describe(d, nil)
		d.UpdatedAt = r.now().UTC()
		next, err := toDoc(d)
		if err != nil {
			return nil, err
		}
		err = r.store.DocUpdate(ctx, next)
		if errors.Is(err, dispatch.ErrDocConflict) {
			continue
		}
		if errors.Is(err, dispatch.ErrNotFound) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		d.Version = next.Version
		return d, r.Refresh(ctx)
	}
	return nil, fmt.Errorf("destination %s keeps changing under this update; try again", id)
}

// Delete removes a destination. Its pending deliveries fail for good when
// they next run.
func (r *Registry) Delete(ctx context.Context, id string) error {
	if err := r.store.DocDelete(ctx, DocKind, id); err != nil {
		if errors.Is(err, dispatch.ErrNotFound) {
			return ErrNotFound
		}
		return err
	}
	return r.Refresh(ctx)
}

// Ensure creates the destination of a configured URL unless it exists: a
// restart with the same --destination flags adds nothing.
func (r *Registry) Ensure(ctx context.Context, id, rawURL, description string) error {
	err := r.Create(ctx, &Destination{ID: id, URL: rawURL, Description: description, Enabled: true})
	if errors.Is(err, ErrExists) {
		return nil
	}
	return err
}

// Trip pauses a destination whose deliveries kept failing, until the
// breaker's cooldown has passed; it is the runtime's OnKeyTrip.
func (r *Registry) Trip(id, reason string) {
	until := r.now().UTC().Add(r.cooldown)
	_, err := r.Update(context.Background(), id, func(d *Destination) error {
		d.CircuitOpenUntil = &until
		d.Reason = "circuit breaker: " + reason + "; paused until " + until.Format(time.RFC3339)
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		r.log.Error("pause a failing destination", "destination", id, "err", err)
		return
	}
	r.log.Warn("destination paused by the circuit breaker", "destination", id, "reason", reason, "until", until)
}

// Gone disables a destination that answered 410 Gone.
func (r *Registry) Gone(id, reason string) {
	_, err := r.Update(context.Background(), id, func(d *Destination) error {
		d.Enabled = false
		d.Reason = reason
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		r.log.Error("disable a gone destination", "destination", id, "err", err)
		return
	}
	r.log.Warn("destination disabled", "destination", id, "reason", reason)
}
