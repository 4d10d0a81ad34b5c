package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
)

// requireToken answers 401 to a request that does not carry one of tokens
// as its bearer token, but for /healthz, /readyz and /metrics, left open to
// probes and scrapers, and the console's files, which hold no data (the
// console asks for a token and sends it with each of its API requests).
// Several tokens let an operator rotate one without downtime.
// They are compared as SHA-256 digests in constant time, so that timing
// tells neither a token's bytes nor its length.
func requireToken(log *slog.Logger, tokens []string, next http.Handler) http.Handler {
	if len(tokens) == 0 {
		return next
	}
	sums := make([][sha256.Size]byte, len(tokens))
	for i, t := range tokens {
		sums[i] = sha256.Sum256([]byte(t))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" || isConsole(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized,
				Message: "this API needs a token: send the header Authorization: Bearer <token>, with one of fanout's --api-token"})
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		match := 0
		for i := range sums {
			match |= subtle.ConstantTimeCompare(sum[:], sums[i][:])
		}
		if match != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout", error="invalid_token"`)
			writeError(w, r, log, &apiError{Status: http.StatusUnauthorized,
				Message: "the bearer token is not one of fanout's --api-token"})
			return
		}
		next.ServeHTTP(w, r)
	})
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

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// refuseCrossSite answers 403 to a state-changing request (POST, PATCH,
// DELETE...) that a browser sends from another site: without it, a page
// anywhere could have the browser of someone who reaches fanout (on
// localhost, say, without tokens) post a form that creates a destination,
// since the API takes a body whatever its Content-Type. It is net/http's
// CrossOriginProtection: browsers say where a request comes from
// (Sec-Fetch-Site, Origin); clients that are not browsers send neither and
// pass, as do same-origin requests, the console's among them.
func refuseCrossSite(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusForbidden, errorBody{Error: "cross-site request refused: fanout's API changes nothing " +
			"for a page of another site (send it without a browser, or from fanout's own console)"})
	}))
	return cop.Handler(next)
}
