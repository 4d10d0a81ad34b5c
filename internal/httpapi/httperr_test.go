package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fanout/dispatch"
	"fanout/internal/service"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestWriteError: every kind of error gets its status and a message that
// says what happened; what is not the client's fault is a 503 that says
// whether anything was stored.
func TestWriteError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, method string
		err          error
		status       int
		says         string
		retryAfter   bool
	}{
		{"Invalid", "POST", service.Invalid("url is required"), 400, "url is required", false},
		{"NotFound", "GET", service.NotFound("no event with id %q", "x"), 404, `no event with id "x"`, false},
		{"Conflict", "POST", service.Conflict("delivery d is delivered"), 409, "delivery d is delivered", false},
		{"TooLarge", "POST", &apiError{Status: 413, Message: "too large"}, 413, "too large", false},
		{"StoreWrite", "POST", errors.New("disk I/O error"), 503, "nothing was stored", true},
		{"StoreRead", "GET", errors.New("disk I/O error"), 503, "storage is unavailable; retry later", true},
		{"Stopping", "POST", fmt.Errorf("%w: %w", service.ErrShuttingDown, dispatch.ErrStopped), 503, "shutting down; nothing was stored", true},
		{"Timeout", "POST", fmt.Errorf("store: %w", context.DeadlineExceeded), 503, "did not take the events in time", true},
		{"MaybeStored", "POST", fmt.Errorf("%w: %w", service.ErrMaybeStored, dispatch.ErrOutcomeUnknown), 503, "may have been stored", true},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			writeError(w, httptest.NewRequest(tc.method, "/v1/x", nil), log, tc.err)
			var body ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q is not JSON: %v", w.Body, err)
			}
			if w.Code != tc.status || !strings.Contains(body.Error, tc.says) || (w.Header().Get("Retry-After") != "") != tc.retryAfter {
				t.Fatalf("%d %q (Retry-After %q), want %d saying %q", w.Code, body.Error, w.Header().Get("Retry-After"), tc.status, tc.says)
			}
			if w.Header().Get("Content-Type") != "application/json" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("headers %v", w.Header())
			}
			if tc.status == http.StatusRequestEntityTooLarge && w.Header().Get("Connection") != "close" {
				t.Fatal("a 413 must close the connection: the rest of the body is not read")
			}
		})
	}
}
