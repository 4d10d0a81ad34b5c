package app

import (
	"context"
	"encoding/json"
	"fanout/destination"
	"fanout/internal/service"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// The console in a real browser: headless Chromium (Debian's chromium)
// driven by chromedp against run() on a free port. Without a browser the
// test is skipped, and make test lists it with the reason.
//
// FANOUT_CONSOLE_SCREENSHOTS=$PWD/docs/console (from the module root) writes the screenshots the README
// shows; without it they go to the test's temporary directory.

// browserPath finds a Chromium, or "".
func browserPath() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser is one headless Chromium tab and what it reported.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	problems []string // console errors, exceptions, CSP refusals
	refusals []string // the CSP refusals among them
	dialogs  atomic.Int64
	allow    func(string) bool // problems expected at this point
	shots    string
}

func newBrowser(t *testing.T, path string) *browser {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx, shots: os.Getenv("FANOUT_CONSOLE_SCREENSHOTS")}
	if b.shots == "" {
		b.shots = t.TempDir()
	}
	// The first Run starts the browser, under a context without a timeout
	// (a timeout there would end the browser); the actions get theirs.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("true")); err != nil {
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				b.problem("console.error: " + strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			desc := d.Text
			if d.Exception != nil {
				desc += " " + d.Exception.Description
			}
			b.problem(fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, desc))
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				b.problem(fmt.Sprintf("%s (%s): %s", ev.Entry.Source, ev.Entry.URL, ev.Entry.Text))
			}
		case *page.EventJavascriptDialogOpening:
			// A dialog is what an injected alert() would open: the
			// console itself never opens one.
			b.dialogs.Add(1)
			b.problem("a JavaScript dialog opened: " + ev.Message)
			go func() {
				_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
			}()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *browser) problem(p string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if strings.Contains(p, "Content Security Policy") || strings.Contains(p, "Content-Security-Policy") {
		b.refusals = append(b.refusals, p)
	}
	if b.allow != nil && b.allow(p) {
		return
	}
	b.problems = append(b.problems, p)
}

// check fails the test on any problem the page reported so far.
func (b *browser) check(when string) {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) > 0 {
		b.t.Fatalf("%s: the page reported:\n%s", when, strings.Join(b.problems, "\n"))
	}
}

