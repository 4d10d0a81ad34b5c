package main

import (
	"log/slog"
	"net/http"
)

// handleEventGet shows an event and, per destination, its delivery.
func handleEventGet(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Event(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}
