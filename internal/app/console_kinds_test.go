package app

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"fanout/sink"
	"fanout/sink/amqpsink"
	"fanout/sink/ebsink"
	"fanout/sink/kafkasink"
	"fanout/sink/kinds"
	"fanout/sink/natssink"
	"fanout/sink/pubsubsink"
	"fanout/sink/redissink"
	"fanout/sink/s3sink"
	"fanout/sink/snssink"
	"fanout/sink/sqssink"
)

// jsonFields are the JSON names of a config struct's fields, embedded
// structs' included.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// TestConsole_KindForms checks kinds.js, the forms of the broker kinds
// that the console and the portal share, against the kinds themselves:
// every kind fanout offers has a form; every field of a kind's Config has
// an input (none left to the advanced JSON box); a config filled in the
// form reads back as the same object, which the kind's own strict parser
// accepts (so the form's names are the config's); a required field left
// empty is refused naming it; an error of the API naming a field
// ("config.subject: ...") marks that input; values that look like markup
// stay values. The portal serves the console's copy of the file.
func TestConsole_KindForms(t *testing.T) {
	path := browserPath()
	if path == "" {
		t.Skip("no Chromium here (apt-get install chromium): the console's browser tests did not run")
	}
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir()}, nil)

	// The portal's kinds.js is the console's.
	_, console, _ := rawCall(t, "GET", base+"/console/kinds.js", nil)
	status, portal, hdr := rawCall(t, "GET", base+"/portal/acme/kinds.js", nil)
	if status != 200 || string(portal) != string(console) || !strings.Contains(string(console), "FanoutKinds") {
		t.Fatalf("the portal's kinds.js: %d, %d bytes, the console's %d bytes", status, len(portal), len(console))
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") || hdr.Get("Content-Security-Policy") == "" || hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("the portal's kinds.js is served as %q with headers %v", ct, hdr)
	}

	b := newBrowser(t, path)
	b.do("open the console's page", chromedp.Navigate(base+"/console/"))
	b.wait("kinds.js", `!!window.FanoutKinds`)

	configs := map[string]reflect.Type{
		"nats": reflect.TypeFor[natssink.Config](), "redis": reflect.TypeFor[redissink.Config](),
		"rabbitmq": reflect.TypeFor[amqpsink.Config](), "kafka": reflect.TypeFor[kafkasink.Config](),
		"sqs": reflect.TypeFor[sqssink.Config](), "sns": reflect.TypeFor[snssink.Config](),
		"eventbridge": reflect.TypeFor[ebsink.Config](), "s3": reflect.TypeFor[s3sink.Config](),
		"pubsub": reflect.TypeFor[pubsubsink.Config](),
	}
	var formFields map[string][]string
	if err := json.Unmarshal([]byte(js[string](b, `JSON.stringify(Object.fromEntries(FanoutKinds.list.filter(k => k.fields).map(k => [k.name, k.fields.map(f => f.name)])))`)), &formFields); err != nil {
		t.Fatal(err)
	}
	for _, k := range kinds.All(sink.Ambient{}) {
		typ, ok := configs[k.Name]
		if !ok {
			t.Errorf("kind %s: this test does not know its Config type: add it", k.Name)
			continue
		}
		form, ok := formFields[k.Name]
		if !ok {
			t.Errorf("kind %s has no form in kinds.js", k.Name)
			continue
		}
		for _, f := range jsonFields(typ) {
			if !slices.Contains(form, f) {
				t.Errorf("kind %s: config field %q has no input in kinds.js", k.Name, f)
			}
		}
		for _, f := range form {
			if !slices.Contains(jsonFields(typ), f) {
				t.Errorf("kind %s: kinds.js has an input %q that its Config does not have", k.Name, f)
			}
		}
		// The form's secrets are the kind's.
		secret := js[[]string](b, fmt.Sprintf(`FanoutKinds.list.find(k => k.name === %q).fields.filter(f => f.secret).map(f => f.name)`, k.Name))
		if !slices.Equal(slices.Sorted(slices.Values(secret)), slices.Sorted(slices.Values(k.Secrets))) {
			t.Errorf("kind %s: kinds.js masks %v, the kind's secrets are %v", k.Name, secret, k.Secrets)
		}
	}

	// Every field filled: the form reads back the same config, and the
	// kind parses it.
	aws := `"region":"eu-west-1","access_key_id":"AKIAEXAMPLE0001","secret_access_key":"secret-access-key-0123456789","session_token":"session-token-0123456789","endpoint_url":"http://127.0.0.1:5000"`
	full := map[string]string{
		"nats":        `{"url":"nats://127.0.0.1:4222,tls://127.0.0.2:4222","subject":"events.orders","stream":"ORDERS","user":"fanout","password":"nats-password-0123"}`,
		"redis":       `{"url":"redis://127.0.0.1:6379/2","stream":"<img src=x onerror=alert(1)>","password":"redis-password-0123","maxlen":1000,"exact":true,"dedup_window":"5m"}`,
		"rabbitmq":    `{"url":"amqp://u:long-password-1@127.0.0.1:5672/vh","exchange":"events","routing_key":"events.{type}","password":"amqp-password-0123","mandatory":false,"channels":4}`,
		"kafka":       `{"brokers":["127.0.0.1:9092","127.0.0.2:9092"],"topic":"events","partition_key":"data.customer","tls":true,"sasl":"scram-sha-256","username":"u","password":"kafka-password-0123"}`,
		"sqs":         `{"queue_url":"https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo",` + aws + `,"message_group_id":"g"}`,
		"sns":         `{"topic_arn":"arn:aws:sns:eu-west-1:123456789012:orders.fifo",` + aws + `,"subject":"Orders","message_group_id":"g"}`,
		"eventbridge": `{"event_bus":"orders",` + aws + `,"source":"shop","detail_type":"Order","envelope":true}`,
		"s3":          `{"bucket":"my-events",` + aws + `,"key_template":"x/{event_id}","storage_class":"STANDARD_IA","path_style":false}`,
		"pubsub":      `{"project_id":"my-project","topic":"orders","emulator_host":"127.0.0.1:8085","ordering":true}`,
	}
	reg := kinds.Registry(sink.Ambient{})
	for _, k := range kinds.All(sink.Ambient{}) {
		raw, ok := full[k.Name]
		if !ok {
			t.Errorf("kind %s: no full config in this test", k.Name)
			continue
		}
		if _, err := reg.Parse(k.Name, json.RawMessage(raw)); err != nil {
			t.Errorf("kind %s: the test's config does not parse: %v", k.Name, err)
			continue
		}
		got := js[string](b, fmt.Sprintf(`(() => {
			const f = FanoutKinds.configForm(%q, %s, {idPrefix: "t"});
			document.getElementById("main").replaceChildren(f.node);
			return JSON.stringify(f.read());
		})()`, k.Name, raw))
		var want, have map[string]any
		_ = json.Unmarshal([]byte(raw), &want)
		_ = json.Unmarshal([]byte(got), &have)
		if !reflect.DeepEqual(want, have) {
			t.Errorf("kind %s: the form read back\n%s\nwant\n%s", k.Name, got, raw)
		}
		if _, err := reg.Parse(k.Name, json.RawMessage(got)); err != nil {
			t.Errorf("kind %s: the form's config does not parse: %v", k.Name, err)
		}
		// The markup-looking value is an input's value, not markup.
		if n := js[int](b, `document.querySelectorAll("#main img").length`); n != 0 {
			t.Errorf("kind %s: a config value became markup", k.Name)
		}
	}

	// Empty: the first required field is refused by name; an API error
	// naming a field marks it; one of the config as a whole opens the
	// advanced box; one of no field is not the form's.
	for _, tc := range []struct{ kind, field string }{{"nats", "url"}, {"kafka", "brokers"}, {"s3", "bucket"}, {"pubsub", "project_id"}} {
		got := js[string](b, fmt.Sprintf(`(() => {
			const f = FanoutKinds.configForm(%q, null, {idPrefix: "e"});
			document.getElementById("main").replaceChildren(f.node);
			try { f.read(); return "read"; } catch (e) { return e.field + "|" + document.getElementById("e-%s-%s").getAttribute("aria-invalid"); }
		})()`, tc.kind, tc.kind, tc.field))
		if got != tc.field+"|true" {
			t.Errorf("kind %s empty: %q, want %q marked", tc.kind, got, tc.field)
		}
	}
	got := js[string](b, `(() => {
		const f = FanoutKinds.configForm("nats", {url: "nats://h:4222", subject: "a"}, {idPrefix: "f"});
		document.getElementById("main").replaceChildren(f.node);
		const r = [];
		r.push(f.fail(new Error("config.subject: <b>invalid</b> subject")));
		r.push(document.getElementById("f-nats-subject").getAttribute("aria-invalid"));
		r.push(document.getElementById("f-nats-subject-error").textContent);
		r.push(document.querySelectorAll("#main b").length);
		r.push(f.fail(new Error("config: want a JSON object")));
		r.push(document.querySelector("#main details.advanced").open);
		r.push(f.fail(new Error("description: too long")));
		return JSON.stringify(r);
	})()`)
	if want := `[true,"true","<b>invalid</b> subject",0,true,true,false]`; got != want {
		t.Errorf("fail(): %s, want %s", got, want)
	}
	// A masked secret is kept in the form as the API gave it, and reveal
	// replaces masks only.
	got = js[string](b, `(() => {
		const f = FanoutKinds.configForm("nats", {url: "nats://u:…abcd@h:4222", subject: "a", password: "…wxyz", token: "…0000"}, {idPrefix: "m"});
		document.getElementById("main").replaceChildren(f.node);
		document.getElementById("m-nats-token").value = "typed-token";
		const n = f.reveal({url: "nats://u:secret-abcd@h:4222", password: "full-password-wxyz", token: "stored-token-0000"});
		return JSON.stringify([n, f.read()]);
	})()`)
	if want := `[2,{"url":"nats://u:secret-abcd@h:4222","subject":"a","password":"full-password-wxyz","token":"typed-token"}]`; got != want {
		t.Errorf("reveal: %s, want %s", got, want)
	}
	b.check("the kind forms")
}
