package portal

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"fanout/internal/console"
)

// TestMount_AsksOnlyForAKeyedPage: the frame ancestors are asked for the
// page opened with something shaped as a page key, and for nothing else:
// a path without one reads nothing, whatever its tenant, so that its
// answer (and its time) tells nothing of who is a tenant.
func TestMount_AsksOnlyForAKeyedPage(t *testing.T) {
	type ask struct{ tenant, key string }
	var asked []ask
	mux := http.NewServeMux()
	Mount(mux, func(_ *http.Request, tenant, key string) []string {
		asked = append(asked, ask{tenant, key})
		if tenant == "acme" && key == "pk_good" {
			return []string{"https://app.acme.example"}
		}
		return nil
	}, "pk_", "")
	for _, c := range []struct {
		path   string
		status int
		ask    *ask
		frame  string
	}{
		{"/portal/acme/", 200, nil, "'none'"},
		{"/portal/nobody/", 200, nil, "'none'"},
		{"/portal/acme/app.js", 200, nil, "'none'"},
		{"/portal/acme/kinds.js", 200, nil, "'none'"},
		{"/portal/acme/pk_good/", 200, &ask{"acme", "pk_good"}, "https://app.acme.example"},
		{"/portal/acme/pk_good/app.js", 200, nil, "'none'"},
		{"/portal/acme/pk_good/kinds.js", 200, nil, "'none'"},
		{"/portal/acme/pk_good", 302, nil, "'none'"},
		{"/portal/globex/pk_good/", 200, &ask{"globex", "pk_good"}, "'none'"},
		{"/portal/acme/pk_bad/", 200, &ask{"acme", "pk_bad"}, "'none'"},
	} {
		asked = nil
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", c.path, nil))
		if rec.Code != c.status {
			t.Fatalf("GET %s: %d, want %d", c.path, rec.Code, c.status)
		}
		if c.ask == nil && len(asked) != 0 || c.ask != nil && (len(asked) != 1 || asked[0] != *c.ask) {
			t.Fatalf("GET %s asked for the ancestors of %v, want %v", c.path, asked, c.ask)
		}
		h := rec.Header()
		if csp := h.Get("Content-Security-Policy"); !strings.HasSuffix(csp, "; frame-ancestors "+c.frame) ||
			(h.Get("X-Frame-Options") == "DENY") != (c.frame == "'none'") {
			t.Fatalf("GET %s: CSP %q, X-Frame-Options %q, want frame-ancestors %s", c.path, csp, h.Get("X-Frame-Options"), c.frame)
		}
	}
	if rec := httptest.NewRecorder(); true {
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/portal/acme/pk_good", nil))
		if loc := rec.Header().Get("Location"); loc != "/portal/acme/pk_good/" {
			t.Fatalf("a key without its slash is sent to %q, want /portal/acme/pk_good/", loc)
		}
	}
}

// TestMount_SharedScripts: the portal serves the console's kinds.js and
// filters.js, byte for byte, with a page key in its path or without, and
// its page loads them.
func TestMount_SharedScripts(t *testing.T) {
	mux := http.NewServeMux()
	Mount(mux, func(*http.Request, string, string) []string { return nil }, "pk_", "")
	page := httptest.NewRecorder()
	mux.ServeHTTP(page, httptest.NewRequest("GET", "/portal/acme/", nil))
	shared := console.SharedScripts()
	for _, name := range []string{"kinds.js", "filters.js"} {
		if len(shared[name]) == 0 {
			t.Fatalf("console.SharedScripts has no %s", name)
		}
		if !strings.Contains(page.Body.String(), `<script src="`+name+`" defer></script>`) {
			t.Fatalf("the portal's page does not load %s", name)
		}
		for _, path := range []string{"/portal/acme/" + name, "/portal/acme/pk_key/" + name} {
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
			if rec.Code != 200 || rec.Body.String() != string(shared[name]) ||
				!strings.HasPrefix(rec.Header().Get("Content-Type"), "text/javascript") || rec.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("GET %s: %d, %d bytes as %q, want the console's %d bytes", path, rec.Code, rec.Body.Len(), rec.Header().Get("Content-Type"), len(shared[name]))
			}
		}
	}
}
