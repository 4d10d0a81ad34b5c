package httpapi

import (
	"fanout/internal/service"
	"net/http"
	"time"
)

// handleStats shows this process's figures of the last hour and the
// destinations' health, for the console's overview.
func handleStats(svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, svc.Stats(time.Now()))
	})
}
