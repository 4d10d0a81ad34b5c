// Package portal is the tenant portal's page: the console restricted to one
// tenant, for the operator's customers. Its files are embedded in the
// binary and served at /portal/{tenant}/{page key}/, open without a token (they hold
// no data: the page reads the token from its address's fragment, keeps it
// in the tab's session storage, and sends it with each API request). Like
// the console, it puts everything it shows in the page as text, and its
// Content-Security-Policy forbids inline scripts and every origin but
// fanout's own (and the operator's logo); unlike the console, a tenant's
// portal may be framed by the origins the operator lists for that tenant
// (its portal_frame_ancestors), none by default, when it is opened with
// the page key of a live link of that tenant (see
// service.PortalFrameAncestors); by no one otherwise.
package portal

import (
	"embed"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"fanout/internal/console"
)

//go:embed web
var files embed.FS

// IsPath reports whether a path is the portal's (open without a token).
func IsPath(path string) bool {
	return path == "/portal" || strings.HasPrefix(path, "/portal/")
}

// Policy is the portal's Content-Security-Policy: the console's, but that
// images may come from logoOrigin too (the operator's logo; "" for none),
// and that the page may be framed by ancestors (https origins, validated
// when the tenant was stored) or, without any, by no one.
func Policy(ancestors []string, logoOrigin string) string {
	img := "img-src 'self' data:"
	if logoOrigin != "" {
		img += " " + logoOrigin
	}
	frame := "'none'"
	if len(ancestors) > 0 {
		frame = strings.Join(ancestors, " ")
	}
	return "default-src 'none'; script-src 'self'; style-src 'self'; " + img + "; " +
		"connect-src 'self'; font-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'none'; " +
		"form-action 'self'; frame-ancestors " + frame
}

// Origin is the origin of an https URL (the logo's), or "".
func Origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return ""
	}
	return "https://" + strings.ToLower(u.Host)
}

// Mount mounts the portal at /portal/{tenant}/{page key}/, the path of a
// link (service.CreatePortal), and at /portal/{tenant}/, that of the links
// minted before page keys. ancestors says which origins may frame the page
// of tenant opened with key: it is asked for the page alone (not for its
// scripts and styles, which no one frames), and only when the path holds
// something shaped as a key (keyPrefix), so that the answer to a path
// without one reads nothing and is the same, headers and body, for every
// tenant id, existing or not. logoURL is the operator's logo ("" for none).
func Mount(mux *http.ServeMux, ancestors func(r *http.Request, tenant, key string) []string, keyPrefix, logoURL string) {
	web, err := fs.Sub(files, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	static := http.FileServerFS(web)
	logo := Origin(logoURL)
	shared := console.SharedScripts()
	mux.Handle("GET /portal/{tenant}/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The file is what follows /portal/{tenant}/ and the page key
		// if any (the same files for every tenant and key).
		// Split as escaped: an escaped slash in the tenant is not
		// taken for the end of the tenant's segment.
		rest := ""
		if parts := strings.SplitN(r.URL.EscapedPath(), "/", 4); len(parts) == 4 {
			rest = parts[3]
		}
		key, slash := "", true
		if first, after, found := strings.Cut(rest, "/"); strings.HasPrefix(first, keyPrefix) {
			key, rest, slash = first, after, found
		}
		var list []string
		if key != "" && rest == "" && slash {
			list = ancestors(r, r.PathValue("tenant"), key)
		}
		h := w.Header()
		h.Set("Content-Security-Policy", Policy(list, logo))
		if len(list) == 0 {
			h.Set("X-Frame-Options", "DENY")
		}
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cache-Control", "no-cache")
		if !slash {
			// A key without its slash (the browser keeps the address's
			// fragment across a redirect without one).
			http.Redirect(w, r, key+"/", http.StatusFound)
			return
		}
		if js, ok := shared[rest]; ok {
			// The console's own (see console.SharedScripts).
			h.Set("Content-Type", "text/javascript; charset=utf-8")
			_, _ = w.Write(js)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawPath = "/"+rest, ""
		static.ServeHTTP(w, r2)
	}))
	mux.Handle("GET /portal/{tenant}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Relative, so that a fragment in the address stays (browsers
		// keep it across a redirect without one).
		http.Redirect(w, r, url.PathEscape(r.PathValue("tenant"))+"/", http.StatusFound)
	}))
}
