package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"fanout/internal/console"
	"fanout/internal/console/portal"
	"fanout/internal/service"
)

// Authentication and authorization. authenticate finds who a request acts
// for (service.Principal) from its bearer token; each route names the right
// it needs (route.right), which authorize checks before the handler runs;
// handlers then pass the principal's scope, narrowed by a tenant in the path
// (/v1/tenants/{tenant}/...), to the service, which shows and changes
// nothing outside it.

type principalKey struct{}

// principalOf is the principal authenticate found for r.
func principalOf(r *http.Request) *service.Principal {
	if p, ok := r.Context().Value(principalKey{}).(*service.Principal); ok {
		return p
	}
	return &service.Principal{} // no rights: a route mounted without authenticate answers nothing
}

// openOperator is the principal of every request to a fanout without
// operator tokens: the single user on this machine (the Host check keeps
// others out), with every right but the operator's own (tenants, tokens and
// portals need a token to guard what they mint).
var openOperator = &service.Principal{Operator: true, Open: true, AllTenants: true}

// requireBearer answers 401 to a request without a bearer token when fanout
// has operator tokens, but for /healthz, /readyz and /metrics, left open to
// probes and scrapers, and the console's files, which hold no data (the
// console asks for a token and sends it with each of its API requests).
// Which token it is, and what it may do, each route's guard decides: it
// runs behind the mux, which names the route on the request that
// instrumentation reads, and a layer before the mux must not replace that
// request.
func requireBearer(log *slog.Logger, tokens []string, next http.Handler) http.Handler {
	if len(tokens) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" || console.IsPath(r.URL.Path) || portal.IsPath(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		if _, ok := bearer(r); !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized,
				Message: "this API needs a token: send the header Authorization: Bearer <token>, with one of fanout's --api-token or a token minted by POST /v1/tokens"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearer is the request's bearer token.
func bearer(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// authenticator finds who a request acts for: an operator (one of tokens,
// compared as SHA-256 digests in constant time, so that timing tells
// neither a token's bytes nor its length; several let an operator rotate
// one without downtime), or a scoped token's principal, read from the
// store. Without operator tokens every request is the open operator's and
// scoped tokens are not read.
type authenticator struct {
	svc  *service.Service
	sums [][sha256.Size]byte
}

func newAuthenticator(svc *service.Service, tokens []string) *authenticator {
	a := &authenticator{svc: svc}
	for _, t := range tokens {
		a.sums = append(a.sums, sha256.Sum256([]byte(t)))
	}
	return a
}

// principal is r's principal; service.ErrBadToken for a token that is
// none of them, or the store's error.
func (a *authenticator) principal(r *http.Request) (*service.Principal, error) {
	if len(a.sums) == 0 {
		return openOperator, nil
	}
	token, ok := bearer(r)
	if !ok {
		return nil, service.ErrBadToken
	}
	sum := sha256.Sum256([]byte(token))
	match := 0
	for i := range a.sums {
		match |= subtle.ConstantTimeCompare(sum[:], a.sums[i][:])
	}
	if match == 1 {
		return service.Operator, nil
	}
	return a.svc.Authenticate(r.Context(), token)
}

// guard runs next for a request whose principal has right, with the
// principal in its context: 401 for a token that is not valid, 403 for one
// without the right. right "" is a route open to whoever reached it (the
// probes, the metrics).
func guard(log *slog.Logger, auth *authenticator, right service.Right, next http.Handler) http.Handler {
	if right == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := auth.principal(r)
		if errors.Is(err, service.ErrBadToken) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout", error="invalid_token"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized, Message: err.Error()})
			return
		}
		if err != nil {
			writeError(w, r, log, err) // the store: 503
			return
		}
		if p.Has(right) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
			return
		}
		msg := fmt.Sprintf("this token does not have the right %q that this route needs (its rights: %s)", right, rightsOf(p))
		if right == service.RightOperator {
			msg = "tenants, tokens and portals are an operator's: they need one of fanout's --api-token"
			if p.Open {
				msg = "tenants, tokens and portals need an operator token: start fanout with --api-token (FANOUT_API_TOKENS); " +
					"without one, fanout is the single-user service of this machine"
			}
		}
		writeError(w, r, log, &apiError{Status: http.StatusForbidden, Message: msg})
	})
}

func rightsOf(p *service.Principal) string {
	if len(p.Rights) == 0 {
		return "none"
	}
	names := make([]string, len(p.Rights))
	for i, r := range p.Rights {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

// scopeOf is what a request may reach: the tenant of its path, which the
// principal must cover (a tenant it does not cover, like one that does not
// exist, is not found), or the principal's own scope.
func scopeOf(r *http.Request, svc *service.Service) (service.Scope, error) {
	scope := principalOf(r).Scope()
	tenant := r.PathValue("tenant")
	if tenant == "" {
		return scope, nil
	}
	if _, err := svc.Tenant(r.Context(), scope, tenant); err != nil {
		return service.Scope{}, err
	}
	narrowed, _ := scope.Narrow(tenant)
	return narrowed, nil
}

// tenantOf is the tenant a request creates for (an event, a destination):
// its path's, else its token's one tenant, else the default tenant.
func tenantOf(r *http.Request, scope service.Scope) string {
	if !scope.All() {
		return scope.Tenant()
	}
	return service.DefaultTenant
}

// metricsAuth answers 401 to a scrape without token as its bearer token,
// when token is set. /metrics holds no secret, but its series are labelled
// by destination: with tenants, anyone who reaches the port would learn
// every tenant's destination ids and traffic (--metrics-token).
func metricsAuth(log *slog.Logger, token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ := bearer(r)
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout metrics"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized,
				Message: "/metrics needs the token of --metrics-token as its bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
