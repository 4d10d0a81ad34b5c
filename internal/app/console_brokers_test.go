package app

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"fanout/internal/natstest"
)

// natsBroker is Debian's nats-server with JetStream (file storage in
// t.TempDir()) on a free loopback port, with one user, and a stream
// EVENTS that captures "events.>".
type natsBroker struct {
	url    string // without credentials
	user   string
	pass   string
	stream jetstream.Stream
}

func startNATSBroker(t *testing.T) *natsBroker {
	t.Helper()
	nb := &natsBroker{user: "fanout", pass: "nats-pass-0123456789-wxyz"}
	nb.url = natstest.Start(t, natstest.Options{User: nb.user, Password: nb.pass}).URL
	nc, err := nats.Connect(nb.url, nats.UserInfo(nb.user, nb.pass))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if nb.stream, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}}); err != nil {
		t.Fatal(err)
	}
	return nb
}

// messages are the subjects and bodies of the stream's messages so far.
func (nb *natsBroker) messages(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := nb.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := nb.stream.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		out = append(out, m.Subject+" "+string(m.Data))
	}
	return out
}

// setField sets a form control's value as a person would: the value, then
// the input and change events the page listens to.
func setField(b *browser, selector, value string) {
	b.t.Helper()
	b.exec(fmt.Sprintf(`const e = document.querySelector(%q); if (!e) throw new Error("no " + %q);
		e.value = %q; e.dispatchEvent(new Event("input", {bubbles: true})); e.dispatchEvent(new Event("change", {bubbles: true}))`, selector, selector, value))
}

