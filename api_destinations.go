package main

import (
	"log/slog"
	"net/http"
)

func handleDestinationCreate(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in destinationInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		d, err := svc.CreateDestination(r.Context(), &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", "/v1/destinations/"+d.ID)
		writeJSON(w, http.StatusCreated, d)
	})
}

func handleDestinationList(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"destinations": svc.Destinations()})
	})
}

func handleDestinationGet(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := svc.Destination(r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

func handleDestinationPatch(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in destinationInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		d, err := svc.UpdateDestination(r.Context(), r.PathValue("id"), &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

func handleDestinationDelete(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := svc.DeleteDestination(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// handleDestinationResume lifts a pause, by a person or by the breaker.
func handleDestinationResume(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := svc.ResumeDestination(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}

// handleDestinationRotate gives a destination a new secret; the old one
// keeps signing for the grace period.
func handleDestinationRotate(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := svc.RotateSecret(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
}
