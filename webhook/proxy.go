package webhook

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpproxy"

	"fanout/dispatch"
)

// ProxyFunc returns how deliveries choose their proxy: through explicit, when
// it names one, for every destination; otherwise as HTTPS_PROXY, HTTP_PROXY
// and NO_PROXY (or their lower-case forms) in getenv say, which never proxy
// a request to localhost. It returns nil when no proxy is configured, and
// describes the choice for the start-up log, without credentials.
func ProxyFunc(explicit string, getenv func(string) string) (func(*http.Request) (*url.URL, error), string, error) {
	if explicit != "" {
		u, err := url.Parse(explicit)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "socks5") {
			return nil, "", fmt.Errorf("proxy %q must be a URL such as http://proxy.internal:3128 (http, https or socks5)", explicit)
		}
		return http.ProxyURL(u), u.Redacted(), nil
	}
	env := func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return getenv(strings.ToLower(name))
	}
	cfg := &httpproxy.Config{HTTPProxy: env("HTTP_PROXY"), HTTPSProxy: env("HTTPS_PROXY"), NoProxy: env("NO_PROXY")}
	if cfg.HTTPProxy == "" && cfg.HTTPSProxy == "" {
		return nil, "", nil
	}
	f := cfg.ProxyFunc()
	describe := "from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY)"
	return func(r *http.Request) (*url.URL, error) { return f(r.URL) }, describe, nil
}

// proxyRoute is the proxy a request goes through, in its context: the
// transport reads it to proxy the request, the dialer to know the one
// address it may dial without the guard.
type proxyRoute struct {
	url  *url.URL
	addr string // host:port, as the transport dials it
}

type proxyKey struct{}

func proxyOf(ctx context.Context) *proxyRoute {
	p, _ := ctx.Value(proxyKey{}).(*proxyRoute)
	return p
}

// route decides whether a request to u goes through a proxy, and returns
// the proxy, or nil to send it directly. If it does, the guard checks the
// destination's addresses now, since the connection fanout dials is the
// proxy's.
func (c *Client) route(ctx context.Context, u *url.URL) (*proxyRoute, error) {
	pu, err := c.proxy(&http.Request{Method: http.MethodPost, URL: u, Host: u.Host})
	if err != nil {
		return nil, fmt.Errorf("%w: choose the proxy: %v", dispatch.ErrPermanent, err)
	}
	if pu == nil {
		return nil, nil
	}
	if c.guard != nil {
		if err := c.guard.CheckHost(ctx, u.Hostname()); err != nil {
			return nil, err
		}
	}
	port := pu.Port()
	if port == "" {
		port = map[string]string{"https": "443", "socks5": "1080", "socks5h": "1080"}[pu.Scheme]
		if port == "" {
			port = "80"
		}
	}
	return &proxyRoute{url: pu, addr: net.JoinHostPort(pu.Hostname(), port)}, nil
}