// TestConsole_Brokers: the console creates a NATS JetStream destination
// with its form (a field the server refuses is marked, naming it), shows
// its type, target, what delivered means and its config with the password
// masked (revealed on demand), delivers to the real server; an edit that
// posts the masked password back keeps the stored one (read with
// view_secret) and the events go to the new subject; a target that looks
// like markup is shown as text. Screenshots at desktop and phone widths.
func TestConsole_Brokers(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the console's browser tests did not run")
	}
	t.Parallel()
	nb := startNATSBroker(t)
	const token = "console-brokers-token-0123456789"
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--api-token", token, "--retry-initial", "20ms", "--retry-max", "100ms"}, nil)
	auth := []string{"Authorization", "Bearer " + token}

	// A destination whose target and description look like markup (its
	// Redis is nowhere: it is only shown).
	const markup = `<img src=x onerror=alert(9)>`
	var redis struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", map[string]any{"type": "redis", "description": "<b>redis</b> " + markup,
		"filter": []string{"nothing.*"}, "config": map[string]any{"url": "redis://127.0.0.1:1/0", "stream": markup}}, &redis, auth...); code != 201 {
		t.Fatalf("create a redis destination: %d", code)
	}

	b := newBrowser(t, path)
	if shots := os.Getenv("FANOUT_CONSOLE_SCREENSHOTS"); shots != "" {
		b.shots = shots
	}
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "401") }
	b.mu.Unlock()
	b.do("open the console", chromedp.Navigate(base+"/#/destinations"))
	b.wait("the token dialog", `document.getElementById("token-dialog").open`)
	b.do("give the token", chromedp.SendKeys(chromedp.ID("token-input"), token), chromedp.Submit(chromedp.ID("token-input")))
	b.wait("the redis destination", fmt.Sprintf(`!!document.querySelector('details.destination[data-id=%q]')`, redis.ID))
	b.mu.Lock()
	b.allow = nil
	b.mu.Unlock()

	// The markup-looking target and description are text.
	rsel := fmt.Sprintf(`details.destination[data-id=%q]`, redis.ID)
	if got := js[string](b, `document.querySelector('`+rsel+` summary .target').textContent`); !strings.Contains(got, markup) {
		t.Errorf("redis target shown as %q, want it to hold %q as text", got, markup)
	}
	if got := js[string](b, `document.querySelector('`+rsel+` dd.target').textContent`); !strings.Contains(got, markup) {
		t.Errorf("redis target in the facts: %q", got)
	}
	if got := js[string](b, `document.querySelector('`+rsel+` dd.config [data-field=stream] .cfg-value').textContent`); got != markup {
		t.Errorf("redis stream in the config shown as %q", got)
	}
	if n := js[int](b, `document.querySelectorAll("#main img, #main b, #main script").length`); n != 0 {
		t.Fatalf("%d elements made of API data in the page", n)
	}

	// The form: NATS, a subject the server refuses (400 naming
	// config.subject): the field is marked with the server's words.
	b.exec(`document.querySelector("#create-destination").closest("details").open = true`)
	setField(b, "#new-type", "nats")
	b.wait("the NATS form", `!!document.querySelector("#new-nats-url") && !document.querySelector("#create-destination input[name=url]")`)
	b.check("the NATS form")
	setField(b, "#new-nats-url", nb.url)
	setField(b, "#new-nats-subject", "events orders")
	setField(b, "#new-nats-user", nb.user)
	setField(b, "#new-nats-password", nb.pass)
	setField(b, `#create-destination input[name=description]`, "orders to NATS")
	b.mu.Lock()
	b.allow = func(p string) bool { return strings.HasPrefix(p, "network") && strings.Contains(p, "400") }
	b.mu.Unlock()
	b.exec(`document.getElementById("create-destination").requestSubmit()`)
	b.wait("the subject marked", `document.querySelector("#new-nats-subject").getAttribute("aria-invalid") === "true" &&
		document.getElementById("new-nats-subject-error").textContent.length > 0`)
	if got := js[int](b, `document.querySelectorAll("details.destination").length`); got != 1 {
		t.Fatalf("a refused destination was listed: %d destinations", got)
	}
	b.screenshot("brokers-refused")
	b.mu.Lock()
	b.allow = nil
	b.mu.Unlock()
	setField(b, "#new-nats-subject", "events.orders")
	if js[string](b, `document.querySelector("#new-nats-subject").getAttribute("aria-invalid") || ""`) != "" {
		t.Error("the mark stayed once the field was changed")
	}
	b.exec(`document.getElementById("create-destination").requestSubmit()`)
	b.wait("the NATS destination", `[...document.querySelectorAll("details.destination")].some(d => d.querySelector(".badge.kind[data-type=nats]"))`)
	id := js[string](b, `[...document.querySelectorAll("details.destination")].find(d => d.querySelector(".badge.kind[data-type=nats]")).dataset.id`)
	sel := fmt.Sprintf(`details.destination[data-id=%q]`, id)
	b.wait("its facts", `!!document.querySelector('`+sel+` dd.config')`)
	if got := js[string](b, `document.querySelector('`+sel+` summary .target').textContent`); !strings.Contains(got, nb.url) || !strings.Contains(got, "events.orders") || strings.Contains(got, nb.pass) {
		t.Errorf("target shown as %q", got)
	}
	if got := js[string](b, `document.querySelector('`+sel+` dd.delivered').textContent`); !strings.Contains(got, "JetStream acknowledged") {
		t.Errorf("delivered shown as %q", got)
	}
	masked := "…" + nb.pass[len(nb.pass)-4:]
	if got := js[string](b, `document.querySelector('`+sel+` dd.config [data-field=password] .cfg-value').textContent`); got != masked {
		t.Errorf("password shown as %q, want %q", got, masked)
	}
	if js[bool](b, fmt.Sprintf(`document.body.innerText.includes(%q)`, nb.pass)) {
		t.Fatal("the password is in the page before a reveal")
	}
	if js[bool](b, `!!document.querySelector('`+sel+` button.rotate') || !!document.querySelector('`+sel+` .secret.id')`) {
		t.Error("a broker destination offers a signing secret")
	}
	b.check("the NATS destination")
	b.screenshot("brokers-destinations")

	// Delivered to JetStream.
	var ev struct{ ID string }
	if code := call(t, "POST", base+"/v1/event", `{"type":"order.paid","n":1}`, &ev, auth...); code != 202 {
		t.Fatalf("post an event: %d", code)
	}
	eventually(t, "the event in the stream", 20*time.Second, func() bool {
		m := nb.messages(t)
		return len(m) == 1 && strings.HasPrefix(m[0], "events.orders ") && strings.Contains(m[0], `"n":1`)
	})

	// Reveal shows the stored password; hide masks it again.
	b.exec(`document.querySelector('` + sel + ` dd.config button.reveal').click()`)
	b.wait("the password revealed", fmt.Sprintf(`(document.querySelector('%s dd.config [data-field=password] .cfg-value')||{}).textContent === %q`, sel, nb.pass))
	b.exec(`document.querySelector('` + sel + ` dd.config button.reveal').click()`)
	b.wait("masked again", fmt.Sprintf(`(document.querySelector('%s dd.config [data-field=password] .cfg-value')||{}).textContent === %q`, sel, masked))

	// Edit: the form holds the masked password; posted back as it is, with
	// a new subject, the stored password stays.
	b.exec(`document.querySelector('` + sel + ` button.edit').click()`)
	pw := fmt.Sprintf(`#edit-%s-nats-password`, id)
	b.wait("the edit form", fmt.Sprintf(`(document.querySelector(%q)||{}).value === %q`, pw, masked))
	if got := js[string](b, fmt.Sprintf(`document.querySelector("#edit-%s-type").value`, id)); got != "nats" {
		t.Fatalf("the edit form's type: %q", got)
	}
	if js[bool](b, `!document.querySelector('`+sel+` form.editing textarea[name=transform]').closest("[hidden]")`) {
		t.Error("the edit form of a broker destination offers a transformation")
	}
	setField(b, fmt.Sprintf("#edit-%s-nats-subject", id), "events.changed")
	b.screenshot("brokers-edit")
	b.exec(`document.querySelector('` + sel + ` form.editing').requestSubmit()`)
	b.wait("saved", `!document.querySelector('`+sel+` form.editing') && document.querySelector('`+sel+` summary .target').textContent.includes("events.changed")`)
	var stored struct {
		Config struct{ Subject, User, Password, URL string }
	}
	if code := call(t, "GET", base+"/v1/destinations/"+id+"/secret", nil, &stored, auth...); code != 200 {
		t.Fatalf("read the secrets: %d", code)
	}
	if stored.Config.Password != nb.pass || stored.Config.User != nb.user {
		t.Fatalf("after posting the mask back the stored credentials are %q/%q, want %q/%q", stored.Config.User, stored.Config.Password, nb.user, nb.pass)
	}
	var shown struct {
		Config struct{ Subject, Password string }
	}
	call(t, "GET", base+"/v1/destinations/"+id, nil, &shown, auth...)
	if shown.Config.Subject != "events.changed" || shown.Config.Password != masked {
		t.Fatalf("after the edit the API shows %+v", shown.Config)
	}
	if code := call(t, "POST", base+"/v1/event", `{"type":"order.paid","n":2}`, &ev, auth...); code != 202 {
		t.Fatalf("post an event: %d", code)
	}
	eventually(t, "the second event on the new subject, with the stored password", 20*time.Second, func() bool {
		m := nb.messages(t)
		return len(m) == 2 && strings.HasPrefix(m[1], "events.changed ") && strings.Contains(m[1], `"n":2`)
	})

	// The edit form's reveal puts the stored password in place of its
	// mask, and nothing over a value typed.
	b.exec(`document.querySelector('` + sel + ` button.edit').click()`)
	b.wait("the edit form again", fmt.Sprintf(`(document.querySelector(%q)||{}).value === %q`, pw, masked))
	b.exec(`document.querySelector('` + sel + ` button.reveal-config').click()`)
	b.wait("the password in the form", fmt.Sprintf(`document.querySelector(%q).value === %q`, pw, nb.pass))
	b.exec(`[...document.querySelectorAll('` + sel + ` form.editing button')].find(x => x.textContent === "Cancel").click()`)
	b.check("the edit")

	// Phone width: the list and the form fit.
	b.do("a phone's width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	b.visit("#/destinations/" + id)
	b.wait("the destination at a phone's width", `!!document.querySelector('`+sel+`[open] dd.config')`)
	if w := js[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the page is %d px wide at a 390 px viewport", w)
	}
	b.screenshot("brokers-destinations-phone")
	b.exec(`document.querySelector('` + sel + ` button.edit').click()`)
	b.wait("the edit form", fmt.Sprintf(`!!document.querySelector(%q)`, pw))
	if w := js[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the edit form is %d px wide at a 390 px viewport", w)
	}
	b.screenshot("brokers-edit-phone")
	if n := b.dialogs.Load(); n > 0 {
		t.Fatalf("%d JavaScript dialogs opened", n)
	}
	b.check("phone")
}
