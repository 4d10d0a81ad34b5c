package app

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestPortal_Brokers: a portal whose link was granted the nats kind offers
// webhook and NATS only; its NATS form makes an endpoint (a refused field
// marked with the server's words), whose page shows its type, target,
// what delivered means and its settings with the password masked, and no
// signing secret; an edit posting the masked password back keeps the
// stored one; events reach the JetStream server. A portal without the
// grant offers webhooks only, and its edit of the NATS endpoint shows the
// server's 403 naming the kind.
func TestPortal_Brokers(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the portal's browser test did not run")
	}
	t.Parallel()
	nb := startNATSBroker(t)
	f := newTenantFixture(t)
	link, _ := f.portalLink(t, "acme", map[string]any{"kinds": []string{"nats"}})

	b := newBrowser(t, path)
	if shots := os.Getenv("FANOUT_PORTAL_SCREENSHOTS"); shots != "" {
		b.shots = shots
	}
	b.do("open acme's portal", chromedp.Navigate(link.URL))
	b.wait("acme's endpoints", fmt.Sprintf(`!!document.querySelector('#endpoints [data-id=%q]')`, f.destA))
	b.visit("#/new")
	b.wait("the type selector", `!!document.getElementById("endpoint-type")`)
	if got := js[string](b, `[...document.querySelectorAll("#endpoint-type option")].map(o => o.value).join(",")`); got != "webhook,nats" {
		t.Fatalf("the portal offers %q, want webhook and nats only", got)
	}
	setField(b, "#endpoint-type", "nats")
	b.wait("the NATS form", `!!document.getElementById("endpoint-nats-url") && !document.querySelector("#endpoint-form input[name=url]")`)
	if js[bool](b, `!!document.querySelector("#endpoint-form textarea[name=transform]") && !document.querySelector("#endpoint-form textarea[name=transform]").closest("[hidden]")`) {
		t.Error("the NATS form offers a transformation")
	}
	setField(b, "#endpoint-nats-url", nb.url)
	setField(b, "#endpoint-nats-subject", "events acme")
	setField(b, "#endpoint-nats-user", nb.user)
	setField(b, "#endpoint-nats-password", nb.pass)
	setField(b, "#endpoint-form input[name=description]", `acme <img src=x onerror=alert(1)> stream`)
	b.mu.Lock()
	b.allow = func(p string) bool {
		return strings.HasPrefix(p, "network") && (strings.Contains(p, "400") || strings.Contains(p, "403"))
	}
	b.mu.Unlock()
	b.exec(`document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("the subject marked", `document.getElementById("endpoint-nats-subject").getAttribute("aria-invalid") === "true" &&
		document.getElementById("endpoint-nats-subject-error").textContent.length > 0 && document.querySelector("#endpoint-form .banner.bad").textContent.includes("config.subject")`)
	b.screenshot("endpoint-broker-refused")
	setField(b, "#endpoint-nats-subject", "events.acme")
	b.exec(`document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("the NATS endpoint's page", `location.hash.startsWith("#/endpoints/") && !!document.getElementById("endpoint-target")`)
	id := strings.TrimPrefix(js[string](b, `location.hash`), "#/endpoints/")
	masked := "…" + nb.pass[len(nb.pass)-4:]
	if got := js[string](b, `document.getElementById("endpoint-kind").textContent + "|" + document.getElementById("endpoint-url").textContent`); !strings.HasPrefix(got, "NATS JetStream|") || !strings.Contains(got, nb.url) {
		t.Errorf("kind and heading: %q", got)
	}
	if got := js[string](b, `document.getElementById("endpoint-target").textContent`); !strings.Contains(got, "events.acme") || strings.Contains(got, nb.pass) {
		t.Errorf("target: %q", got)
	}
	if got := js[string](b, `document.getElementById("endpoint-delivered").textContent`); !strings.Contains(got, "JetStream acknowledged") {
		t.Errorf("delivered: %q", got)
	}
	if got := js[string](b, `document.querySelector("#endpoint-config [data-field=password] .cfg-value").textContent`); got != masked {
		t.Errorf("password shown as %q, want %q", got, masked)
	}
	if js[bool](b, fmt.Sprintf(`document.body.innerText.includes(%q) || !!document.getElementById("secret-once") || !!document.getElementById("rotate") || document.body.innerText.includes("Signing secret")`, nb.pass)) {
		t.Error("the NATS endpoint's page shows its password or a signing secret")
	}
	if n := js[int](b, `document.querySelectorAll("#main img").length`); n != 0 {
		t.Fatal("the description became markup")
	}
	b.check("the NATS endpoint")
	b.screenshot("endpoint-broker")

	// Delivered.
	var ev struct{ ID string }
	f.must(t, 202, f.tokens["acmeAll"], "POST", "/v1/event", `{"type":"order.paid","n":1}`, &ev)
	eventually(t, "the event in the stream", 20*time.Second, func() bool {
		m := nb.messages(t)
		return len(m) == 1 && strings.HasPrefix(m[0], "events.acme ")
	})

	// Edit: the masked password posted back stays the stored one.
	b.visit("#/endpoints/" + id + "/edit")
	b.wait("the edit form", fmt.Sprintf(`(document.getElementById("endpoint-nats-password")||{}).value === %q`, masked))
	setField(b, "#endpoint-nats-subject", "events.acme2")
	b.screenshot("endpoint-broker-edit")
	b.exec(`document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("saved", `location.hash === "#/endpoints/`+id+`" && (document.getElementById("endpoint-target")||{textContent:""}).textContent.includes("events.acme2")`)
	var stored struct {
		Config struct{ Subject, User, Password string }
	}
	f.must(t, 200, f.tokens["acmeAll"], "GET", "/v1/destinations/"+id+"/secret", nil, &stored)
	if stored.Config.Password != nb.pass || stored.Config.Subject != "events.acme2" {
		t.Fatalf("after the edit the stored config is %+v", stored.Config)
	}
	f.must(t, 202, f.tokens["acmeAll"], "POST", "/v1/event", `{"type":"order.paid","n":2}`, &ev)
	eventually(t, "the second event on the new subject", 20*time.Second, func() bool {
		m := nb.messages(t)
		return len(m) == 2 && strings.HasPrefix(m[1], "events.acme2 ")
	})

	// Phone width.
	b.do("a phone's width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	b.visit("#/")
	b.visit("#/endpoints/" + id)
	b.wait("the page at a phone's width", `!!document.getElementById("endpoint-target")`)
	if w := js[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the endpoint's page is %d px wide at 390", w)
	}
	b.screenshot("endpoint-broker-phone")
	b.visit("#/endpoints/" + id + "/edit")
	b.wait("the edit form", `!!document.getElementById("endpoint-nats-password")`)
	if w := js[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the edit form is %d px wide at 390", w)
	}
	b.screenshot("endpoint-broker-edit-phone")
	b.do("a desktop's width", chromedp.EmulateViewport(1280, 900))

	// A link without the grant: webhooks only; its edit of the NATS
	// endpoint shows the server's refusal, naming the kind.
	plain, _ := f.portalLink(t, "acme", nil)
	b.do("open the plain portal, as a new tab would", chromedp.Navigate("about:blank"), chromedp.Navigate(plain.URL))
	b.wait("the endpoints, the NATS one with its kind", fmt.Sprintf(`(document.querySelector('#endpoints [data-id=%q]')||{innerText:""}).innerText.includes("NATS JetStream")`, id))
	b.visit("#/new")
	b.wait("the form", `!!document.querySelector("#endpoint-form input[name=url]")`)
	if js[bool](b, `!!document.querySelector("#endpoint-form #endpoint-type")`) {
		t.Error("a portal without a granted kind offers a type")
	}
	b.visit("#/endpoints/" + id + "/edit")
	b.wait("the edit form", `!!document.getElementById("endpoint-nats-subject")`)
	setField(b, "#endpoint-nats-subject", "events.other")
	b.exec(`document.getElementById("endpoint-form").requestSubmit()`)
	b.wait("the refusal", `(document.querySelector("#endpoint-form .banner.bad")||{textContent:""}).textContent.includes("nats")`)
	b.screenshot("endpoint-broker-forbidden")
	f.must(t, 200, f.tokens["acmeAll"], "GET", "/v1/destinations/"+id+"/secret", nil, &stored)
	if stored.Config.Subject != "events.acme2" {
		t.Fatalf("a portal without the grant changed the config: %+v", stored.Config)
	}
	if n := b.dialogs.Load(); n > 0 {
		t.Fatalf("%d JavaScript dialogs opened", n)
	}
	b.check("the plain portal")
}
