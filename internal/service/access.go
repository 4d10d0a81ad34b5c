package service

import (
	"errors"
	"slices"
)

// Who may do what. A request acts for a Principal: an operator (one of
// fanout's --api-token, or anyone on this machine when fanout has none), or
// a scoped token an operator minted (tokens.go), which holds some Rights
// over one tenant or over every tenant. The HTTP layer checks the right a
// route needs; the service narrows what it reads and changes to the
// principal's Scope, so that a tenant's token never reaches another
// tenant's destinations, events or deliveries, whatever id, cursor or
// range it sends.

// Right is what a scoped token may do.
type Right string

// The rights of scoped tokens. An operator has them all, and the operator's
// own right: tenants, tokens and portals.
const (
	// RightIngest: POST /v1/event and /v1/batch.
	RightIngest Right = "ingest"
	// RightRead: the history, deliveries, destinations (secrets masked),
	// replays.
	RightRead Right = "read"
	// RightManage: create, change and delete destinations, re-drive,
	// replay.
	RightManage Right = "manage"
	// RightViewSecret: a destination's secrets and header values, in full.
	RightViewSecret Right = "view_secret"
	// RightTransform: set or change a destination's transformation
	// (JavaScript run on fanout's machine for each delivery), and test
	// one (POST /v1/transform). An operator's by default: it grants it
	// to a tenant's token.
	RightTransform Right = "transform"
	// RightOperator is no token's: tenants, tokens and portals.
	RightOperator Right = "operator"
)

// Rights are the rights a token may be given, in the order they are shown.
var Rights = []Right{RightIngest, RightRead, RightManage, RightViewSecret, RightTransform}

// Principal is who a request acts for.
type Principal struct {
	// Operator: every right over every tenant.
	Operator bool
	// Open is set for the operator of a fanout without --api-token (the
	// single-user service on this machine): tenants, tokens and portals
	// need a real operator token, since the tokens they mint would guard
	// nothing.
	Open bool
	// Token is the scoped token's id; Rights its rights, over Tenant, or
	// over every tenant when AllTenants.
	Token      string
	Rights     []Right
	Tenant     string
	AllTenants bool
	// Kinds are the broker destination kinds ("nats", "sqs") the token
	// may create and reconfigure: an operator's right, granted kind by
	// kind (a broker destination connects from fanout's network).
	Kinds []string
}

// Operator is the principal of an operator token.
var Operator = &Principal{Operator: true, AllTenants: true}

// ErrForbidden: the principal lacks the right an operation needs.
var ErrForbidden = errors.New("forbidden")

// Forbidden is an ErrForbidden with its message.
func Forbidden(format string, args ...any) error { return newError(ErrForbidden, format, args...) }

// Has reports whether p has right r.
func (p *Principal) Has(r Right) bool {
	if p.Operator {
		return r != RightOperator || !p.Open
	}
	return r != RightOperator && slices.Contains(p.Rights, r)
}

// Scope is what p may see and change.
func (p *Principal) Scope() Scope {
	if p.Operator {
		return AllTenants()
	}
	s := Scope{all: p.AllTenants, tenant: p.Tenant, limited: true,
		secrets: p.Has(RightViewSecret), transform: p.Has(RightTransform), kinds: p.Kinds}
	if p.AllTenants {
		s.tenant = ""
	}
	return s
}

// Scope is the tenants an operation may read and change: one, or all. The
// zero Scope allows none, so that a scope that was forgotten shows nothing
// rather than everything.
type Scope struct {
	all    bool
	tenant string
	// limited scopes are a scoped token's: they may see secrets only
	// when secrets says so. A scope that is not limited (the
	// operator's, the service's own) may.
	limited bool
	secrets bool
	// transform: a limited scope may set transformations only with
	// RightTransform.
	transform bool
	// kinds: the broker kinds a limited scope may create and
	// reconfigure.
	kinds []string
}

// SeesSecrets reports whether the scope's principal may see secrets and
// header values in full (view_secret): what a change it makes must not
// hand to someone else (a new URL, a rotation's answer).
func (s Scope) SeesSecrets() bool { return !s.limited || s.secrets }

// MayTransform reports whether the scope's principal may set a
// destination's transformation (RightTransform).
func (s Scope) MayTransform() bool { return !s.limited || s.transform }

// MayKind reports whether the scope's principal may create or
// reconfigure a broker destination of kind k: an operator may, a scoped
// token when it was granted k.
func (s Scope) MayKind(k string) bool { return !s.limited || slices.Contains(s.kinds, k) }

// Limited reports whether the scope is a scoped token's.
func (s Scope) Limited() bool { return s.limited }

// AllTenants is the operator's scope.
func AllTenants() Scope { return Scope{all: true} }

// TenantScope is one tenant's scope.
func TenantScope(id string) Scope { return Scope{tenant: id} }

// All reports whether the scope is every tenant.
func (s Scope) All() bool { return s.all }

// Tenant is the scope's one tenant; "" for every tenant (or none).
func (s Scope) Tenant() string { return s.tenant }

// Allows reports whether the scope covers tenant.
func (s Scope) Allows(tenant string) bool {
	return s.all || (s.tenant != "" && s.tenant == tenant)
}

// Narrow is the scope of one tenant within s; ok is false when s does not
// cover it.
func (s Scope) Narrow(tenant string) (Scope, bool) {
	if !s.Allows(tenant) {
		return Scope{}, false
	}
	n := s
	n.all, n.tenant = false, tenant
	return n, true
}
