package webhook

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// recordingProxy is an HTTP proxy for tests: it answers every request with
// 204 and records the URL it was asked to fetch.
type recordingProxy struct {
	url  *url.URL
	mu   sync.Mutex
	urls []string
}

func newRecordingProxy(t *testing.T) *recordingProxy {
	p := &recordingProxy{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.urls = append(p.urls, r.URL.String())
		p.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	p.url, _ = url.Parse(srv.URL)
	return p
}

// reset forgets what the proxy fetched so far.
func (p *recordingProxy) reset() {
	p.mu.Lock()
	p.urls = nil
	p.mu.Unlock()
}

// fetched returns the URLs the proxy was asked to fetch.
func (p *recordingProxy) fetched() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.urls)
}

// TestSend_ThroughProxy: with a proxy, the guard checks the destination's
// addresses before the proxy is handed the request, and the proxy itself,
// on loopback, is reached although the guard blocks loopback.
func TestSend_ThroughProxy(t *testing.T) {
	t.Parallel()
	proxy := newRecordingProxy(t)
	proxyURL := proxy.url

	tests := []struct {
		name    string
		allow   []string
		url     string
		want    dispatch.Status
		blocked string // the BlockedError's reason, if refused
	}{
		{"Public", nil, "http://93.184.216.34/hook", dispatch.StatusOK, ""}, // only the proxy answers it
		{"MetadataLiteral", nil, "http://169.254.169.254/latest/meta-data/", dispatch.StatusPermanent, "link-local"},
		{"PrivateLiteral", nil, "http://10.0.0.5:8080/x", dispatch.StatusPermanent, "private"},
		{"IPv6Loopback", nil, "http://[::1]:9/x", dispatch.StatusPermanent, "loopback"},
		{"LoopbackByName", nil, "http://localhost:9/x", dispatch.StatusPermanent, "loopback"},
		{"PrivateAllowed", []string{"10.0.0.0/8"}, "http://10.0.0.5:8080/x", dispatch.StatusOK, ""},
		{"UnresolvableName", nil, "http://no-such-host.invalid/x", dispatch.StatusDNS, ""},
		// Everything allowed: the policy is the proxy's, names are not
		// resolved here (only the proxy may be able to).
		{"AllAllowed", []string{"0.0.0.0/0", "::/0"}, "http://no-such-host.invalid/x", dispatch.StatusOK, ""},
	}
	// The subtests run one after the other: each resets and reads what
	// the one proxy fetched. The test runs in parallel with the others.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proxy.reset()
			nets, err := ParseNetworks(tc.allow)
			if err != nil {
				t.Fatal(err)
			}
			c := NewClient(Config{Timeout: 2 * time.Second, Guard: NewGuard(nets), Proxy: http.ProxyURL(proxyURL)})
			defer c.Close()
			_, err = c.Send(context.Background(), &Request{URL: tc.url, ID: "x", Body: []byte(`{}`)})
			if got := dispatch.ErrorStatus(err); got != tc.want {
				t.Fatalf("Send err=%v (%v), want %v", err, got, tc.want)
			}
			var be *BlockedError
			if tc.blocked != "" && (!errors.As(err, &be) || be.Reason != tc.blocked) {
				t.Fatalf("Send err=%v, want blocked as %s", err, tc.blocked)
			}
			fetched := proxy.fetched()
			switch {
			case tc.want == dispatch.StatusOK && (len(fetched) != 1 || fetched[0] != tc.url):
				t.Fatalf("the proxy fetched %v, want [%s]", fetched, tc.url)
			case tc.want != dispatch.StatusOK && len(fetched) != 0:
				t.Fatalf("the proxy was handed a refused destination: %v", fetched)
			}
		})
	}
}

func TestProxyFunc(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	req := func(u string) *http.Request {
		r, _ := http.NewRequest("POST", u, nil)
		return r
	}
	tests := []struct {
		name     string
		explicit string
		env      map[string]string
		url      string
		want     string // the proxy chosen, "" for none
		wantErr  bool
	}{
		{"None", "", nil, "https://example.com/", "", false},
		{"Explicit", "http://proxy.internal:3128", nil, "https://example.com/", "http://proxy.internal:3128", false},
		{"ExplicitEvenForLocalhost", "http://proxy.internal:3128", nil, "http://localhost/", "http://proxy.internal:3128", false},
		{"ExplicitNotAURL", "proxy", nil, "", "", true},
		{"ExplicitFTP", "ftp://proxy:21", nil, "", "", true},
		{"EnvHTTPS", "", map[string]string{"HTTPS_PROXY": "http://p:1"}, "https://example.com/", "http://p:1", false},
		{"EnvHTTPSNotForHTTP", "", map[string]string{"HTTPS_PROXY": "http://p:1"}, "http://example.com/", "", false},
		{"EnvLowerCase", "", map[string]string{"http_proxy": "http://p:2"}, "http://example.com/", "http://p:2", false},
		{"EnvNoProxy", "", map[string]string{"HTTP_PROXY": "http://p:2", "NO_PROXY": "example.com"}, "http://example.com/", "", false},
		{"EnvNotForLocalhost", "", map[string]string{"HTTP_PROXY": "http://p:2"}, "http://localhost/", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, _, err := ProxyFunc(tc.explicit, env(tc.env))
			if (err != nil) != tc.wantErr {
				t.Fatalf("ProxyFunc err=%v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tc.explicit) {
					t.Fatalf("error %q does not quote the value", err)
				}
				return
			}
			got := ""
			if f != nil {
				u, err := f(req(tc.url))
				if err != nil {
					t.Fatal(err)
				}
				if u != nil {
					got = u.String()
				}
			}
			if got != tc.want {
				t.Fatalf("proxy for %s = %q, want %q", tc.url, got, tc.want)
			}
		})
	}
}
