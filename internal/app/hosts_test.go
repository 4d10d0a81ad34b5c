package app

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRun_DNSRebinding is the attack a security review made on fanout as
// shipped (no token): a page on a domain that now resolves to 127.0.0.1 is,
// for the browser, fanout's own origin, so its requests carry that domain
// in Host, its Origin, and Sec-Fetch-Site: same-origin. fanout refuses them
// all with 421 (nothing is created, no secret is read), but for the
// probes, which answer any Host; requests addressed to localhost, to
// fanout's address or to --public-url's host are answered, and with an
// API token the token is the check.
func TestRun_DNSRebinding(t *testing.T) {
	t.Parallel()
	const evil = "rebind.attacker.example"
	tests := []struct {
		name  string
		args  []string
		host  string // "" is the address fanout listens on
		token string
		// want is the status of each request, by path, in the order of requests below.
		wantAPI, wantProbes int
	}{
		{"Rebinding", nil, evil, "", 421, 200},
		{"ListenAddress", nil, "", "", 200, 200},
		{"Localhost", nil, "localhost", "", 200, 200},
		{"PublicURL", []string{"--public-url", "https://fanout.example.com"}, "fanout.example.com", "", 200, 200},
		{"RebindingWithPublicURL", []string{"--public-url", "https://fanout.example.com"}, evil, "", 421, 200},
		{"RebindingWithToken", []string{"--api-token", "tok_0123456789abcdef"}, evil, "tok_0123456789abcdef", 200, 200},
		{"RebindingWithoutTheToken", []string{"--api-token", "tok_0123456789abcdef"}, evil, "", 401, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"--addr", "127.0.0.1:0", "--data", t.TempDir()}, tc.args...)
			base, stop := startRunArgs(t, args, nil)
			t.Cleanup(func() { _ = stop() })
			port := base[strings.LastIndex(base, ":")+1:]
			host := tc.host
			if host == "" {
				host = strings.TrimPrefix(base, "http://")
			} else {
				host += ":" + port
			}
			do := func(method, path, body string) (int, string) {
				req, err := http.NewRequest(method, base+path, strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				req.Host = host
				req.Header.Set("Origin", "http://"+host)
				req.Header.Set("Sec-Fetch-Site", "same-origin")
				req.Header.Set("Content-Type", "application/json")
				if tc.token != "" {
					req.Header.Set("Authorization", "Bearer "+tc.token)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			api := []struct{ method, path, body string }{
				{"GET", "/v1/destinations", ""},
				{"POST", "/v1/destinations", `{"url":"https://example.com/hook"}`},
				{"POST", "/v1/event", `{"type":"t"}`},
				{"GET", "/console/", ""},
				{"GET", "/v1/nothing", ""},
			}
			for _, r := range api {
				code, body := do(r.method, r.path, r.body)
				want := tc.wantAPI
				if want == 200 {
					switch {
					case r.method == "POST" && r.path == "/v1/destinations":
						want = 201
					case r.method == "POST":
						want = 202
					case r.path == "/v1/nothing":
						want = 404
					}
				}
				if want == 401 && r.path == "/console/" {
					want = 200 // the console's files hold no data: it asks for the token
				}
				if code != want {
					t.Errorf("%s %s with Host %s: %d %s, want %d", r.method, r.path, host, code, body, want)
				}
				if want == 421 && (!strings.Contains(body, "--public-url") || !strings.Contains(body, evil)) {
					t.Errorf("%s %s: the refusal %s does not name the Host and --public-url", r.method, r.path, body)
				}
			}
			for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
				if code, body := do("GET", path, ""); code != tc.wantProbes {
					t.Errorf("GET %s with Host %s: %d %.200s, want %d", path, host, code, body, tc.wantProbes)
				}
			}
			if tc.wantAPI == 421 {
				// Nothing was created: asked the right way, the list is empty.
				req, _ := http.NewRequest("GET", base+"/v1/destinations", nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || strings.Contains(string(b), "example.com/hook") {
					t.Errorf("after the refused requests, GET /v1/destinations: %d %s, want 200 and no destination", resp.StatusCode, b)
				}
			}
		})
	}
}
