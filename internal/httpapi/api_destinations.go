package httpapi

import (
	"log/slog"
	"net/http"

	"fanout/destination"
	"fanout/internal/service"
)

func handleDestinationCreate(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.DestinationInput
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

func handleDestinationList(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (map[string]any, error) {
		return map[string]any{"destinations": svc.Destinations()}, nil
	})
}

func handleDestinationGet(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*destination.Destination, error) {
		return svc.Destination(r.PathValue("id"))
	})
}

func handleDestinationPatch(log *slog.Logger, svc *service.Service) http.Handler {
	return respondTo(log, http.StatusOK, func(r *http.Request, in *service.DestinationInput) (*destination.Destination, error) {
		return svc.UpdateDestination(r.Context(), r.PathValue("id"), in)
	})
}

func handleDestinationDelete(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := svc.DeleteDestination(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// handleDestinationResume lifts a pause, by a person or by the breaker.
func handleDestinationResume(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*destination.Destination, error) {
		return svc.ResumeDestination(r.Context(), r.PathValue("id"))
	})
}

// handleDestinationRotate gives a destination a new secret; the old one
// keeps signing for the grace period.
func handleDestinationRotate(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*destination.Destination, error) {
		return svc.RotateSecret(r.Context(), r.PathValue("id"))
	})
}
