package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestConsole_BlockedKeys: an ordered destination's panel lists its
// blocked keys (the key, escaped, its head event, attempts, last error,
// what waits behind it), and Skip dead-letters the head so that the key
// moves on.
func TestConsole_BlockedKeys(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the console's browser tests did not run")
	}
	t.Parallel()
	var got atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 4096)
		n, _ := r.Body.Read(buf)
		if strings.Contains(string(buf[:n]), `"n":0`) {
			http.Error(w, "<b>busy</b>", http.StatusServiceUnavailable)
			return
		}
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(recv.Close)
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--retry-initial", "20ms", "--retry-max", "100ms"}, nil)
	var d struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL, "description": "ordered",
		"ordering": map[string]string{"key": "who"}}, &d); code != 201 {
		t.Fatalf("create: %d", code)
	}
	const key = `<img src=x onerror=alert(1)>`
	var ids []string
	for n := range 3 {
		var out struct{ ID string }
		if code := call(t, "POST", base+"/v1/event", map[string]any{"type": "t", "who": key, "n": n}, &out); code != 202 {
			t.Fatalf("event: %d", code)
		}
		ids = append(ids, out.ID)
	}
	b := newBrowser(t, path)
	b.do("open the console", chromedp.Navigate(base+"/#/destinations"))
	b.wait("the blocked key listed", `(() => { const r = document.querySelector(".blocked-keys tr[data-key]");
		return !!r && r.innerText.includes("503") && r.innerText.includes("`+ids[0]+`") })()`)
	if text := js[string](b, `document.querySelector(".blocked-keys tr[data-key] td").textContent`); text != `"`+key+`"` {
		t.Errorf("key shown as %q, want %q as text", text, `"`+key+`"`)
	}
	if n := js[int](b, `document.querySelectorAll(".blocked-keys img").length`); n != 0 {
		t.Errorf("the key was rendered as HTML: %d img elements", n)
	}
	if q := js[string](b, `document.querySelector(".blocked-keys tr[data-key]").children[5].textContent`); q != "2" {
		t.Errorf("waiting behind the head: %q, want 2", q)
	}
	// A skip while an attempt is being sent is refused (a toast): click
	// again, as the operator would.
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "409") }
	b.mu.Unlock()
	none := `(() => { const x = document.querySelector(".blocked-keys"); return !!x && x.innerText.includes("None") })()`
	for i := 0; i < 20 && !js[bool](b, none); i++ {
		b.exec(`const s = document.querySelector(".blocked-keys button.skip:not([disabled])"); if (s) s.click()`)
		time.Sleep(500 * time.Millisecond)
	}
	b.wait("no blocked key left", none)
	eventually(t, "the key moved on", 10*time.Second, func() bool { return got.Load() == 2 })
	b.check("blocked keys")
}