// step bounds one browser action.
const stepTimeout = 30 * time.Second

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// js evaluates an expression and returns its value.
func js[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// wait polls a JavaScript condition until it holds.
func (b *browser) wait(what, cond string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.getElementById("main").innerText.slice(0, 2000)`))
		b.t.Fatalf("%s: %v; the page shows:\n%s", what, err, text)
	}
}

// exec runs a statement in the page.
func (b *browser) exec(stmt string) {
	b.t.Helper()
	js[bool](b, "(() => { "+stmt+"; return true })()")
}

// visit navigates within the console (a hash change).
func (b *browser) visit(hash string) {
	b.t.Helper()
	b.exec(fmt.Sprintf("location.hash = %q", hash))
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	b.do("settle", chromedp.Sleep(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), buf, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func TestConsole_Browser(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the console's browser tests did not run")
	}
	t.Parallel()
	good := newReceiver(t)
	var refuse atomic.Bool
	refuse.Store(true)
	refuser := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			http.Error(w, `{"error":"<b>no</b> <img src=x onerror=alert(3)>"}`, http.StatusUnprocessableEntity)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(refuser.Close)
	const token = "console-test-token-0123456789"
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--api-token", token, "--retry-initial", "20ms", "--retry-max", "100ms"}, nil)
	auth := []string{"Authorization", "Bearer " + token}
	var goodDst, refuserDst struct{ ID, Secret string }
	const destAuth = "Bearer console-dest-token-0123456789"
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": good.URL + "/hook", "description": "orders service",
		"filter": []string{"order.*"}, "headers": map[string]string{"Authorization": destAuth}}, &goodDst, auth...); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": refuser.URL + "/strict", "description": "strict receiver",
		"filter": []string{"user.*"}}, &refuserDst, auth...); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	postEvent := func(body string) string {
		var out struct{ ID string }
		if code := call(t, "POST", base+"/v1/event", body, &out, auth...); code != 202 {
			t.Fatalf("post %s: %d", body, code)
		}
		return out.ID
	}

	b := newBrowser(t, path)
	// Until a token is given, the API answers 401: the browser logs those
	// requests as failed loads. Nothing else may fail.
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "401") }
	b.mu.Unlock()

	// The overview asks for a token, keeps it for the session, and shows
	// the figures.
	b.do("open the console", chromedp.Navigate(base+"/"))
	b.wait("the token dialog", `document.getElementById("token-dialog").open`)
	b.do("give the token", chromedp.SendKeys(chromedp.ID("token-input"), token), chromedp.Submit(chromedp.ID("token-input")))
	b.wait("the overview", `document.querySelector(".cards") && document.querySelector(".cards").innerText.includes("Events in")`)
	if stored := js[string](b, `sessionStorage.getItem("fanout-token")`); stored != token {
		t.Fatalf("token kept as %q in session storage", stored)
	}
	b.mu.Lock()
	b.allow = nil
	b.mu.Unlock()
	b.check("overview")

	// Events posted with the API appear, filters narrow the list, and the
	// payloads that would be markup show as text.
	paid := postEvent(`{"type":"order.paid","amount":42}`)
	xss1 := postEvent(`{"type":"user.created","name":"<script>alert(1)</script>"}`)
	xss2 := postEvent(`{"type":"user.updated","name":"\"><img src=x onerror=alert(2)>"}`)
	b.visit("#/events")
	for _, id := range []string{paid, xss1, xss2} {
		b.wait("event "+id+" listed", fmt.Sprintf(`!!document.querySelector('#events-table tr[data-id=%q]')`, id))
	}
	late := postEvent(`{"type":"order.shipped"}`)
	b.wait("an event posted while the list is open", fmt.Sprintf(`!!document.querySelector('#events-table tr[data-id=%q]')`, late))
	b.wait("the orders delivered", fmt.Sprintf(`(document.querySelector('#events-table tr[data-id=%q]')||{innerText:""}).innerText.includes("delivered")`, paid))
	b.screenshot("events")
	// requestSubmit, as a person's Enter does: form.submit() would skip the
	// console's handler.
	b.exec(`document.querySelector("input[name=type]").value = "user.*"; document.querySelector("form.filters").requestSubmit()`)
	b.wait("only user events", fmt.Sprintf(`location.hash.includes("type=user") && document.querySelectorAll('#events-table tbody tr').length === 2 && !document.querySelector('#events-table tr[data-id=%q]')`, paid))
	b.exec(`document.querySelector("input[name=type]").value = ""`)
	b.do("type a search", chromedp.SendKeys(chromedp.CSS(`input[name=q]`), "onerror"))
	b.exec(`document.querySelector("form.filters").requestSubmit()`)
	b.wait("the search", fmt.Sprintf(`document.querySelectorAll('#events-table tbody tr').length === 1 && !!document.querySelector('#events-table tr[data-id=%q]')`, xss2))
	b.check("events")

	// An event's page: the payload as text, its deliveries with their
	// attempts.
	for _, tc := range []struct{ id, literal string }{{xss1, `<script>alert(1)</script>`}, {xss2, `"><img src=x onerror=alert(2)>`}} {
		b.visit("#/events/" + tc.id)
		b.wait("the payload of "+tc.id, fmt.Sprintf(`(document.getElementById("payload")||{textContent:""}).textContent.includes(%q)`, tc.literal))
		if js[bool](b, `!!document.querySelector("#main img, #main script, #payload *")`) {
			t.Fatalf("event %s: its payload became markup in the page", tc.id)
		}
	}
	b.wait("the refused delivery's answer, as text", `[...document.querySelectorAll("pre.excerpt")].some(p => p.textContent.includes("<img src=x onerror=alert(3)>"))`)
	b.screenshot("event")
	b.visit("#/events/" + paid)
	b.wait("a delivered delivery's timeline", `document.querySelector(".delivery") && document.querySelector(".delivery").innerText.includes("HTTP 204") && document.querySelector(".delivery").innerText.includes("Delivered")`)
	if n := b.dialogs.Load(); n > 0 {
		t.Fatalf("%d JavaScript dialogs opened: a payload ran as script", n)
	}
	b.check("event pages")

	// A raw event of text/html (raw=true): its body shows as text, with
	// its Content-Type, and nothing in it runs.
	const rawHTML = `<html><body><img src=x onerror=alert(4)><script>alert(5)</script>&lt;ok&gt;</body></html>`
	var rawOut struct{ ID string }
	if code := call(t, "POST", base+"/v1/event?raw=true&type=page.saved", rawHTML, &rawOut, append(auth, "Content-Type", "text/html; charset=utf-8")...); code != 202 {
		t.Fatalf("post a raw text/html event: %d", code)
	}
	b.visit("#/events/" + rawOut.ID)
	b.wait("the raw body as text", fmt.Sprintf(`(document.getElementById("payload")||{textContent:""}).textContent === %q && document.getElementById("raw-content-type").textContent === "text/html; charset=utf-8"`, rawHTML))
	if js[bool](b, `!!document.querySelector("#main img, #main script, #payload *")`) {
		t.Fatal("the raw text/html body became markup in the page")
	}
	if n := b.dialogs.Load(); n > 0 {
		t.Fatalf("%d JavaScript dialogs opened: a raw body ran as script", n)
	}
	b.check("a raw event's page")

	// Destinations: pause and resume, then a replay to a new destination
	// of the events it missed.
	b.visit("#/destinations/" + goodDst.ID)
	sel := fmt.Sprintf(`details.destination[data-id=%q]`, goodDst.ID)
	b.wait("the destination", fmt.Sprintf(`!!document.querySelector('%s button.pause')`, sel))
	b.exec(fmt.Sprintf(`document.querySelector('%s button.pause').click()`, sel))
	b.wait("paused", fmt.Sprintf(`!!document.querySelector('%s button.resume') && document.querySelector('%s summary').innerText.includes("paused")`, sel, sel))
	var d struct{ Paused bool }
	call(t, "GET", base+"/v1/destinations/"+goodDst.ID, nil, &d, auth...)
	if !d.Paused {
		t.Fatal("the console's Pause did not pause the destination")
	}
	b.exec(fmt.Sprintf(`document.querySelector('%s button.resume').click()`, sel))
	b.wait("resumed", fmt.Sprintf(`!!document.querySelector('%s button.pause') && document.querySelector('%s summary').innerText.includes("active")`, sel, sel))

	// Secrets are write-only: the page shows the secret and the header
	// value masked; the edit form shows the masks, and saving it keeps the
	// values; Reveal reads them in full; a rotation shows its new secret
	// once.
	secrets := func() (s struct {
		Secret  string
		Headers map[string]string
	}) {
		if code := call(t, "GET", base+"/v1/destinations/"+goodDst.ID+"/secret", nil, &s, auth...); code != 200 {
			t.Fatalf("GET secret: %d", code)
		}
		return s
	}
	b.wait("the masked secret", fmt.Sprintf(`document.querySelector('%s .secret').textContent === %q && document.querySelector('%s dd.headers').textContent.includes("…6789")`,
		sel, destination.MaskSecret(goodDst.Secret), sel))
	shown := fmt.Sprintf(`[document.body.innerHTML, ...[...document.querySelectorAll("input, textarea")].map(e => e.value)].some(t => t.includes(%q) || t.includes(%q))`, goodDst.Secret, destAuth)
	if js[bool](b, shown) {
		t.Fatal("the page holds the secret or the header value before Reveal")
	}
	b.exec(fmt.Sprintf(`[...document.querySelectorAll('%s .actions button')].find(x => x.textContent === "Edit").click()`, sel))
	b.wait("the edit form", fmt.Sprintf(`!!document.querySelector('%s form.editing textarea[name=headers]')`, sel))
	if v := js[string](b, fmt.Sprintf(`document.querySelector('%s form.editing textarea[name=headers]').value`, sel)); !strings.Contains(v, `"…6789"`) || js[bool](b, shown) {
		t.Fatalf("the edit form's headers: %q, want the value masked", v)
	}
	// The same save sets a throttle: 100 a minute, a burst of 10.
	b.exec(fmt.Sprintf(`(f => { f.querySelector('input[name=description]').value = "orders service, edited";
		f.querySelector('input[name=rate_limit_rate]').value = "100"; f.querySelector('select[name=rate_limit_per]').value = "minute";
		f.querySelector('input[name=rate_limit_burst]').value = "10"; f.requestSubmit() })(document.querySelector('%s form.editing'))`, sel))
	b.wait("saved", fmt.Sprintf(`!document.querySelector('%s form.editing') && document.querySelector('%s summary').innerText.includes("edited")`, sel, sel))
	var throttled struct {
		RateLimit json.RawMessage `json:"rate_limit"`
	}
	if code := call(t, "GET", base+"/v1/destinations/"+goodDst.ID, nil, &throttled, auth...); code != 200 || string(throttled.RateLimit) != `{"rate":100,"per":"minute","burst":10}` {
		t.Fatalf("after the edit form set a throttle: %d, rate_limit %s", code, throttled.RateLimit)
	}
	b.wait("the throttle shown", fmt.Sprintf(`document.querySelector('%s dd.throttle').textContent.startsWith("100 per minute, burst 10") && document.querySelector('%s .figures').innerText.includes("waiting on the throttle")`, sel, sel))
	if code := call(t, "PATCH", base+"/v1/destinations/"+goodDst.ID, map[string]any{"rate_limit": 0}, nil, auth...); code != 200 {
		t.Fatalf("remove the throttle: %d", code)
	}
	b.wait("no throttle shown", fmt.Sprintf(`document.querySelector('%s dd.throttle').textContent === "none"`, sel))
	if s := secrets(); s.Secret != goodDst.Secret || s.Headers["Authorization"] != destAuth {
		t.Fatalf("after the edit form was saved: %+v, want the secret and %q kept", s, destAuth)
	}
	b.exec(fmt.Sprintf(`[...document.querySelectorAll('%s .actions button')].find(x => x.textContent === "Edit").click()`, sel))
	b.wait("the edit form again", fmt.Sprintf(`!!document.querySelector('%s form.editing button.reveal-headers')`, sel))
	b.exec(fmt.Sprintf(`document.querySelector('%s form.editing button.reveal-headers').click()`, sel))
	b.wait("the header value revealed in the form", fmt.Sprintf(`document.querySelector('%s form.editing textarea[name=headers]').value.includes(%q)`, sel, destAuth))
	b.exec(fmt.Sprintf(`[...document.querySelectorAll('%s form.editing button')].find(x => x.textContent === "Cancel").click()`, sel))
	b.wait("the form closed", fmt.Sprintf(`!document.querySelector('%s form.editing')`, sel))
	b.exec(fmt.Sprintf(`document.querySelector('%s button.reveal').click()`, sel))
	b.wait("the revealed secret", fmt.Sprintf(`document.querySelector('%s .secret').textContent === %q && document.querySelector('%s dd.headers').textContent.includes(%q)`,
		sel, goodDst.Secret, sel, destAuth))
	b.screenshot("destination-secret")
	b.exec(fmt.Sprintf(`document.querySelector('%s button.reveal').click()`, sel)) // hide
	b.wait("masked again", fmt.Sprintf(`document.querySelector('%s .secret').textContent === %q`, sel, destination.MaskSecret(goodDst.Secret)))
	b.exec(fmt.Sprintf(`document.querySelector('%s button.rotate').click()`, sel))
	b.wait("the new secret, once", fmt.Sprintf(`!!document.querySelector('%s .rotated .new-secret')`, sel))
	rotated := js[string](b, fmt.Sprintf(`document.querySelector('%s .rotated .new-secret').textContent`, sel))
	if s := secrets(); s.Secret != rotated || rotated == goodDst.Secret {
		t.Fatalf("the page showed %q after the rotation; fanout has %q (before: %q)", rotated, s.Secret, goodDst.Secret)
	}
	b.wait("the facts masked", fmt.Sprintf(`document.querySelector('%s .secret').textContent === %q`, sel, destination.MaskSecret(rotated)))
	b.screenshot("destination-rotated")
	b.exec(fmt.Sprintf(`[...document.querySelectorAll('%s .rotated button')].find(x => x.textContent === "Done").click()`, sel))
	b.wait("the new secret gone", fmt.Sprintf(`!document.querySelector('%s .rotated') && !document.body.innerHTML.includes(%q)`, sel, rotated))
	b.check("secrets")

	// Payload filters: one typed in the edit form is tested on an example
	// that does not match (the reason shown, as text) and one that does,
	// then saved and shown; one the API refuses shows the 400 under the
	// field and saves nothing; cleared, it is removed ({} sent).
	matchOf := func() string {
		var d struct{ Match json.RawMessage }
		if code := call(t, "GET", base+"/v1/destinations/"+goodDst.ID, nil, &d, auth...); code != 200 {
			t.Fatalf("GET destination: %d", code)
		}
		return string(d.Match)
	}
	edit := func() {
		t.Helper()
		b.exec(fmt.Sprintf(`[...document.querySelectorAll('%s .actions button')].find(x => x.textContent === "Edit").click()`, sel))
		b.wait("the edit form's payload filter", fmt.Sprintf(`!!document.querySelector('%s form.editing textarea[name=match]')`, sel))
	}
	form := sel + " form.editing"
	edit()
	// The example is at first the destination's last event.
	b.exec(fmt.Sprintf(`document.querySelector('%s details.match-test').open = true`, form))
	b.wait("the last event as the example", fmt.Sprintf(`document.querySelector('%s textarea[name=example]').value === %q`, form, "{\n  \"type\": \"order.shipped\"\n}"))
	b.exec(fmt.Sprintf(`document.querySelector('%s textarea[name=match]').value = %q;
		document.querySelector('%s textarea[name=example]').value = %q;
		document.querySelector('%s button.test-match').click()`,
		form, "{\n  \"data.amount\": {\"$gte\": 100}\n}", form, `{"type":"order.paid","data":{"amount":50,"note":"<b>x</b>"}}`, form))
	b.wait("does not match, and why", fmt.Sprintf(`(document.querySelector('%s .match-result strong')||{}).textContent === "does not match" &&
		[...document.querySelectorAll('%s .match-result li')].map(li => li.textContent).join("|") === "data.amount: 50 is not >= 100"`, form, form))
	b.wait("the toasts gone", `document.getElementById("toast").hidden`)
	b.screenshot("destination-filter")
	b.exec(fmt.Sprintf(`document.querySelector('%s textarea[name=example]').value = '{"type":"order.paid","data":{"amount":150}}';
		document.querySelector('%s button.test-match').click()`, form, form))
	b.wait("matches", fmt.Sprintf(`(document.querySelector('%s .match-result strong')||{}).textContent === "matches" && !document.querySelector('%s .match-result li')`, form, form))
	b.exec(fmt.Sprintf(`document.querySelector('%s').requestSubmit()`, form))
	b.wait("the filter saved and shown", fmt.Sprintf(`!document.querySelector('%s') && (document.querySelector('%s dd.match pre')||{textContent:""}).textContent === %q`,
		form, sel, "{\n  \"data.amount\": {\n    \"$gte\": 100\n  }\n}"))
	if m := matchOf(); m != `{"data.amount":{"$gte":100}}` {
		t.Fatalf("after the filter was saved, the destination's match is %s", m)
	}
	edit()
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "400") }
	b.mu.Unlock()
	b.exec(fmt.Sprintf(`document.querySelector('%s textarea[name=match]').value = '{"data.amount": {"$gte": true}}'; document.querySelector('%s').requestSubmit()`, form, form))
	b.wait("the 400 under the field", fmt.Sprintf(`!!document.querySelector('%s') && (document.querySelector('%s .match-error')||{}).textContent === "match: filter: at data.amount.$gte: $gte takes a number or a string"`, form, form))
	b.mu.Lock()
	b.allow = nil
	b.mu.Unlock()
	if m := matchOf(); m != `{"data.amount":{"$gte":100}}` {
		t.Fatalf("after a refused filter, the destination's match is %s", m)
	}
	b.exec(fmt.Sprintf(`document.querySelector('%s textarea[name=match]').value = ""; document.querySelector('%s').requestSubmit()`, form, form))
	b.wait("the filter removed", fmt.Sprintf(`!document.querySelector('%s') && (document.querySelector('%s dd.match')||{}).textContent === "none"`, form, sel))
	if m := matchOf(); m != "" {
		t.Fatalf("after the filter was cleared, the destination's match is %s", m)
	}
	b.check("payload filters")

	var late2 struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": good.URL + "/late", "description": "added later"}, &late2, auth...); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	b.visit("#/destinations/" + late2.ID)
	sel = fmt.Sprintf(`details.destination[data-id=%q]`, late2.ID)
	b.wait("the new destination", fmt.Sprintf(`!!document.querySelector('%s button.replay')`, sel))
	b.exec(fmt.Sprintf(`document.querySelector('%s button.replay').click()`, sel))
	b.wait("the replay form", fmt.Sprintf(`!!document.querySelector('%s form.replay-form')`, sel))
	b.exec(fmt.Sprintf(`document.querySelector('%s form.replay-form button[type=submit]').click()`, sel))
	b.wait("the count", `document.getElementById("confirm-dialog").open && document.getElementById("confirm-text").textContent.startsWith("5 stored events")`)
	b.exec(`document.getElementById("confirm-ok").click()`)
	b.wait("the replay done", fmt.Sprintf(`!!document.querySelector('%s table.replays') && document.querySelector('%s table.replays').innerText.includes("done")`, sel, sel))
	for _, id := range []string{paid, xss1, xss2, late} {
		var ev service.EventView
		call(t, "GET", base+"/v1/events/"+id, nil, &ev, auth...)
		found := false
		for _, dv := range ev.Deliveries {
			found = found || (dv.DestinationID == late2.ID && dv.Replay != "")
		}
		if !found {
			t.Fatalf("event %s has no replayed delivery to %s: %+v", id, late2.ID, ev.Deliveries)
		}
	}
	b.screenshot("destinations")
	b.check("destinations")

	// An event nested thousands deep (fanout takes up to 10,000 levels):
	// the browser parses it, but its JSON.stringify runs out of stack, and
	// the page shows the event's raw text instead of failing.
	nested := strings.Repeat("[", 9990) + strings.Repeat("]", 9990)
	deep := postEvent(`{"type":"deep","v":` + nested + `}`)
	b.visit("#/events/" + deep)
	b.wait("the deep event's raw text", fmt.Sprintf(`(document.getElementById("payload")||{textContent:""}).textContent === %q`,
		`{"type":"deep","v":`+nested+`}`))
	b.screenshot("event-deep")
	b.check("a deep event")

	// Dead letters: the refused deliveries are listed; one re-driven, once
	// the receiver takes them, is delivered.
	b.visit("#/dead-letters")
	b.wait("the dead letters", `document.querySelectorAll('#dead-table tbody tr').length === 2`)
	b.screenshot("dead-letters")
	refuse.Store(false)
	first := js[string](b, `document.querySelector('#dead-table tbody tr').dataset.id`)
	b.exec(`document.querySelector('#dead-table tbody tr button.retry').click()`)
	eventually(t, "the re-driven delivery delivered", 20*time.Second, func() bool {
		var dv service.DeliveryView
		call(t, "GET", base+"/v1/deliveries/"+first, nil, &dv, auth...)
		return dv.State == "delivered"
	})
	b.wait("one dead letter left", `document.querySelectorAll('#dead-table tbody tr').length === 1`)
	b.check("dead letters")

	// The overview once there was traffic, and the events on a phone.
	b.visit("#/overview")
	b.wait("the charts", `document.querySelectorAll(".chart canvas").length === 3`)
	b.screenshot("overview")
	b.do("a phone-sized screen", chromedp.EmulateViewport(390, 844))
	b.visit("#/events")
	b.wait("the events on a phone", `document.querySelectorAll('#events-table tbody tr').length >= 4`)
	if js[bool](b, `document.documentElement.scrollWidth > window.innerWidth + 1`) {
		t.Error("on a 390-pixel screen the page scrolls sideways (only tables may)")
	}
	b.screenshot("events-phone")
	b.check("phone")

	// The policy holds: a script the page did not load from fanout is
	// refused, and the refusal is seen.
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.Contains(p, "Content Security Policy") }
	b.mu.Unlock()
	b.exec(`const s = document.createElement("script"); s.textContent = "window.pwned = 1"; document.body.append(s)`)
	pwned := js[bool](b, `window.pwned === 1`)
	refused := 0
	for deadline := time.Now().Add(5 * time.Second); refused == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b.mu.Lock()
		refused = len(b.refusals)
		b.mu.Unlock()
	}
	if pwned || refused == 0 {
		t.Fatalf("an inline script ran (%v) or its refusal went unseen (%d refusals)", pwned, refused)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
