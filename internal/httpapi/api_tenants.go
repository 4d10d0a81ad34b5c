package httpapi

import (
	"log/slog"
	"net/http"

	"fanout/internal/service"
)

// Tenants and tokens: an operator's routes (route.right RightOperator).

func handleTenantList(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*service.TenantPage, error) {
		q := r.URL.Query()
		limit, err := queryLimit(q.Get("limit"), 100, 1000)
		if err != nil {
			return nil, err
		}
		return svc.Tenants(r.Context(), q.Get("cursor"), limit)
	})
}

func handleTenantGet(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*service.Tenant, error) {
		return svc.Tenant(r.Context(), principalOf(r).Scope(), r.PathValue("tenant"))
	})
}

// handleTenantPut creates a tenant (201) or changes it (200).
func handleTenantPut(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.TenantInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		t, created, err := svc.PutTenant(r.Context(), r.PathValue("tenant"), &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		writeJSON(w, status, t)
	})
}

func handleTenantDelete(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*service.TenantDeleted, error) {
		return svc.DeleteTenant(r.Context(), r.PathValue("tenant"))
	})
}

// handleTokenCreate mints a scoped token: the answer is the only time its
// secret is shown.
func handleTokenCreate(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.TokenInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		t, err := svc.MintToken(r.Context(), &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", "/v1/tokens/"+t.ID)
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusCreated, t)
	})
}

func handleTokenList(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (map[string]any, error) {
		list, err := svc.Tokens(r.Context())
		return map[string]any{"tokens": list}, err
	})
}

func handleTokenGet(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*service.Token, error) {
		return svc.TokenByID(r.Context(), r.PathValue("id"))
	})
}

// handleTokenDelete revokes a token, on every replica from the next request.
func handleTokenDelete(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := svc.RevokeToken(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
