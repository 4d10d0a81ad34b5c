package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"fanout/internal/service"
)

// TestPortal_Browser drives acme's portal in headless Chromium: its
// endpoint, a new one, a test-send and its attempt, a rotation's secret
// shown once; then it tries to reach globex's destination, event and
// replay by editing the address and by calling the API with the page's
// token, and sees "not found" and nothing of globex; a token in the query
// is ignored. FANOUT_PORTAL_SCREENSHOTS=$PWD/docs/portal (from the module
// root) writes the screenshots the README shows.
func TestPortal_Browser(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the portal's browser test did not run")
	}
	t.Parallel()
	f := newTenantFixture(t, "--portal-name", "Northwind Webhooks", "--portal-accent", "#0b7a53")
	f.must(t, 200, f.operator, "PUT", "/v1/tenants/acme", map[string]any{"name": "Acme Inc."}, nil)
	var replayG struct{ ID string }
	f.must(t, 202, f.tokens["globexAll"], "POST", "/v1/destinations/"+f.destG+"/replay",
		map[string]any{"since": time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)}, &replayG)
	var eventG struct{ ID string }
	f.must(t, 202, f.tokens["globexAll"], "POST", "/v1/event", `{"type":"globex.secret","marker":"globex-private-marker"}`, &eventG)
	newRecv := newReceiver(t)
	link, token := f.portalLink(t, "acme", nil)

	b := newBrowser(t, path)
	if shots := os.Getenv("FANOUT_PORTAL_SCREENSHOTS"); shots != "" {
		b.shots = shots
	}
	// 404s of globex's things are expected as failed loads; nothing else.
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "404") }
	b.mu.Unlock()

	// A token in the query is ignored: the page asks for its link.
	b.do("open a portal with ?token=", chromedp.Navigate(f.base+"/portal/acme/?token="+token))
	b.wait("the page asks for its link", `(document.getElementById("signed-out")||{innerText:""}).innerText.includes("link you were given")`)
	if got := js[string](b, `sessionStorage.getItem("fanout-portal-token") || ""`); got != "" {
		t.Fatalf("a token in the query was kept: %q", got)
	}
	if js[string](b, `location.search`) != "" {
		t.Fatal("the query stayed in the address")
	}

	// The link: the token goes to session storage, the address is cleared,
	// acme's endpoint is listed with the operator's branding.
	b.do("open acme's portal, as a new tab would", chromedp.Navigate("about:blank"), chromedp.Navigate(link.URL))
	b.wait("acme's endpoint", fmt.Sprintf(`!!document.querySelector('#endpoints [data-id=%q]')`, f.destA))
	if got := js[string](b, `location.href`); strings.Contains(got, "token") {
		t.Fatalf("the address still holds the token: %s", got)
	}
	// It keeps its path, page key included: a reload (in a frame too)
	// opens the page its link opened.
	if got, want := js[string](b, `location.pathname`), strings.SplitN(strings.TrimPrefix(link.URL, f.base), "#", 2)[0]; got != want {
		t.Fatalf("the address's path is %s, want the link's %s", got, want)
	}
	if got := js[string](b, `sessionStorage.getItem("fanout-portal-token")`); got != token {
		t.Fatalf("session storage holds %q", got)
	}
	if js[bool](b, fmt.Sprintf(`!!document.querySelector('#endpoints [data-id=%q]') || document.body.innerText.includes(%q)`, f.destG, f.recvG.URL)) {
		t.Fatal("acme's portal shows globex's endpoint")
	}
	if got := js[string](b, `document.getElementById("tenant").textContent + "|" + document.getElementById("brand-name").textContent + "|" +
		getComputedStyle(document.documentElement).getPropertyValue("--accent").trim()`); got != "Acme Inc.|Northwind Webhooks|#0b7a53" {
		t.Fatalf("tenant, brand and accent shown as %q", got)
	}
	b.check("the endpoints")
	b.screenshot("endpoints")

	// Create an endpoint: its secret is shown once.
	b.visit("#/new")
	b.wait("the form", `!!document.querySelector("#endpoint-form input[name=url]")`)
	b.wait("acme's event types offered", `!!document.querySelector('#type-boxes input[value="order.paid"]')`)
	if js[bool](b, `!!document.querySelector('#type-boxes input[value="globex.secret"]')`) {
		t.Fatal("globex's event type offered in acme's portal")
	}
	b.exec(fmt.Sprintf(`document.querySelector("#endpoint-form input[name=url]").value = %q;
		document.querySelector("#endpoint-form input[name=description]").value = "billing <b>service</b>"`, newRecv.URL+"/hook"))
	b.exec(`document.querySelector("#endpoint-form input[name=all-types]").checked = false;
		document.querySelector('#type-boxes input[value="order.paid"]').checked = true`)
	b.exec(`document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("the new endpoint with its secret", `location.hash.startsWith("#/endpoints/") && !!document.getElementById("secret-value") && document.getElementById("secret-value").textContent.startsWith("whsec_")`)
	newID := strings.TrimPrefix(js[string](b, `location.hash`), "#/endpoints/")
	var created struct {
		Destinations []struct {
			ID, URL, Description string
			Filter               []string
		}
	}
	f.must(t, 200, token, "GET", "/v1/destinations", nil, &created)
	if len(created.Destinations) != 2 {
		t.Fatalf("after the create: %+v", created.Destinations)
	}
	b.screenshot("endpoint-created")

	// Test-send: the delivery appears with its attempt.
	b.exec(`document.getElementById("secret-done").click()`)
	b.wait("the secret gone", `!document.getElementById("secret-value") && !!document.getElementById("test-form")`)
	b.exec(`document.getElementById("test-form").requestSubmit()`)
	b.wait("the delivery listed", `document.querySelectorAll("#deliveries tbody tr").length === 1 && document.querySelector("#deliveries tbody tr").innerText.includes("delivered")`)
	b.screenshot("endpoint")
	b.exec(`document.querySelector("#deliveries tbody tr a").click()`)
	b.wait("the attempt", `document.querySelectorAll("#attempts li").length === 1 && document.getElementById("attempts").innerText.includes("HTTP 204")`)
	b.screenshot("delivery")
	if len(newRecv.bodies()) != 1 || !strings.Contains(newRecv.bodies()[0], `"test":true`) {
		t.Fatalf("the new endpoint received %v", newRecv.bodies())
	}

	// Rotate: the new secret is shown once, then only its mask.
	b.visit("#/endpoints/" + newID)
	b.wait("the endpoint", `!!document.getElementById("rotate")`)
	b.exec(`document.getElementById("rotate").click()`)
	b.wait("the confirmation", `document.getElementById("confirm-dialog").open`)
	b.exec(`document.getElementById("confirm-ok").click()`)
	b.wait("the rotated secret", `!!document.getElementById("secret-value") && document.getElementById("secret-value").textContent.startsWith("whsec_")`)
	rotated := js[string](b, `document.getElementById("secret-value").textContent`)
	var secrets struct{ Secret string }
	f.must(t, 200, f.operator, "GET", "/v1/destinations/"+newID+"/secret", nil, &secrets)
	if rotated != secrets.Secret {
		t.Fatalf("the page showed %q, the destination signs with %q", rotated, secrets.Secret)
	}
	b.screenshot("rotated")
	b.exec(`document.getElementById("secret-done").click()`)
	b.wait("the mask only", fmt.Sprintf(`!document.getElementById("secret-value") && !document.body.innerText.includes(%q)`, rotated))
	b.check("create, test-send, rotate")

	// Payload filters: one typed in the edit form is tested on an example
	// that does not match (the reason shown, as text), then saved and
	// shown; one the API refuses shows the 400 under the field and saves
	// nothing.
	matchOf := func() string {
		var d struct{ Match json.RawMessage }
		f.must(t, 200, token, "GET", "/v1/destinations/"+newID, nil, &d)
		return string(d.Match)
	}
	b.visit("#/endpoints/" + newID + "/edit")
	b.wait("the edit form's payload filter", `!!document.getElementById("match")`)
	b.exec(fmt.Sprintf(`document.getElementById("match").value = %q;
		document.getElementById("match-test-panel").open = true;
		document.getElementById("match-example").value = %q;
		document.getElementById("match-test").click()`,
		"{\n  \"data.amount\": {\"$gte\": 100}\n}", `{"type":"order.paid","data":{"amount":50,"note":"<b>x</b>"}}`))
	b.wait("does not match, and why", `(document.querySelector("#match-result strong")||{}).textContent === "does not match" &&
		[...document.querySelectorAll("#match-result li")].map(li => li.textContent).join("|") === "data.amount: 50 is not >= 100"`)
	b.wait("the toasts gone", `document.getElementById("toast").hidden`)
	b.screenshot("endpoint-filter")
	b.exec(`document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("the filter saved and shown", fmt.Sprintf(`location.hash === %q && (document.querySelector("#endpoint-match pre")||{}).textContent === %q`,
		"#/endpoints/"+newID, "{\n  \"data.amount\": {\n    \"$gte\": 100\n  }\n}"))
	if m := matchOf(); m != `{"data.amount":{"$gte":100}}` {
		t.Fatalf("after the filter was saved, the endpoint's match is %s", m)
	}
	b.visit("#/endpoints/" + newID + "/edit")
	b.wait("the edit form again", `!!document.getElementById("match")`)
	b.mu.Lock()
	allow := b.allow
	b.allow = func(p string) bool { return allow(p) || strings.HasPrefix(p, "network") && strings.Contains(p, "400") }
	b.mu.Unlock()
	b.exec(`document.getElementById("match").value = '{"data.amount": {"$gte": true}}'; document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("the 400 under the field", `location.hash.endsWith("/edit") && (document.getElementById("match-error")||{}).textContent === "match: filter: at data.amount.$gte: $gte takes a number or a string"`)
	b.mu.Lock()
	b.allow = allow
	b.mu.Unlock()
	if m := matchOf(); m != `{"data.amount":{"$gte":100}}` {
		t.Fatalf("after a refused filter, the endpoint's match is %s", m)
	}
	b.check("payload filters")

	// Phone width.
	b.do("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	b.visit("#/")
	b.wait("the list at phone width", fmt.Sprintf(`!!document.querySelector('#endpoints [data-id=%q]')`, newID))
	if w := js[int](b, `document.documentElement.scrollWidth`); w > 390 {
		t.Fatalf("at 390 px the page is %d px wide", w)
	}
	b.screenshot("endpoints-phone")
	b.visit("#/endpoints/" + newID)
	b.wait("the endpoint at phone width", `document.querySelectorAll("#deliveries tbody tr").length === 1`)
	if w := js[int](b, `document.documentElement.scrollWidth`); w > 390 {
		t.Fatalf("the endpoint at 390 px is %d px wide", w)
	}
	b.screenshot("endpoint-phone")
	b.do("desktop width", chromedp.EmulateViewport(1280, 900))

	// globex's destination, event and replay by editing the address: not
	// found, and nothing of globex.
	for _, c := range []struct{ hash, what string }{
		{"#/endpoints/" + f.destG, "destination"},
		{"#/events/" + eventG.ID, "event"},
		{"#/replays/" + replayG.ID, "replay"},
		{"#/endpoints/" + f.destG + "/edit", "destination"},
	} {
		b.visit(c.hash)
		b.wait(c.hash+" not found", fmt.Sprintf(`!!document.querySelector("#main .error") && document.querySelector("#main .error").textContent.includes("no %s")`, c.what))
		body := js[string](b, `document.body.innerText`)
		for _, leak := range []string{f.recvG.URL, "globex-private-marker", "globex.secret"} {
			if strings.Contains(body, leak) {
				t.Fatalf("%s shows %q", c.hash, leak)
			}
		}
	}
	b.screenshot("not-found")
	// And by calling the API with the page's own token.
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/destinations/" + f.destG, ""},
		{"GET", "/v1/events/" + eventG.ID, ""},
		{"GET", "/v1/replays/" + replayG.ID, ""},
		{"POST", "/v1/destinations/" + f.destG + "/replay", `{"since":"2020-01-01T00:00:00Z"}`},
		{"POST", "/v1/destinations/" + f.destG + "/test", `{}`},
		{"GET", "/v1/tenants/globex/events", ""},
	} {
		expr := fmt.Sprintf(`(async () => { const r = await fetch(%q, {method: %q, headers: {Authorization: "Bearer " + sessionStorage.getItem("fanout-portal-token")}, body: %s}); return r.status + " " + await r.text() })()`,
			c.path, c.method, map[bool]string{true: "undefined", false: fmt.Sprintf("%q", c.body)}[c.body == ""])
		got := evalAwait(b, expr)
		if !strings.HasPrefix(got, "404 ") || strings.Contains(got, "globex-private-marker") || strings.Contains(got, f.recvG.URL) {
			t.Fatalf("%s %s with the portal's token: %s", c.method, c.path, got)
		}
	}
	// The replay and test-send refused did nothing to globex's endpoint:
	// it got globex's own event only.
	eventually(t, "globex's own event delivered", 10*time.Second, func() bool { _, ok := f.recvG.has(eventG.ID); return ok })
	var ev service.EventView
	f.must(t, 200, f.operator, "GET", "/v1/events/"+eventG.ID, nil, &ev)
	if len(ev.Deliveries) != 2 { // globex's and the operator's audit
		t.Fatalf("globex's event: %+v", ev.Deliveries)
	}
	b.check("globex unreachable")
}

// evalAwait evaluates an expression whose value is a promise, and returns
// what it resolves to.
func evalAwait(b *browser, expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}
