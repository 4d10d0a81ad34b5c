package httpapi

import (
	"fanout/internal/service"
	"log/slog"
	"net/http"
	"strconv"
)

// handleEventGet shows an event and, per destination, its delivery.
func handleEventGet(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*service.EventView, error) {
		return svc.Event(r.Context(), scope, r.PathValue("id"))
	})
}

// handleEventList lists events, newest first, with filters, page by page.
func handleEventList(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*service.EventPage, error) {
		q := r.URL.Query()
		f := service.EventFilter{Type: q.Get("type"), State: q.Get("state"), Destination: q.Get("destination"),
			Since: q.Get("since"), Until: q.Get("until"), Q: q.Get("q")}
		limit, err := queryLimit(q.Get("limit"), 50, 500)
		if err != nil {
			return nil, err
		}
		return svc.Events(r.Context(), scope, f, q.Get("cursor"), limit)
	})
}

// queryLimit reads a limit query parameter: def when absent, 1 to max.
func queryLimit(s string, def, max int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, badRequest("limit must be a number from 1 to %d", max)
	}
	return n, nil
}
