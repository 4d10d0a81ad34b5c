package httpapi

import (
	"context"
	"errors"
	"fanout/internal/service"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
)

// apiError is a mistake in the HTTP exchange itself (a body too large or
// not JSON, an encoding or header fanout does not take), with the status
// that says so. The service's own errors (errInvalid, errNotFound,
// errConflict) are mapped by writeError.
type apiError struct {
	Status  int
	Message string
	// Index is the position of the offending event in a batch.
	Index *int
	// RetryAfter, when set, is sent as Retry-After: the same request will
	// be taken later.
	RetryAfter string
}

func (e *apiError) Error() string { return e.Message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Message: fmt.Sprintf(format, args...)}
}

func badIndex(i int, format string, args ...any) *apiError {
	e := badRequest(format, args...)
	e.Index = &i
	return e
}

type ErrorBody struct {
	Error string `json:"error"`
	Index *int   `json:"index,omitempty"`
}

// statusOf is the status of each kind of service error.
var statusOf = []struct {
	kind   error
	status int
}{
	{service.ErrInvalid, http.StatusBadRequest},
	{service.ErrNotFound, http.StatusNotFound},
	{service.ErrConflict, http.StatusConflict},
	{service.ErrForbidden, http.StatusForbidden},
}

// writeError is the one place where errors become HTTP answers. Client
// mistakes keep their status and message. Anything else is the store failing
// or the service stopping: 503 with Retry-After, since nothing was stored and
// the same request will succeed later; the one exception (a commit whose
// answer was lost) says so.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		if ae.Status == http.StatusRequestEntityTooLarge {
			// The rest of the body is not read: answer now and close the
			// connection. http.MaxBytesReader would have the server do so,
			// but it cannot see the server's writer through statusWriter,
			// and the server would first try to read what is left.
			w.Header().Set("Connection", "close")
		}
		if ae.RetryAfter != "" {
			w.Header().Set("Retry-After", ae.RetryAfter)
		}
		writeJSON(w, ae.Status, ErrorBody{Error: ae.Message, Index: ae.Index})
		return
	}
	var many *service.ErrTooMany
	if errors.As(err, &many) {
		w.Header().Set("Retry-After", strconv.Itoa(int(max(1, math.Ceil(many.RetryAfter.Seconds())))))
		writeJSON(w, http.StatusTooManyRequests, ErrorBody{Error: many.Error()})
		return
	}
	for _, s := range statusOf {
		if errors.Is(err, s.kind) {
			writeJSON(w, s.status, ErrorBody{Error: err.Error()})
			return
		}
	}
	msg := "storage is unavailable; nothing was stored, retry later"
	switch {
	case r.Method == http.MethodGet:
		msg = "storage is unavailable; retry later"
	case errors.Is(err, service.ErrMaybeStored):
		msg = "storage lost the answer to its commit and could not check it in time: the events may have been stored; " +
			"send the same request again with the same Idempotency-Key (or events that carry an \"id\") to have them stored once"
	case errors.Is(err, service.ErrShuttingDown):
		msg = "fanout is shutting down; nothing was stored, retry later"
	case errors.Is(err, context.DeadlineExceeded):
		msg = "storage did not take the events in time; nothing was stored, retry later"
	}
	log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: msg})
}
