package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fanout/internal/console"
	"fanout/internal/console/portal"
	"fanout/internal/service"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
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
	// MaxInflightBytes bounds the request bodies held in memory across
	// requests (see bodyBudget); 0 bounds nothing.
	MaxInflightBytes int64
	// MetricsToken, when set, is the bearer token /metrics needs (it is
	// open otherwise, to scrapers).
	MetricsToken string
}

// route is one entry of the API.
type route struct {
	Pattern string // "METHOD /path"
	// right is what the route needs of the request's principal; "" is
	// open to whoever reached it (the probes, the metrics).
	right   service.Right
	handler http.Handler
	// tenanted routes are mounted under /v1/tenants/{tenant} too, where
	// they act on that tenant only.
	tenanted bool
}

// Right is what the route needs of a request's principal.
func (rt route) Right() service.Right { return rt.right }

// Routes is the whole API surface.
func Routes(log *slog.Logger, svc *service.Service, limits Limits) []route {
	rs := []route{
		{"POST /v1/event", service.RightIngest, handleEventPost(log, svc, limits), true},
		{"POST /v1/batch", service.RightIngest, handleBatchPost(log, svc, limits), true},
		{"GET /v1/events", service.RightRead, handleEventList(log, svc), true},
		{"GET /v1/events/{id}", service.RightRead, handleEventGet(log, svc), true},
		{"POST /v1/destinations", service.RightManage, handleDestinationCreate(log, svc), true},
		{"GET /v1/destinations", service.RightRead, handleDestinationList(log, svc), true},
		{"GET /v1/destinations/{id}", service.RightRead, handleDestinationGet(log, svc), true},
		{"PATCH /v1/destinations/{id}", service.RightManage, handleDestinationPatch(log, svc), true},
		{"DELETE /v1/destinations/{id}", service.RightManage, handleDestinationDelete(log, svc), true},
		{"POST /v1/destinations/{id}/resume", service.RightManage, handleDestinationResume(log, svc), true},
		{"POST /v1/destinations/{id}/rotate-secret", service.RightManage, handleDestinationRotate(log, svc), true},
		{"GET /v1/destinations/{id}/secret", service.RightViewSecret, handleDestinationSecret(log, svc), true},
		{"POST /v1/destinations/{id}/replay", service.RightManage, handleReplayCreate(log, svc), true},
		{"POST /v1/match", service.RightRead, handleMatchTest(log, svc), true},
		{"POST /v1/transform", service.RightTransform, handleTransformTest(log, svc), true},
		{"GET /v1/replays", service.RightRead, handleReplayList(log, svc), true},
		{"GET /v1/replays/{id}", service.RightRead, handleReplayGet(log, svc), true},
		{"GET /v1/deliveries", service.RightRead, handleDeliveryList(log, svc), true},
		{"GET /v1/deliveries/{id}", service.RightRead, handleDeliveryGet(log, svc), true},
		{"POST /v1/deliveries/{id}/retry", service.RightManage, handleDeliveryRetry(log, svc), true},
		{"POST /v1/deliveries/retry", service.RightManage, handleDeliveryRetryMany(log, svc), true},
		{"POST /v1/deliveries/{id}/skip", service.RightManage, handleDeliverySkip(log, svc), true},
		{"GET /v1/destinations/{id}/ordered-keys", service.RightRead, handleOrderedKeys(log, svc), true},
		{"GET /v1/stats", service.RightRead, handleStats(log, svc), false},
		{"GET /v1/tenants", service.RightOperator, handleTenantList(log, svc), false},
		{"GET /v1/tenants/{tenant}", service.RightOperator, handleTenantGet(log, svc), false},
		{"PUT /v1/tenants/{tenant}", service.RightOperator, handleTenantPut(log, svc), false},
		{"DELETE /v1/tenants/{tenant}", service.RightOperator, handleTenantDelete(log, svc), false},
		{"POST /v1/tokens", service.RightOperator, handleTokenCreate(log, svc), false},
		{"GET /v1/tokens", service.RightOperator, handleTokenList(log, svc), false},
		{"GET /v1/tokens/{id}", service.RightOperator, handleTokenGet(log, svc), false},
		{"DELETE /v1/tokens/{id}", service.RightOperator, handleTokenDelete(log, svc), false},
		{"POST /v1/tenants/{tenant}/portal", service.RightOperator, handlePortalCreate(log, svc), false},
		{"GET /v1/portal", service.RightRead, handlePortalInfo(log, svc), false},
		{"GET /v1/event-types", service.RightRead, handleEventTypes(log, svc), true},
		{"POST /v1/destinations/{id}/test", service.RightManage, handleDestinationTest(log, svc), true},
		{"GET /healthz", "", handleHealthz(), false},
		{"GET /readyz", "", handleReadyz(svc), false},
		{"GET /metrics", "", metricsAuth(log, limits.MetricsToken, svc.MetricsHandler(log)), false},
	}
	for _, rt := range rs {
		if rt.tenanted {
			method, path, _ := strings.Cut(rt.Pattern, " ")
			nested := rt
			nested.Pattern, nested.tenanted = method+" /v1/tenants/{tenant}"+strings.TrimPrefix(path, "/v1"), false
			rs = append(rs, nested)
		}
	}
	return rs
}

