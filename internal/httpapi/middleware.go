package httpapi

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime/debug"
	"strings"
)

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
				writeJSON(w, http.StatusInternalServerError, ErrorBody{Error: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

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
		writeJSON(w, http.StatusForbidden, ErrorBody{Error: "cross-site request refused: fanout's API changes nothing " +
			"for a page of another site (send it without a browser, or from fanout's own console)"})
	}))
	return cop.Handler(next)
}

// HostPolicy is the Host names the API and the console answer when no
// operator token is set. Without a token, anyone who can reach fanout may
// use it, which is safe only if "reach" means this machine: but a web page
// on a domain whose DNS answer its owner switches to 127.0.0.1 (DNS
// rebinding) is, for the browser, the same origin as fanout, and could
// create destinations and read their secrets. Such a request carries the
// attacker's name in Host, which is how it is told apart: fanout answers
// loopback names and addresses, the address it listens on (every address
// of this machine when it listens on all of them) and the host of
// --public-url, and refuses anything else with 421. An IP literal is never
// a rebinding (the page would have to be served from that address).
// /healthz, /readyz and /metrics answer any Host: probes and scrapers use
// pod addresses, and they hold no secret.
type HostPolicy struct {
	names map[string]bool     // lower case, without a trailing dot
	addrs map[netip.Addr]bool // unmapped, without zone
}

// NewHostPolicy returns the policy of a server listening on ln, started
// with --addr addr and --public-url publicURL (which may be empty).
func NewHostPolicy(ln net.Addr, addr, publicURL string) *HostPolicy {
	p := &HostPolicy{names: map[string]bool{}, addrs: map[netip.Addr]bool{}}
	if host, _, err := net.SplitHostPort(addr); err == nil && host != "" {
		if a, err := netip.ParseAddr(host); err == nil {
			p.addrs[a.Unmap().WithZone("")] = true
		} else {
			p.names[canonicalHost(host)] = true
		}
	}
	if ap, err := netip.ParseAddrPort(ln.String()); err == nil {
		a := ap.Addr().Unmap().WithZone("")
		if a.IsUnspecified() {
			// Listening on every address: each of this machine's.
			if ifAddrs, err := net.InterfaceAddrs(); err == nil {
				for _, ia := range ifAddrs {
					if pfx, err := netip.ParsePrefix(ia.String()); err == nil {
						p.addrs[pfx.Addr().Unmap().WithZone("")] = true
					}
				}
			}
		} else {
			p.addrs[a] = true
		}
	}
	if u, err := url.Parse(publicURL); err == nil && u.Hostname() != "" {
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			p.addrs[a.Unmap().WithZone("")] = true
		} else {
			p.names[canonicalHost(u.Hostname())] = true
		}
	}
	return p
}

// canonicalHost is a host name as compared: lower case, no trailing dot.
func canonicalHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// Allows reports whether a request with this Host header may be answered.
func (p *HostPolicy) Allows(hostHeader string) bool {
	host := hostHeader
	if h, _, err := net.SplitHostPort(hostHeader); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap().WithZone("")
		return a.IsLoopback() || p.addrs[a]
	}
	host = canonicalHost(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true // RFC 6761: these names are loopback, and no one else's
	}
	return p.names[host]
}

// checkHost answers 421 to a request whose Host the policy refuses, but for
// the probes. A nil policy (an operator token is set: the token, which a
// rebinding page does not have, is the check) lets every request through.
func checkHost(log *slog.Logger, p *HostPolicy, next http.Handler) http.Handler {
	if p == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" || p.Allows(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		writeError(w, r, log, &apiError{Status: http.StatusMisdirectedRequest, Message: fmt.Sprintf(
			"fanout has no API token, so it answers only requests addressed to this machine (localhost, its own "+
				"addresses) or to --public-url, and this one is for %q: reach fanout by one of those, set --public-url "+
				"to the address users reach it by, or set an API token (--api-token)", r.Host)})
	})
}
