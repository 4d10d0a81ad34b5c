package app

import (
	"context"
	"fanout/internal/service"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// forwardProxy is an HTTP proxy for tests: it answers every request it is
// handed with 204 and records the URL it was asked to fetch.
type forwardProxy struct {
	*httptest.Server
	mu   sync.Mutex
	urls []string
}

func newForwardProxy(t testing.TB) *forwardProxy {
	p := &forwardProxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.urls = append(p.urls, r.URL.String())
		p.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *forwardProxy) fetched() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.urls...)
}

// fakeResolver answers names from a map, as a DNS server would: a test
// can have a name resolve to a private address without the network.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestRun_SSRFGuard runs fanout as built by run, without --allow-network:
// a destination whose name resolves to a loopback address is refused
// whether deliveries go directly or through a proxy (named by --proxy or
// by HTTP_PROXY), and the proxy never receives the refused request; a
// public destination goes through the proxy. The name is answered by a
// test resolver, not "localhost", which Go's environment proxy never
// proxies: with it, ProxyEnv went direct and tested the dialer's check
// instead of the proxy path's.
func TestRun_SSRFGuard(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		proxy string // "flag", "env" or ""
	}{
		{"Direct", ""},
		{"ProxyFlag", "flag"},
		{"ProxyEnv", "env"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := newReceiver(t)
			proxy := newForwardProxy(t)
			args := []string{"--data", t.TempDir(), "--retry-initial", "20ms", "--retry-max", "50ms"}
			env := map[string]string{}
			switch tc.proxy {
			case "flag":
				args = append(args, "--proxy", proxy.URL)
			case "env":
				env["HTTP_PROXY"], env["HTTPS_PROXY"] = proxy.URL, proxy.URL
			}
			const name = "internal.fanout-test"
			resolver := fakeResolver{name: {netip.MustParseAddr("127.0.0.1")}}
			base := startAppWith(t, appOptions{args: args, env: env, resolver: resolver}).URL

			// A name, not an address: a literal loopback URL is refused
			// when the destination is created.
			internal := strings.Replace(sink.URL, "127.0.0.1", name, 1) + "/internal"
			var dInternal, dPublic struct{ ID string }
			if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": internal}, &dInternal); code != 201 {
				t.Fatalf("create %s: %d", internal, code)
			}
			const public = "http://93.184.216.34/hook" // a public address: only the proxy answers it
			if tc.proxy != "" {
				if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": public}, &dPublic); code != 201 {
					t.Fatalf("create %s: %d", public, code)
				}
			}
			var ev struct{ ID string }
			if code := call(t, "POST", base+"/v1/event", `{"type":"probe"}`, &ev); code != 202 {
				t.Fatalf("ingest: %d", code)
			}
			var dead struct{ Deliveries []service.DeliveryView }
			eventually(t, "the refused delivery is dead-lettered", 10*time.Second, func() bool {
				call(t, "GET", base+"/v1/deliveries?state=failed&destination="+dInternal.ID, nil, &dead)
				return len(dead.Deliveries) == 1
			})
			if msg := dead.Deliveries[0].LastError; !strings.Contains(msg, "loopback") || !strings.Contains(msg, "--allow-network") {
				t.Fatalf("refusal %q does not name the loopback address and --allow-network", msg)
			}
			if n := sink.deliveries(ev.ID); n != 0 {
				t.Fatalf("the loopback destination received %d deliveries", n)
			}
			if tc.proxy != "" {
				eventually(t, "the public destination's delivery through the proxy", 10*time.Second, func() bool {
					var e service.EventView
					call(t, "GET", base+"/v1/events/"+ev.ID, nil, &e)
					return e.State == "failed" || e.State == "delivered" // final: one failed, one delivered
				})
			}
			got := proxy.fetched()
			for _, u := range got {
				if strings.Contains(u, name) || strings.Contains(u, "127.0.0.1") {
					t.Fatalf("the proxy was handed the refused destination: %v", got)
				}
			}
			if tc.proxy != "" && (len(got) != 1 || got[0] != public) {
				t.Fatalf("the proxy fetched %v, want exactly [%s]", got, public)
			}
			if tc.proxy == "" && len(got) != 0 {
				t.Fatalf("the proxy was used without being configured: %v", got)
			}
		})
	}
}