// NewHandler returns the HTTP API and the console; with tokens, the API
// only for requests that carry one of them, and without, only for requests
// addressed to a host that hosts allows (see hostPolicy; nil allows all).
// A browser's cross-site request that would change something is refused
// (see refuseCrossSite).
func NewHandler(log *slog.Logger, svc *service.Service, limits Limits, tokens []string, hosts *HostPolicy) http.Handler {
	rs := Routes(log, svc, limits)
	patterns := make([]string, len(rs))
	for i, rt := range rs {
		patterns[i] = rt.Pattern
	}
	svc.TrackRoutes(patterns)
	mux := http.NewServeMux()
	console.Mount(mux)
	frameAncestors := func(r *http.Request, tenant, key string) []string {
		return svc.PortalFrameAncestors(r.Context(), tenant, key)
	}
	portal.Mount(mux, frameAncestors, service.PortalPageKeyPrefix, svc.PortalBranding().LogoURL)
	addRoutes(log, newAuthenticator(svc, tokens), mux, rs)
	bodies := boundBodies(newBodyBudget(limits.MaxInflightBytes, limits.MaxEventBytes, bodyWait), mux)
	if len(tokens) > 0 {
		hosts = nil // the token is the check
	}
	return svc.InstrumentHTTP(recoverPanics(log, checkHost(log, hosts, refuseCrossSite(requireBearer(log, tokens, bodies)))))
}

// addRoutes mounts the routes, and answers in JSON, like every other
// answer, 405 naming the allowed methods on a known path and 404 elsewhere.
// The paths without their methods go on a mux of their own, consulted only
// for what no route took: on the main mux they would clash with the routes
// ("/v1/deliveries/retry" against "GET /v1/deliveries/{id}").
func addRoutes(log *slog.Logger, auth *authenticator, mux *http.ServeMux, rs []route) {
	methods := map[string][]string{}
	var paths []string
	for _, rt := range rs {
		mux.Handle(rt.Pattern, guard(log, auth, rt.right, rt.handler))
		method, path, _ := strings.Cut(rt.Pattern, " ")
		if _, ok := methods[path]; !ok {
			paths = append(paths, path)
		}
		methods[path] = append(methods[path], method)
	}
	known := http.NewServeMux()
	for _, path := range paths {
		known.Handle(path, methodNotAllowed(strings.Join(methods[path], ", ")))
	}
	notFound := handleNotFound()
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := known.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		notFound.ServeHTTP(w, r)
	}))
}

