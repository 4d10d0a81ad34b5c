package httpapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"

	"fanout/internal/service"
)

// The tenant portal's routes: the link an operator mints
// (POST /v1/tenants/{tenant}/portal), what the page draws itself with
// (GET /v1/portal), the tenant's event types, and the test-send of an
// example event to one destination. The page itself is
// internal/console/portal.

// handlePortalCreate mints a portal link: its answer is the only time the
// token in it is shown.
func handlePortalCreate(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.PortalInput
		if err := decodeOptionalInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		link, err := svc.CreatePortal(r.Context(), r.PathValue("tenant"), &in, listenBase(r))
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusCreated, link)
	})
}

// listenBase is the address fanout listens on, as the request reached it
// (the connection's local address: an address of every interface is the
// one the request came in on), for portal links without --public-url.
func listenBase(r *http.Request) string {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if tcp, ok := a.(*net.TCPAddr); ok {
			return "http://" + tcp.AddrPort().String()
		}
	}
	return "http://" + r.Host
}

func handlePortalInfo(log *slog.Logger, svc *service.Service) http.Handler {
	return respond(log, http.StatusOK, func(r *http.Request) (*service.PortalInfo, error) {
		return svc.PortalInfo(r.Context(), principalOf(r))
	})
}

// handleEventTypes answers the event types of the request's tenant.
func handleEventTypes(log *slog.Logger, svc *service.Service) http.Handler {
	return scoped(log, svc, http.StatusOK, func(r *http.Request, scope service.Scope) (map[string][]string, error) {
		types, err := svc.EventTypes(r.Context(), scope, tenantOf(r, scope))
		return map[string][]string{"types": types}, err
	})
}

// handleDestinationTest sends an example event to one destination (see
// service.TestSend for how it reaches that one alone).
func handleDestinationTest(log *slog.Logger, svc *service.Service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in service.TestEvent
		if err := decodeOptionalInput(w, r, &in); err != nil {
			writeError(w, r, log, err)
			return
		}
		scope, err := scopeOf(r, svc)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		sent, err := svc.TestSend(r.Context(), scope, r.PathValue("id"), &in)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, http.StatusAccepted, sent)
	})
}

// decodeOptionalInput is decodeInput for a body that may be left out.
func decodeOptionalInput(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	body, err := readBody(w, r, adminBodyLimit, "a fixed limit")
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
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
