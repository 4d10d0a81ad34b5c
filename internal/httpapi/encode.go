package httpapi

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"unicode/utf8"
)

// readBody reads the whole request body, refusing with 413 one over limit.
// A body that could not have its bytes (errBodyBusy) is read to its end
// and dropped, at most limit bytes of it, a buffer at a time: a server that
// answers and closes while the client still sends has the client's kernel
// reset the connection, and the client would see that instead of the 503
// that tells it when to come back.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, flag string) (b []byte, err error) {
	defer func() {
		if err == errBodyBusy {
			_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, limit+1))
		}
	}()
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		return readGzip(w, r, limit, flag)
	default:
		return nil, &apiError{Status: http.StatusUnsupportedMediaType,
			Message: fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed or gzip", enc)}
	}
	if r.ContentLength > limit {
		return nil, tooLarge(limit, flag)
	}
	hold := holdOf(r)
	body := http.MaxBytesReader(w, r.Body, limit)
	if r.ContentLength > 0 {
		// The common case: read exactly the announced length, in one
		// allocation, then make sure nothing follows.
		if err := hold.grow(r.Context(), r.ContentLength); err != nil {
			return nil, err
		}
		b = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, b)
		if err == nil {
			var extra [1]byte
			if n, _ := body.Read(extra[:]); n > 0 {
				err = errors.New("body longer than its Content-Length")
			}
		}
	} else {
		b, err = hold.readAll(r.Context(), body, limit+1)
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe) || int64(len(b)) > limit:
		return nil, tooLarge(limit, flag)
	case err == errBodyBusy:
		return nil, errBodyBusy
	case err != nil:
		return nil, badRequest("could not read the request body: %v", err)
	case len(b) == 0:
		return nil, badRequest("request body is empty")
	}
	return b, nil
}

// tooLarge is the answer to a body over limit, set by flag. It is built
// only when it is the answer: formatting it for every request that fits
// cost an allocation per single event.
func tooLarge(limit int64, flag string) *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge,
		Message: fmt.Sprintf("request body is larger than the limit of %d bytes (%s)", limit, flag)}
}

// readGzip reads a gzip request body. The limit holds for the body as sent
// and again for it decompressed, so that a small bomb cannot fill memory;
// what is stored and delivered is the decompressed JSON.
func readGzip(w http.ResponseWriter, r *http.Request, limit int64, flag string) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, tooLarge(limit, flag)
	}
	hold := holdOf(r)
	zr, err := gzip.NewReader(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, tooLarge(limit, flag)
	}
	if err != nil {
		return nil, badRequest("request body is not valid gzip: %v", err)
	}
	b, err := hold.readAll(r.Context(), io.LimitReader(zr, limit+1), limit+1)
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge(limit, flag)
	case err == errBodyBusy:
		return nil, errBodyBusy
	case err != nil:
		return nil, badRequest("request body is not valid gzip: %v", err)
	case int64(len(b)) > limit:
		return nil, &apiError{Status: http.StatusRequestEntityTooLarge,
			Message: "decompressed " + tooLarge(limit, flag).Message}
	case len(b) == 0:
		return nil, badRequest("request body is empty")
	}
	return b, nil
}

// decodeBatch splits a JSON array into its events, keeping each element's
// bytes exactly, and checks every limit before anything is stored.
func decodeBatch(body []byte, limits Limits) ([]json.RawMessage, error) {
	if events, ok := splitBatch(body, limits); ok {
		return events, nil
	}
	// Something is wrong with the batch: the decoder says what, and where.
	return scanBatch(body, limits)
}

// scanBatch is decodeBatch with encoding/json's decoder, element by
// element, which names the first element in error.
func scanBatch(body []byte, limits Limits) ([]json.RawMessage, error) {
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
		var sp span
		if err := dec.Decode(&sp); err != nil {
			return nil, badIndex(i, "event %d is not valid JSON: %s", i, jsonError(err))
		}
		// The element's own bytes in body, not a copy: a batch is held
		// in memory once (see bodyBudget).
		end := dec.InputOffset()
		raw := json.RawMessage(body[end-sp.n : end : end])
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

// splitBatch is decodeBatch for a batch it accepts, in one pass of
// encoding/json's scanner over the whole body (json.Valid) and one of a
// byte loop that finds the elements, instead of the decoder's two passes
// over every element: the decoder was an eighth of the CPU of a batch of
// 1,000 small events. It answers false, and nothing else, for any batch
// that is not a valid array of 1 to MaxBatchEvents objects within
// MaxEventBytes each, and decodeBatch then finds the error the slow way.
func splitBatch(body []byte, limits Limits) ([]json.RawMessage, bool) {
	if !utf8.Valid(body) || !json.Valid(body) {
		return nil, false
	}
	// body is one valid JSON value, with white space around it at most.
	i := skipSpace(body, 0)
	if i == len(body) || body[i] != '[' {
		return nil, false
	}
	events := make([]json.RawMessage, 0, min(limits.MaxBatchEvents, 1024))
	i = skipSpace(body, i+1)
	if body[i] == ']' {
		return nil, false // empty: the decoder's message says so
	}
	for {
		start := i
		if body[start] != '{' || len(events) == limits.MaxBatchEvents {
			return nil, false
		}
		// The element ends where its object's braces balance; strings
		// are skipped whole (the body is valid, so they are well formed).
		depth := 0
	scan:
		for ; ; i++ {
			switch body[i] {
			case '"':
				for i++; body[i] != '"'; i++ {
					if body[i] == '\\' {
						i++
					}
				}
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					i++
					break scan
				}
			}
		}
		if int64(i-start) > limits.MaxEventBytes {
			return nil, false
		}
		events = append(events, json.RawMessage(body[start:i:i]))
		i = skipSpace(body, i)
		if body[i] == ']' {
			return events, true
		}
		i = skipSpace(body, i+1) // the comma
	}
}

// skipSpace returns the index of the first byte of b at or after i that is
// not JSON white space, or len(b).
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// span is where a batch element ends and how long it is. The decoder has
// checked the element's syntax by the time it hands an Unmarshaler the
// element's bytes, which it does from its own buffer, without a copy.
type span struct{ n int64 }

func (s *span) UnmarshalJSON(b []byte) error {
	s.n = int64(len(b))
	return nil
}

func jsonError(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "unexpected end of input"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	// Without HTML escaping: answers are read by programs and by people
	// with curl, not embedded in pages, and "<token>" reads better than
	// "\u003ctoken\u003e".
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// An error may quote the request (a path, a field): no browser should
	// read the answer as anything but JSON.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// adminBodyLimit is the largest body of the admin API's requests.
const adminBodyLimit = 64 << 10

// decodeInput reads a JSON object body of at most adminBodyLimit into v,
// refusing unknown fields by name.
func decodeInput(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r, adminBodyLimit, "a fixed limit")
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %s", jsonError(err))
	}
	if dec.More() {
		return badRequest("request body: unexpected data after the JSON object")
	}
	return nil
}

// respond is the handler of an operation that answers a value: the value in
// JSON with status, or the operation's error through writeError.
func respond[T any](log *slog.Logger, status int, op func(r *http.Request) (T, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := op(r)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, status, v)
	})
}

// respondTo is respond for an operation that takes a JSON body, decoded
// into an I by decodeInput.
func respondTo[I, T any](log *slog.Logger, status int, op func(r *http.Request, in *I) (T, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in I
		if err := decodeInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		v, err := op(r, &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, status, v)
	})
}