// handleEventPost accepts one event: a JSON object, or with raw=true any
// body, kept as it is with its Content-Type (api_raw.go).
func handleEventPost(log *slog.Logger, svc *service.Service, limits Limits) http.Handler {
	saveJSON := saveEvents(svc, decodeEvent)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		save := saveJSON
		if r.URL.RawQuery != "" { // a JSON event's request has no query but a rare one: its path stays as it was
			raw, err := rawRequested(r)
			if err != nil {
				writeError(w, r, log, err)
				return
			}
			if raw != nil {
				save = saveRaw(svc, raw)
			}
		}
		ids, err := ingest(w, r, svc, limits, limits.MaxEventBytes, "--max-event-bytes", save)
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
func handleBatchPost(log *slog.Logger, svc *service.Service, limits Limits) http.Handler {
	type response struct {
		IDs []string `json:"ids"`
	}
	save := saveEvents(svc, func(body []byte) ([]json.RawMessage, error) { return decodeBatch(body, limits) })
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" && r.URL.Query().Has("raw") {
			writeError(w, r, log, badRequest("a batch is a JSON array of JSON events: send a raw event (raw=true) alone, to POST /v1/event"))
			return
		}
		ids, err := ingest(w, r, svc, limits, limits.MaxBatchBytes, "--max-batch-bytes", save)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		svc.BatchAccepted(len(ids))
		writeJSON(w, http.StatusAccepted, response{IDs: ids})
	})
}

// saver stores the events of a request's body under ctx, and returns their ids.
type saver func(ctx context.Context, scope service.Scope, tenant string, body []byte, key string) ([]string, error)

// saveEvents is the saver of JSON events: decode's, through svc.Ingest.
func saveEvents(svc *service.Service, decode func([]byte) ([]json.RawMessage, error)) saver {
	return func(ctx context.Context, scope service.Scope, tenant string, body []byte, key string) ([]string, error) {
		events, err := decode(body)
		if err != nil {
			return nil, err
		}
		return svc.Ingest(ctx, scope, tenant, events, key)
	}
}

// ingest reads a request's body, at most limit bytes (flag sets it),
// decodes its events and stores them under the ingest timeout. A client
// that hangs up does not cancel a commit under way: its events may be
// stored, which is the at-least-once side of the bargain, never the lossy
// one.
func ingest(w http.ResponseWriter, r *http.Request, svc *service.Service, limits Limits, limit int64, flag string,
	save saver) ([]string, error) {
	key, err := idempotencyKey(r)
	if err != nil {
		return nil, err
	}
	scope, err := scopeOf(r, svc)
	if err != nil {
		return nil, err
	}
	tenant := tenantOf(r, scope)
	// The tenant's turn, before its body costs anything (fairgate.go); a
	// client that gives up meanwhile gives its turn up.
	leave, err := svc.EnterIngest(r.Context(), limits.IngestTimeout, scope, tenant, r.ContentLength)
	if err != nil {
		return nil, err
	}
	defer leave()
	body, err := readBody(w, r, limit, flag)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), limits.IngestTimeout)
	defer cancel()
	return save(ctx, scope, tenant, body, key)
}

// decodeEvent checks a body of one event and returns the event: the JSON
// value, byte for byte; white space around it is not part of it (and a batch
// element has none).
func decodeEvent(body []byte) ([]json.RawMessage, error) {
	if err := ValidateEvent(body); err != nil {
		return nil, badRequest("request body: %v", err)
	}
	return []json.RawMessage{bytes.Trim(body, " \t\r\n")}, nil
}

// idempotencyKey returns the request's Idempotency-Key, checked.
func idempotencyKey(r *http.Request) (string, error) {
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 255 || strings.ContainsFunc(key, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
		return "", badRequest("Idempotency-Key must be up to 255 printable ASCII characters without spaces")
	}
	return key, nil
}

// handleReadyz answers 200 when the process is ready for traffic, 503 with
// the reason otherwise.
func handleReadyz(svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := svc.Ready(r.Context())
		w.Header().Set("Cache-Control", "no-store")
		status := http.StatusOK
		if !v.Ready {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, v)
	})
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeJSON(w, http.StatusMethodNotAllowed, ErrorBody{
			Error: fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, allow),
		})
	})
}

func handleNotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, ErrorBody{
			Error: fmt.Sprintf("no route for %s %s; the API is described in openapi.yaml", r.Method, r.URL.Path),
		})
	})
}
