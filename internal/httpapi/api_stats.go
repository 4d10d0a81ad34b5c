package httpapi

import (
	"fanout/internal/service"
	"log/slog"
	"net/http"
	"time"
)

// handleStats shows this process's figures of the last hour and the
// destinations' health, for the console's overview.
// They are of every tenant: a token of one tenant is refused.
func handleStats(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !principalOf(r).Scope().All() {
			writeError(w, r, log, &apiError{Status: http.StatusForbidden,
				Message: "the stats are of every tenant: they need an operator token or a token of all_tenants"})
			return
		}
		writeJSON(w, http.StatusOK, svc.Stats(time.Now()))
	})
}
