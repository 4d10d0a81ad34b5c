package httpapi

import (
	"fanout/internal/service"
	"log/slog"
	"net/http"
)

// handleReplayCreate starts a replay of a time range to a destination
// (202 with the job), or with "dry_run" counts the events it would look at
// (200).
func handleReplayCreate(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.ReplayRequest
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		scope, err := scopeOf(r, svc)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		v, err := svc.Replay(r.Context(), scope, r.PathValue("id"), &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if job, ok := v.(*service.ReplayView); ok {
			w.Header().Set("Location", "/v1/replays/"+job.ID)
			writeJSON(w, http.StatusAccepted, job)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// handleReplayGet shows a replay and how far it got.
func handleReplayGet(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*service.ReplayView, error) {
		return svc.ReplayJob(r.Context(), scope, r.PathValue("id"))
	})
}

// handleReplayList lists the replays, newest first, of a destination or
// of all.
func handleReplayList(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (map[string]any, error) {
		list, err := svc.Replays(r.Context(), scope, r.URL.Query().Get("destination"))
		return map[string]any{"replays": list}, err
	})
}
