package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"fanout/dispatch"
)

// Limits bound what one request may carry. A request over a limit is refused
// whole with 413, naming the limit and the flag that sets it.
type Limits struct {
	MaxEventBytes  int64
	MaxBatchBytes  int64
	MaxBatchEvents int
	// IngestTimeout bounds how long a request waits for the store to take
	// its events; past it the answer is 503 and nothing is stored.
	IngestTimeout time.Duration
}

// ingestFunc stores events atomically and returns their ids in order once
// they are durable.
type ingestFunc func(ctx context.Context, events []json.RawMessage) ([]string, error)

// newHandler returns the HTTP API.
func newHandler(log *slog.Logger, ingest ingestFunc, limits Limits) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, log, ingest, limits)
	return recoverPanics(log, mux)
}

// addRoutes is the whole API surface.
func addRoutes(mux *http.ServeMux, log *slog.Logger, ingest ingestFunc, limits Limits) {
	mux.Handle("POST /v1/event", handleEventPost(log, ingest, limits))
	mux.Handle("POST /v1/batch", handleBatchPost(log, ingest, limits))
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("/v1/event", methodNotAllowed("POST"))
	mux.Handle("/v1/batch", methodNotAllowed("POST"))
	mux.Handle("/", handleNotFound())
}

// handleEventPost accepts one event: a JSON object.
func handleEventPost(log *slog.Logger, ingest ingestFunc, limits Limits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, limits.MaxEventBytes, "--max-event-bytes")
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		if err := validateEvent(body); err != nil {
			writeError(w, r, log, badRequest("request body: %v", err))
			return
		}
		ids, err := ingestWithTimeout(r, ingest, limits, []json.RawMessage{body})
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		// Ids are UUIDs: nothing to escape. This is the hot path.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"id":"`+ids[0]+`"}`+"\n")
	})
}

// handleBatchPost accepts a JSON array of events, atomically: every event is
// stored, or none is.
func handleBatchPost(log *slog.Logger, ingest ingestFunc, limits Limits) http.Handler {
	type response struct {
		IDs []string `json:"ids"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, limits.MaxBatchBytes, "--max-batch-bytes")
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		events, err := decodeBatch(body, limits)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		ids, err := ingestWithTimeout(r, ingest, limits, events)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusAccepted, response{IDs: ids})
	})
}

// ingestWithTimeout stores events under the ingest timeout. A client that
// hangs up does not cancel a commit under way: its events may be stored,
// which is the at-least-once side of the bargain, never the lossy one.
func ingestWithTimeout(r *http.Request, ingest ingestFunc, limits Limits, events []json.RawMessage) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), limits.IngestTimeout)
	defer cancel()
	return ingest(ctx, events)
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{
			Error: fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, allow),
		})
	})
}

func handleNotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{
			Error: fmt.Sprintf("no route for %s %s; the API is POST /v1/event and POST /v1/batch", r.Method, r.URL.Path),
		})
	})
}

// readBody reads the whole request body, refusing with 413 one over limit.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, flag string) ([]byte, error) {
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return nil, &apiError{Status: http.StatusUnsupportedMediaType,
			Message: fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed", enc)}
	}
	tooLarge := &apiError{Status: http.StatusRequestEntityTooLarge,
		Message: fmt.Sprintf("request body is larger than the limit of %d bytes (%s)", limit, flag)}
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	var b []byte
	var err error
	if r.ContentLength > 0 {
		// The common case: read exactly the announced length, in one
		// allocation, then make sure nothing follows.
		b = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, b)
		if err == nil {
			var extra [1]byte
			if n, _ := body.Read(extra[:]); n > 0 {
				err = errors.New("body longer than its Content-Length")
			}
		}
	} else {
		b, err = io.ReadAll(body)
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge
	case err != nil:
		return nil, badRequest("could not read the request body: %v", err)
	case len(b) == 0:
		return nil, badRequest("request body is empty")
	}
	return b, nil
}

// decodeBatch splits a JSON array into its events, keeping each element's
// bytes exactly, and checks every limit before anything is stored.
func decodeBatch(body []byte, limits Limits) ([]json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, badRequest("request body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return nil, badRequest("request body is not valid JSON: %s", jsonError(err))
	}
	if tok != json.Delim('[') {
		return nil, badRequest("a batch must be a JSON array of event objects, got %s", jsonKind(body))
	}
	events := make([]json.RawMessage, 0, min(limits.MaxBatchEvents, 1024))
	for dec.More() {
		i := len(events)
		if i == limits.MaxBatchEvents {
			return nil, &apiError{Status: http.StatusRequestEntityTooLarge,
				Message: fmt.Sprintf("batch has more than %d events, the limit (--max-batch-events)", limits.MaxBatchEvents)}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, badIndex(i, "event %d is not valid JSON: %s", i, jsonError(err))
		}
		if kind := jsonKind(raw); kind != "an object" {
			return nil, badIndex(i, "event %d must be a JSON object, got %s", i, kind)
		}
		if int64(len(raw)) > limits.MaxEventBytes {
			e := badIndex(i, "event %d is %d bytes, over the limit of %d (--max-event-bytes)", i, len(raw), limits.MaxEventBytes)
			e.Status = http.StatusRequestEntityTooLarge
			return nil, e
		}
		events = append(events, raw)
	}
	if _, err := dec.Token(); err != nil {
		return nil, badRequest("batch array is not valid JSON after event %d: %s", len(events)-1, jsonError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("unexpected data after the batch array")
	}
	if len(events) == 0 {
		return nil, badRequest("batch is empty; send at least one event")
	}
	return events, nil
}

func jsonError(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "unexpected end of input"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// apiError is an error the client caused, with the status that says so.
type apiError struct {
	Status  int
	Message string
	// Index is the position of the offending event in a batch.
	Index *int
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

type errorBody struct {
	Error string `json:"error"`
	Index *int   `json:"index,omitempty"`
}

// writeError is the one place where errors become HTTP answers. Client
// mistakes keep their status and message. Anything else is the store failing
// or the service stopping: 503 with Retry-After, since nothing was stored and
// the same request will succeed later.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeJSON(w, ae.Status, errorBody{Error: ae.Message, Index: ae.Index})
		return
	}
	msg := "storage is unavailable; nothing was stored, retry later"
	switch {
	case errors.Is(err, dispatch.ErrStopped):
		msg = "fanout is shutting down; nothing was stored, retry later"
	case errors.Is(err, context.DeadlineExceeded):
		msg = "storage did not take the events in time; nothing was stored, retry later"
	}
	log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// recoverPanics answers 500 instead of dropping the connection when a handler
// panics, and logs the stack.
func recoverPanics(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				log.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, errorBody{Error: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}
