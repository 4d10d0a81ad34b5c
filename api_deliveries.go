package main

import (
	"log/slog"
	"net/http"
	"strconv"
)

// handleDeliveryList lists deliveries, the failed ones (the dead letters) by
// default, page by page.
func handleDeliveryList(log *slog.Logger, svc *service) http.Handler {
	type response struct {
		Deliveries []deliveryView `json:"deliveries"`
		NextCursor string         `json:"next_cursor,omitempty"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := deliveryFilter{State: q.Get("state"), Destination: q.Get("destination"), Since: q.Get("since"), Until: q.Get("until")}
		limit := 100
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 1000 {
				writeError(w, r, log, badRequest("limit must be a number from 1 to 1000"))
				return
			}
			limit = n
		}
		list, next, err := svc.Deliveries(r.Context(), f, q.Get("cursor"), limit)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, response{Deliveries: list, NextCursor: next})
	})
}

// handleDeliveryGet shows a delivery and every attempt.
func handleDeliveryGet(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Delivery(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// handleDeliveryRetry re-drives one failed delivery.
func handleDeliveryRetry(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		done, err := svc.RetryDelivery(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"retried": done})
	})
}

// handleDeliveryRetryMany re-drives the failed deliveries of a destination
// (or of all) created in a time range.
func handleDeliveryRetryMany(log *slog.Logger, svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var f deliveryFilter
		if err := decodeInput(w, r, &f); err != nil {
			writeError(w, r, log, err)
			return
		}
		retried, more, err := svc.RetryDeliveries(r.Context(), f)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"retried": retried, "more": more})
	})
}
