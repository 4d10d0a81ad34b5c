package httpapi

import (
	"log/slog"
	"net/http"

	"fanout/destination"
	"fanout/internal/service"
)

// scoped is respond for an operation on what the request's scope reaches.
func scoped[T any](log *slog.Logger, svc *service.Service, status int, op func(r *http.Request, scope service.Scope) (T, error)) http.Handler {
	return respond(log, status, func(r *http.Request) (T, error) {
		scope, err := scopeOf(r, svc)
		if err != nil {
			var zero T
			return zero, err
		}
		return op(r, scope)
	})
}

func handleDestinationCreate(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.DestinationInput
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		scope, err := scopeOf(r, svc)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		d, err := svc.CreateDestination(r.Context(), scope, tenantOf(r, scope), &in)
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
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (map[string]any, error) {
		return map[string]any{"destinations": svc.Destinations(scope)}, nil
	})
}

func handleDestinationGet(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*destination.Destination, error) {
		return svc.Destination(scope, r.PathValue("id"))
	})
}

func handleDestinationPatch(log *slog.Logger, svc *service.Service) http.Handler {
	return respondTo(log, http.StatusOK, func(r *http.Request, in *service.DestinationInput) (*destination.Destination, error) {
		scope, err := scopeOf(r, svc)
		if err != nil {
			return nil, err
		}
		return svc.UpdateDestination(r.Context(), scope, r.PathValue("id"), in)
	})
}

func handleDestinationDelete(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scope, err := scopeOf(r, svc)
		if err == nil {
			err = svc.DeleteDestination(r.Context(), scope, r.PathValue("id"))
		}
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// handleDestinationResume lifts a pause, by a person or by the breaker.
func handleDestinationResume(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*destination.Destination, error) {
		return svc.ResumeDestination(r.Context(), scope, r.PathValue("id"))
	})
}

// handleDestinationRotate gives a destination a new secret; the old one
// keeps signing for the grace period. The answer holds both in full.
func handleDestinationRotate(log *slog.Logger, svc *service.Service) http.Handler {
	return noStore(scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*destination.Destination, error) {
		return svc.RotateSecret(r.Context(), scope, r.PathValue("id"))
	}))
}

// handleDestinationSecret answers a destination's secrets and header
// values in full: every other answer but creation's and rotation's shows
// them masked.
func handleDestinationSecret(log *slog.Logger, svc *service.Service) http.Handler {
	return noStore(scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*destination.Secrets, error) {
		return svc.DestinationSecrets(scope, r.PathValue("id"))
	}))
}

// noStore keeps the answers that hold secrets in full out of every cache.
func noStore(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// handleMatchTest answers whether a destination with a type filter and a
// payload filter would get an event, and why not.
func handleMatchTest(log *slog.Logger, svc *service.Service) http.Handler {
	return respondTo(log, http.StatusOK, func(r *http.Request, in *service.MatchTest) (*service.MatchResult, error) {
		scope, err := scopeOf(r, svc)
		if err != nil {
			return nil, err
		}
		return svc.TestMatch(tenantOf(r, scope), in)
	})
}
