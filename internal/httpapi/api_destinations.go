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
		w.Header().Set("Cache-Control", "no-store") // the secret and headers, in full
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
// keeps signing for the grace period. The answer holds both in full.
func handleDestinationRotate(log *slog.Logger, svc *service.Service) http.Handler {
	return noStore(respond(log, http.StatusOK, func(r *http.Request) (*destination.Destination, error) {
		return svc.RotateSecret(r.Context(), r.PathValue("id"))
	}))
}

// handleDestinationSecret answers a destination's secrets and header
// values in full: every other answer but creation's and rotation's shows
// them masked.
func handleDestinationSecret(log *slog.Logger, svc *service.Service) http.Handler {
	return noStore(respond(log, http.StatusOK, func(r *http.Request) (*destination.Secrets, error) {
		return svc.DestinationSecrets(r.PathValue("id"))
	}))
}

// noStore keeps the answers that hold secrets in full out of every cache.
func noStore(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}
