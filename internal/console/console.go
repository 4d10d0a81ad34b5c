// Package console is fanout's web console: a page and its script, embedded
// in the binary, served at /console/ with the headers that keep them
// inert, and nothing else. It shows and steers fanout through the same JSON
// API as every client; it has no route of its own beyond its files, and
// the service knows nothing of it.
package console

import (
	"embed"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// The console: a page and its script, embedded in the binary, that show
// and steer fanout through the same JSON API as everyone (no second API,
// no build step). Everything it shows of an event or of a destination's
// answer is set as text (textContent), never parsed as HTML; the policy
// below forbids inline scripts and every origin but fanout's own, so that
// a payload that slipped through as markup would still run nothing.

//go:embed web
var files embed.FS

// SharedScripts are the console's scripts that the tenant portal serves
// too, by name: kinds.js (the forms of the destination kinds) and
// filters.js (the payload filter field and its test). One copy of each, so
// that the console and the portal never disagree on a kind's fields or on
// how a filter is sent and tried.
func SharedScripts() map[string][]byte {
	out := map[string][]byte{}
	for _, name := range []string{"kinds.js", "filters.js"} {
		b, err := files.ReadFile("web/" + name)
		if err != nil {
			panic(err) // the embedded tree is fixed at build time
		}
		out[name] = b
	}
	return out
}

// Policy is the console's Content-Security-Policy.
const Policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'none'; " +
	"form-action 'self'; frame-ancestors 'none'"

// IsPath reports whether a path is the console's (open without a token:
// its files hold no data).
func IsPath(path string) bool {
	return path == "/" || path == "/console" || strings.HasPrefix(path, "/console/")
}

// Mount mounts the console at /console/, and / sends there.
func Mount(mux *http.ServeMux) {
	web, err := fs.Sub(files, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	static := http.StripPrefix("/console/", http.FileServerFS(web))
	mux.Handle("GET /console/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", Policy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cache-Control", "no-cache")
		static.ServeHTTP(w, r)
	}))
	home := http.RedirectHandler("/console/", http.StatusFound)
	mux.Handle("GET /{$}", home)
	mux.Handle("GET /console", home)
}

// URL is the address to open the console at, for the start-up line: an
// address that listens on every interface is reached as localhost.
func URL(addr net.Addr) string {
	host, port := "localhost", ""
	if tcp, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(tcp.Port)
		if !tcp.IP.IsUnspecified() {
			host = tcp.IP.String()
		}
	}
	return "http://" + net.JoinHostPort(host, port) + "/console/"
}
