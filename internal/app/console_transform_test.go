package app

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestConsole_Transform: the destination form's transformation editor
// previews, as the program is typed, the request it makes of the example
// (as text: markup in it stays text), or its error; saving stores it and
// the page shows it.
func TestConsole_Transform(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the console's browser tests did not run")
	}
	t.Parallel()
	recv := newReceiver(t)
	const token = "console-test-token-0123456789"
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--api-token", token}, nil)
	auth := []string{"Authorization", "Bearer " + token}
	var dst struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": recv.URL + "/hook", "description": "orders"}, &dst, auth...); code != 201 {
		t.Fatalf("create destination: %d", code)
	}
	b := newBrowser(t, path)
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "401") }
	b.mu.Unlock()
	b.do("open the console", chromedp.Navigate(base+"/"))
	b.wait("the token dialog", `document.getElementById("token-dialog").open`)
	b.do("give the token", chromedp.SendKeys(chromedp.ID("token-input"), token), chromedp.Submit(chromedp.ID("token-input")))
	b.wait("the overview", `document.querySelector(".cards") && document.querySelector(".cards").innerText.includes("Events in")`)
	b.mu.Lock()
	b.allow = nil
	b.mu.Unlock()

	b.visit("#/destinations/" + dst.ID)
	sel := fmt.Sprintf(`details.destination[data-id=%q]`, dst.ID)
	b.wait("the destination", fmt.Sprintf(`!!document.querySelector('%s button.pause')`, sel))
	b.wait("no transformation shown", fmt.Sprintf(`(document.querySelector('%s dd.transform')||{}).textContent === "none"`, sel))
	b.exec(fmt.Sprintf(`[...document.querySelectorAll('%s .actions button')].find(x => x.textContent === "Edit").click()`, sel))
	form := sel + " form.editing"
	b.wait("the editor", fmt.Sprintf(`!!document.querySelector('%s textarea[name=transform]')`, form))
	b.exec(fmt.Sprintf(`document.querySelector('%s details.transform-test').open = true`, form))
	src := "function handler(webhook) {\n  webhook.method = \"PUT\";\n  webhook.path += \"/\" + webhook.payload.type;\n  webhook.headers[\"X-Note\"] = webhook.payload.note;\n  return webhook;\n}"
	type_ := func(field, value string) {
		b.exec(fmt.Sprintf(`{ const a = document.querySelector('%s textarea[name=%s]'); a.value = %q; a.dispatchEvent(new Event("input")); }`, form, field, value))
	}
	type_("transform-example", `{"type":"order.paid","note":"<img src=x onerror=alert(1)>"}`)
	type_("transform", src)
	want := fmt.Sprintf("PUT %s/hook/order.paid\nX-Note: <img src=x onerror=alert(1)>", recv.URL)
	b.wait("the live preview", fmt.Sprintf(`(document.querySelector('%s pre.preview-request')||{textContent:""}).textContent.startsWith(%q)`, form, want))
	if js[int](b, fmt.Sprintf(`document.querySelectorAll('%s .transform-preview img').length`, form)) != 0 {
		t.Fatal("the preview made markup of the example's text")
	}
	b.screenshot("destination-transform")
	type_("transform", "function handler(webhook) {\n  webhook.method = ;\n}")
	b.wait("the error with its line", fmt.Sprintf(`(document.querySelector('%s .preview-error')||{textContent:""}).textContent.includes("line 2")`, form))
	type_("transform", src)
	b.wait("the preview again", fmt.Sprintf(`!!document.querySelector('%s pre.preview-request')`, form))
	b.exec(fmt.Sprintf(`document.querySelector('%s').requestSubmit()`, form))
	b.wait("saved and shown", fmt.Sprintf(`!document.querySelector('%s') && (document.querySelector('%s pre.transform-source')||{}).textContent === %q`, form, sel, src))
	var d struct{ Transform string }
	if code := call(t, "GET", base+"/v1/destinations/"+dst.ID, nil, &d, auth...); code != 200 || d.Transform != src {
		t.Fatalf("after saving, the destination's transform is %q", d.Transform)
	}
	if n := b.dialogs.Load(); n > 0 {
		t.Fatalf("%d JavaScript dialogs opened", n)
	}
	b.check("transformation editor")
}
