package service

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"fanout/dispatch"
)

// Scoped tokens: an operator mints them through the API for a producer
// (ingest only), a dashboard (read), a tenant's own tools. A token is
// "fo_<id>_<secret>": the id names its document in the store, where only
// the secret's SHA-256 is kept, so that the store's contents do not let
// anyone act; the token itself is shown once, in the answer that mints
// it. Every request with a scoped token reads its document, on every
// replica: a revoked or expired token is refused at once everywhere, at the
// cost of one indexed read per request (operator tokens, from the flags,
// cost none).

// TokenDocKind is the kind of the store documents that hold tokens.
const TokenDocKind = "token"

// tokenPrefix starts every scoped token, so that a leaked one is
// recognisable (secret scanners, logs) and told apart from an operator's.
const tokenPrefix = "fo_"

// Token is a scoped token as the API shows it: never its secret, but once.
type Token struct {
	ID         string  `json:"id"`
	Name       string  `json:"name"`
	Rights     []Right `json:"rights"`
	Tenant     string  `json:"tenant,omitempty"`
	AllTenants bool    `json:"all_tenants,omitempty"`
	// Kinds are the broker destination kinds the token may create and
	// reconfigure (with manage).
	Kinds       []string   `json:"kinds,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	Fingerprint string     `json:"fingerprint"` // the token's first characters, to recognise it
	// Token is the token itself, in the answer that mints it only.
	Token string `json:"token,omitempty"`
}

// storedToken is a token's document.
type storedToken struct {
	Token
	Hash string `json:"hash"` // hex SHA-256 of the secret part
}

// TokenInput mints a token.
type TokenInput struct {
	Name   string  `json:"name"`
	Rights []Right `json:"rights"`
	// Tenant is the tenant the token acts for; AllTenants instead gives
	// it every tenant. One of them is required.
	Tenant     string `json:"tenant"`
	AllTenants bool   `json:"all_tenants"`
	// Kinds grants broker destination kinds ("nats", "sqs"): without
	// one, a token may not create a destination of that kind nor change
	// one's config. It needs the manage right.
	Kinds []string `json:"kinds"`
	// ExpiresIn ("720h") or ExpiresAt; neither: it does not expire.
	ExpiresIn string     `json:"expires_in"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// maxTokenLifetime bounds a token's life, so that a forgotten one does not
// outlive its purpose by decades; an operator mints a new one.
const maxTokenLifetime = 5 * 366 * 24 * time.Hour

// MintToken stores a new token and returns it, with its secret, once.
func (s *Service) MintToken(ctx context.Context, in *TokenInput) (*Token, error) {
	if in.Name == "" || len(in.Name) > 200 || !utf8.ValidString(in.Name) {
		return nil, Invalid("name is required: up to 200 characters that say what the token is for")
	}
	if len(in.Rights) == 0 {
		return nil, Invalid("rights is required: one or more of %s", rightNames())
	}
	rights := make([]Right, 0, len(in.Rights))
	for _, r := range in.Rights {
		if !slices.Contains(Rights, r) {
			return nil, Invalid("right %q is not one of %s", r, rightNames())
		}
		if !slices.Contains(rights, r) {
			rights = append(rights, r)
		}
	}
	kinds, err := s.grantKinds(in.Kinds, rights)
	if err != nil {
		return nil, err
	}
	switch {
	case in.AllTenants && in.Tenant != "":
		return nil, Invalid("a token is for one tenant or for all_tenants, not both")
	case !in.AllTenants && in.Tenant == "":
		return nil, Invalid("tenant is required (the tenant the token acts for; %q is the one of events sent without a tenant), or all_tenants: true", DefaultTenant)
	case in.Tenant != "":
		if _, err := s.Tenant(ctx, AllTenants(), in.Tenant); err != nil {
			return nil, err
		}
	}
	now := s.now().UTC()
	var expires *time.Time
	switch {
	case in.ExpiresIn != "" && in.ExpiresAt != nil:
		return nil, Invalid("give expires_in or expires_at, not both")
	case in.ExpiresIn != "":
		d, err := time.ParseDuration(in.ExpiresIn)
		if err != nil || d <= 0 {
			return nil, Invalid("expires_in must be a positive duration like \"720h\", not %q", in.ExpiresIn)
		}
		at := now.Add(d)
		expires = &at
	case in.ExpiresAt != nil:
		at := in.ExpiresAt.UTC()
		expires = &at
	}
	if expires != nil && !expires.After(now) {
		return nil, Invalid("the token would expire before it is minted")
	}
	if expires != nil && expires.Sub(now) > maxTokenLifetime {
		return nil, Invalid("a token lives at most %d days; mint a new one when it expires", int(maxTokenLifetime.Hours()/24))
	}
	var idBytes [8]byte
	var secret [32]byte
	_, _ = rand.Read(idBytes[:]) // crypto/rand does not fail (Go 1.24)
	_, _ = rand.Read(secret[:])
	id := "tok_" + hex.EncodeToString(idBytes[:])
	secretText := base64.RawURLEncoding.EncodeToString(secret[:])
	raw := tokenPrefix + strings.TrimPrefix(id, "tok_") + "_" + secretText
	t := storedToken{Token: Token{ID: id, Name: in.Name, Rights: rights, Tenant: in.Tenant, AllTenants: in.AllTenants,
		Kinds: kinds, ExpiresAt: expires, CreatedAt: now, Fingerprint: raw[:len(tokenPrefix)+8]}, Hash: hashSecret(secretText)}
	data, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	if err := s.store.DocCreate(ctx, &dispatch.Doc{Kind: TokenDocKind, ID: id, Data: data, Version: 1, CreatedAt: now, UpdatedAt: now}); err != nil {
		return nil, err
	}
	out := t.Token
	out.Token = raw
	return &out, nil
}

// grantKinds checks the broker kinds a token is to be granted: known ones,
// and only with the manage right, without which they grant nothing.
func (s *Service) grantKinds(names []string, rights []Right) ([]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	if !slices.Contains(rights, RightManage) {
		return nil, Invalid("kinds lets a token create broker destinations: it needs the %s right", RightManage)
	}
	known := s.Dests.Kinds()
	out := make([]string, 0, len(names))
	for _, k := range names {
		if known == nil {
			return nil, Invalid("kinds: this fanout delivers to webhooks only")
		}
		if _, err := known.Kind(k); err != nil {
			return nil, Invalid("kinds: %q is not a broker kind; known: %s", k, strings.Join(known.Names(), ", "))
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func rightNames() string {
	names := make([]string, len(Rights))
	for i, r := range Rights {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

// Tokens lists the scoped tokens, without their secrets, oldest first.
func (s *Service) Tokens(ctx context.Context) ([]Token, error) {
	docs, err := s.store.DocList(ctx, TokenDocKind)
	if err != nil {
		return nil, err
	}
	out := make([]Token, 0, len(docs))
	for _, doc := range docs {
		t, err := decodeToken(doc)
		if err != nil {
			return nil, err
		}
		out = append(out, t.Token)
	}
	slices.SortFunc(out, func(a, b Token) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, nil
}

func decodeToken(doc *dispatch.Doc) (*storedToken, error) {
	var t storedToken
	if err := json.Unmarshal(doc.Data, &t); err != nil {
		return nil, fmt.Errorf("token %s: %w", doc.ID, err)
	}
	t.ID = doc.ID
	return &t, nil
}

// TokenByID returns one token, without its secret.
func (s *Service) TokenByID(ctx context.Context, id string) (*Token, error) {
	doc, err := s.store.DocGet(ctx, TokenDocKind, id)
	if errors.Is(err, dispatch.ErrNotFound) {
		return nil, NotFound("no token with id %q", id)
	}
	if err != nil {
		return nil, err
	}
	t, err := decodeToken(doc)
	if err != nil {
		return nil, err
	}
	return &t.Token, nil
}

// RevokeToken deletes a token: every replica refuses it from the next
// request on.
func (s *Service) RevokeToken(ctx context.Context, id string) error {
	err := s.store.DocDelete(ctx, TokenDocKind, id)
	if errors.Is(err, dispatch.ErrNotFound) {
		return NotFound("no token with id %q", id)
	}
	return err
}

// ErrBadToken: the bearer token is not a scoped token that is valid now.
var ErrBadToken = errors.New("the bearer token is not one of fanout's --api-token, nor a token minted by POST /v1/tokens that is valid now (revoked, expired or mistyped)")

// IsScopedToken reports whether raw has the shape of a scoped token.
func IsScopedToken(raw string) bool { return strings.HasPrefix(raw, tokenPrefix) }

// parseToken splits a scoped token into the id of its document and its
// secret; ok is false for anything that is not shaped as one.
func parseToken(raw string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(raw, tokenPrefix)
	if !ok {
		return "", "", false
	}
	idHex, secret, ok := strings.Cut(rest, "_")
	if !ok || len(idHex) != 16 || secret == "" || len(secret) > 100 {
		return "", "", false
	}
	if _, err := hex.DecodeString(idHex); err != nil {
		return "", "", false
	}
	return "tok_" + idHex, secret, true
}

// Authenticate returns the principal of a scoped token, ErrBadToken when it
// is unknown, revoked or expired, or the store's error.
func (s *Service) Authenticate(ctx context.Context, raw string) (*Principal, error) {
	id, secret, ok := parseToken(raw)
	if !ok {
		return nil, ErrBadToken
	}
	doc, err := s.store.DocGet(ctx, TokenDocKind, id)
	if errors.Is(err, dispatch.ErrNotFound) {
		return nil, ErrBadToken
	}
	if err != nil {
		return nil, err
	}
	t, err := decodeToken(doc)
	if err != nil {
		return nil, err
	}
	// Compared in constant time: timing tells nothing of the hash.
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(t.Hash)) != 1 {
		return nil, ErrBadToken
	}
	if t.ExpiresAt != nil && !s.now().Before(*t.ExpiresAt) {
		return nil, ErrBadToken
	}
	return &Principal{Token: t.ID, Rights: t.Rights, Tenant: t.Tenant, AllTenants: t.AllTenants, Kinds: t.Kinds}, nil
}
