package main

import (
	"log/slog"
	"net/http"
)

// handleEventGet shows an event and, per destination, its delivery.
func handleEventGet(log *slog.Logger, svc *service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*eventView, error) {
		return svc.Event(r.Context(), r.PathValue("id"))
	})
}
