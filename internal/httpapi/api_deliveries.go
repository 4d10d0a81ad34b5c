package httpapi

import (
	"fanout/internal/service"
	"log/slog"
	"net/http"
	"strconv"
)

// handleDeliveryList lists deliveries, the failed ones (the dead letters) by
// default, page by page.
func handleDeliveryList(log *slog.Logger, svc *service.Service) http.Handler {
	type response struct {
		Deliveries []service.DeliveryView `json:"deliveries"`
		NextCursor string                 `json:"next_cursor,omitempty"`
	}
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*response, error) {
		q := r.URL.Query()
		f := service.DeliveryFilter{State: q.Get("state"), Destination: q.Get("destination"), Since: q.Get("since"), Until: q.Get("until")}
		limit := 100
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 1000 {
				return nil, badRequest("limit must be a number from 1 to 1000")
			}
			limit = n
		}
		list, next, err := svc.Deliveries(r.Context(), scope, f, q.Get("cursor"), limit)
		if err != nil {
			return nil, err
		}
		return &response{Deliveries: list, NextCursor: next}, nil
	})
}

// handleDeliveryGet shows a delivery and every attempt.
func handleDeliveryGet(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*service.DeliveryView, error) {
		return svc.Delivery(r.Context(), scope, r.PathValue("id"))
	})
}

// handleDeliveryRetry re-drives one failed delivery.
func handleDeliveryRetry(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusAccepted, func(r *http.Request, scope service.Scope) (map[string]any, error) {
		done, err := svc.RetryDelivery(r.Context(), scope, r.PathValue("id"))
		return map[string]any{"retried": done}, err
	})
}

// handleDeliveryRetryMany re-drives the failed deliveries of a destination
// (or of all) created in a time range.
func handleDeliveryRetryMany(log *slog.Logger, svc *service.Service) http.Handler {
	return respondTo(log, http.StatusAccepted, func(r *http.Request, f *service.DeliveryFilter) (map[string]any, error) {
		scope, err := scopeOf(r, svc)
		if err != nil {
			return nil, err
		}
		retried, more, err := svc.RetryDeliveries(r.Context(), scope, *f)
		return map[string]any{"retried": retried, "more": more}, err
	})
}

// handleDeliverySkip dead-letters a waiting delivery of an ordered
// destination, so that its key moves on.
func handleDeliverySkip(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*service.DeliveryView, error) {
		return svc.SkipDelivery(r.Context(), scope, r.PathValue("id"))
	})
}

// handleOrderedKeys lists the keys of an ordered destination that have
// deliveries to make; ?blocked=true those whose first delivery is failing.
func handleOrderedKeys(log *slog.Logger, svc *service.Service) http.Handler {
	type response struct {
		Keys       []service.BlockedKeyView `json:"keys"`
		NextCursor string                   `json:"next_cursor,omitempty"`
	}
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (*response, error) {
		q := r.URL.Query()
		limit, err := queryLimit(q.Get("limit"), 100, 1000)
		if err != nil {
			return nil, err
		}
		blocked := false
		switch q.Get("blocked") {
		case "", "false":
		case "true":
			blocked = true
		default:
			return nil, badRequest("blocked must be true or false")
		}
		keys, next, err := svc.OrderedKeys(r.Context(), scope, r.PathValue("id"), blocked, q.Get("cursor"), limit)
		if err != nil {
			return nil, err
		}
		if keys == nil {
			keys = []service.BlockedKeyView{}
		}
		return &response{Keys: keys, NextCursor: next}, nil
	})
}
