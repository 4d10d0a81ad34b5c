package app

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/internal/httpapi"
	"fanout/internal/service"
	"fanout/webhook"
)

// rawReceiver is a destination that records every request it gets, with
// its Content-Type and whether its signature is valid for the bytes.
type rawReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	key    []byte
	got    map[string][]rawReceipt // by webhook-id, every receipt
	status atomic.Int32            // answer; 0 is 204
}

type rawReceipt struct {
	body        []byte
	contentType string
	signed      bool
}

func newRawReceiver(t *testing.T) *rawReceiver {
	r := &rawReceiver{got: map[string][]rawReceipt{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if code := r.status.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		ts, _ := strconv.ParseInt(req.Header.Get("webhook-timestamp"), 10, 64)
		r.mu.Lock()
		defer r.mu.Unlock()
		id := req.Header.Get("webhook-id")
		ok := r.key != nil && webhook.Verify(r.key, id, ts, body, req.Header.Get("webhook-signature"))
		r.got[id] = append(r.got[id], rawReceipt{body: body, contentType: req.Header.Get("Content-Type"), signed: ok})
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *rawReceiver) setSecret(t *testing.T, secret string) {
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.key = key
	r.mu.Unlock()
}

func (r *rawReceiver) receipts(id string) []rawReceipt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]rawReceipt(nil), r.got[id]...)
}

// check fails unless every receipt of id is body, with contentType and a
// valid signature, and there are at least n of them.
func (r *rawReceiver) check(t *testing.T, what, id string, body []byte, contentType string, n int) {
	t.Helper()
	eventually(t, what+": delivered", 10*time.Second, func() bool { return len(r.receipts(id)) >= n })
	for i, got := range r.receipts(id) {
		if !bytes.Equal(got.body, body) {
			t.Errorf("%s: receipt %d is %q, want the bytes sent, %q", what, i, got.body, body)
		}
		if got.contentType != contentType {
			t.Errorf("%s: receipt %d has Content-Type %q, want %q", what, i, got.contentType, contentType)
		}
		if !got.signed {
			t.Errorf("%s: receipt %d has no valid signature of its bytes", what, i)
		}
	}
}

// sendRaw posts body as a raw event of type typ and content type ct and
// returns the answer's status and the event's id or the error.
func sendRaw(t *testing.T, base, query string, body []byte, header ...string) (int, string) {
	t.Helper()
	status, b, _ := rawCall(t, "POST", base+"/v1/event"+query, string(body), header...)
	var out struct{ ID, Error string }
	_ = json.Unmarshal(b, &out)
	if status == 202 {
		return status, out.ID
	}
	return status, out.Error
}

// TestRun_RawBodies: with raw=true, a body that is not JSON (XML, bytes)
// is stored and delivered byte for byte with its Content-Type and a valid
// signature, routed by its type parameter, and shown in the API; payload
// filters see none of its fields, even when it happens to be JSON; a
// replay and a re-drive send the same bytes. JSON requests are as before,
// whatever their Content-Type, and bad raw requests store nothing.
func TestRun_RawBodies(t *testing.T) {
	t.Parallel()
	base, _ := startRun(t, []string{"--data", t.TempDir(), "--max-event-bytes", "4096"}, nil)
	all, orders, filtered, flaky := newRawReceiver(t), newRawReceiver(t), newRawReceiver(t), newRawReceiver(t)
	create := func(r *rawReceiver, extra string) string {
		var d struct{ ID, Secret string }
		if code := call(t, "POST", base+"/v1/destinations", `{"url":"`+r.URL+`"`+extra+`}`, &d); code != 201 {
			t.Fatalf("create a destination: %d", code)
		}
		r.setSecret(t, d.Secret)
		return d.ID
	}
	allID := create(all, "")
	create(orders, `,"filter":["order.*"]`)
	// The second condition would catch a raw event's stored form (a JSON
	// array whose element 0 is "raw") leaking into the filters.
	filteredID := create(filtered, `,"match":{"$or":[{"data.amount":{"$exist":true}},{"0":"raw"}]}`)
	flaky.status.Store(400)
	flakyID := create(flaky, `,"filter":["blob.*"]`)

	xml := []byte("<?xml version=\"1.0\"?>\n<order id=\"1\">caf\u00e9 &amp; <b>\"x\"</b>\t\\</order>\r\n")
	blob := make([]byte, 256)
	for i := range blob {
		blob[i] = byte(255 - i) // not UTF-8, every byte value
	}
	looksJSON := []byte(`{"type":"order.paid","data":{"amount":5}}`)
	const xmlType = "application/xml; charset=utf-8"
	code, xmlID := sendRaw(t, base, "?raw=true&type=order.created", xml, "Content-Type", xmlType, "Idempotency-Key", "xml-1")
	if code != 202 {
		t.Fatalf("raw XML: %d %s", code, xmlID)
	}
	if code, again := sendRaw(t, base, "?raw=true&type=order.created", xml, "Content-Type", xmlType, "Idempotency-Key", "xml-1"); code != 202 || again != xmlID {
		t.Errorf("the same raw event with the same Idempotency-Key: %d %s, want 202 and the first id %s", code, again, xmlID)
	}
	code, blobID := sendRaw(t, base, "?raw&type=blob.stored", blob, "Content-Type", "application/octet-stream")
	if code != 202 {
		t.Fatalf("raw bytes: %d %s", code, blobID)
	}
	// gzip on the wire: the body is the decompressed bytes, as for JSON.
	code, textID := sendRaw(t, base, "?raw=1&type=order.note", []byte(gz(string(looksJSON))), "Content-Type", "text/plain", "Content-Encoding", "gzip")
	if code != 202 {
		t.Fatalf("raw text: %d %s", code, textID)
	}
	// JSON requests, whatever their Content-Type, are JSON events as before.
	jsonEvents := map[string]string{}
	for _, ct := range []string{"application/json", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8", "application/xml", ""} {
		body := `{"type":"order.paid","data":{"amount":7},"ct":"` + ct + `"}`
		code, id := sendRaw(t, base, "", []byte(body), "Content-Type", ct)
		if code != 202 {
			t.Fatalf("JSON with Content-Type %q: %d %s", ct, code, id)
		}
		jsonEvents[id] = body
	}
	// raw=false is a JSON event, and a type parameter without raw=true is
	// not read: a JSON event's type is its field.
	code, id := sendRaw(t, base, "?raw=false&type=blob.x", []byte(`{"type":"order.paid","data":{"amount":8}}`), "Content-Type", "application/json")
	if code != 202 {
		t.Fatalf("raw=false: %d %s", code, id)
	}
	jsonEvents[id] = `{"type":"order.paid","data":{"amount":8}}`

	all.check(t, "XML", xmlID, xml, xmlType, 1)
	all.check(t, "bytes", blobID, blob, "application/octet-stream", 1)
	all.check(t, "text", textID, looksJSON, "text/plain", 1)
	orders.check(t, "XML to order.*", xmlID, xml, xmlType, 1)
	orders.check(t, "text to order.*", textID, looksJSON, "text/plain", 1)
	for id, body := range jsonEvents {
		all.check(t, "JSON "+id, id, []byte(body), "application/json", 1)
		filtered.check(t, "JSON to the payload filter "+id, id, []byte(body), "application/json", 1)
	}
	if n := len(orders.receipts(blobID)); n != 0 {
		t.Errorf("order.* got the blob.stored event %d times", n)
	}
	// Payload filters see no fields of a raw event, not even of one whose
	// body is JSON by chance.
	for _, id := range []string{xmlID, blobID, textID} {
		if n := len(filtered.receipts(id)); n != 0 {
			t.Errorf("the payload filter let raw event %s through (%d times)", id, n)
		}
	}
	if n := len(all.receipts(xmlID)); n != 1 {
		t.Errorf("the XML event sent twice with one Idempotency-Key was delivered %d times, want once", n)
	}

	// The API shows the body in a safe form: text when it is UTF-8, base64
	// otherwise, with its content type and type; the event is null.
	var ev struct {
		Event json.RawMessage
		Type  string
		Raw   *service.RawBody
	}
	call(t, "GET", base+"/v1/events/"+xmlID, nil, &ev)
	if string(ev.Event) != "null" || ev.Type != "order.created" || ev.Raw == nil || ev.Raw.Text != string(xml) ||
		ev.Raw.ContentType != xmlType || ev.Raw.Size != len(xml) || ev.Raw.Base64 != "" {
		t.Errorf("GET the XML event: %s %q %+v", ev.Event, ev.Type, ev.Raw)
	}
	ev.Raw = nil
	call(t, "GET", base+"/v1/events/"+blobID, nil, &ev)
	if got, err := base64.StdEncoding.DecodeString(ev.Raw.Base64); err != nil || !bytes.Equal(got, blob) || ev.Raw.Text != "" {
		t.Errorf("GET the bytes: %+v (%v)", ev.Raw, err)
	}
	// Listings by type, and the text search finds words of a text body.
	var page struct{ Events []struct{ ID, Type string } }
	call(t, "GET", base+"/v1/events?type=blob.*", nil, &page)
	if len(page.Events) != 1 || page.Events[0].ID != blobID {
		t.Errorf("events of type blob.*: %+v, want the raw bytes", page.Events)
	}
	call(t, "GET", base+"/v1/events?q="+url.QueryEscape("<b>"), nil, &page)
	if len(page.Events) != 1 || page.Events[0].ID != xmlID {
		t.Errorf("search for <b>: %+v, want the XML event", page.Events)
	}

	// A re-drive of a failed raw delivery sends the same bytes.
	var failed struct{ Deliveries []struct{ ID, State string } }
	eventually(t, "the blob's delivery to the refusing destination failed", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/deliveries?destination="+flakyID+"&state=failed", nil, &failed)
		return len(failed.Deliveries) == 1
	})
	flaky.status.Store(0)
	if code := call(t, "POST", base+"/v1/deliveries/"+failed.Deliveries[0].ID+"/retry", nil, nil); code != 202 {
		t.Fatalf("re-drive: %d", code)
	}
	flaky.check(t, "re-driven bytes", blobID, blob, "application/octet-stream", 1)

	// A replay sends them again, the same.
	var job service.ReplayView
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	if code := call(t, "POST", base+"/v1/destinations/"+allID+"/replay", `{"since":"`+since+`","force":true,"types":["order.created","blob.*"]}`, &job); code != 202 {
		t.Fatalf("replay: %d", code)
	}
	all.check(t, "replayed XML", xmlID, xml, xmlType, 2)
	all.check(t, "replayed bytes", blobID, blob, "application/octet-stream", 2)
	// A replay to the payload filter reads no fields of raw events either.
	if code := call(t, "POST", base+"/v1/destinations/"+filteredID+"/replay", `{"since":"`+since+`","force":true}`, &job); code != 202 {
		t.Fatalf("replay: %d", code)
	}
	eventually(t, "the replay to the payload filter done", 10*time.Second, func() bool {
		call(t, "GET", base+"/v1/replays/"+job.ID, nil, &job)
		return job.State == "done"
	})
	if job.Created != int64(len(jsonEvents)) {
		t.Errorf("the replay to the payload filter gave %d deliveries, want %d (the JSON events)", job.Created, len(jsonEvents))
	}
	for _, id := range []string{xmlID, blobID, textID} {
		if n := len(filtered.receipts(id)); n != 0 {
			t.Errorf("the replay to the payload filter sent raw event %s", id)
		}
	}

	// Bad requests get a 400 naming the problem, and store nothing.
	var before struct{ Events []struct{ ID string } }
	call(t, "GET", base+"/v1/events?limit=500", nil, &before)
	for _, bad := range []struct {
		name, path, ct, body string
		status               int
		want                 string
	}{
		{"raw JSON", "/v1/event?raw=true", "application/json", `{"a":1}`, 400, "without raw=true"},
		{"raw +json", "/v1/event?raw=true", "application/cloudevents+json", `{"a":1}`, 400, "is JSON"},
		{"no Content-Type", "/v1/event?raw=true", "", "<a/>", 400, "needs a Content-Type"},
		{"malformed Content-Type", "/v1/event?raw=true", "xml", "<a/>", 400, `"xml"`},
		{"wildcard Content-Type", "/v1/event?raw=true", "application/*", "<a/>", 400, `"application/*"`},
		{"curl -d's form type", "/v1/event?raw=true", "application/x-www-form-urlencoded", "<a/>", 400, "curl -d"},
		{"raw=yes", "/v1/event?raw=yes", "application/xml", "<a/>", 400, `raw must be true or false`},
		{"fanout's own type", "/v1/event?raw=true&type=fanout.test", "application/xml", "<a/>", 400, "fanout.*"},
		{"two types", "/v1/event?raw=true&type=a&type=b", "application/xml", "<a/>", 400, "2 times"},
		{"empty", "/v1/event?raw=true", "application/xml", "", 400, "empty"},
		{"too large", "/v1/event?raw=true", "application/octet-stream", strings.Repeat("x", 4097), 413, "--max-event-bytes"},
		{"a batch", "/v1/batch?raw=true", "application/xml", "<a/>", 400, "POST /v1/event"},
		// Today's 400 for a JSON request that is not JSON, as curl -d sends it.
		{"curl -d, not JSON", "/v1/event", "application/x-www-form-urlencoded", "type=order.paid", 400, "not valid JSON"},
		{"XML without raw=true", "/v1/event", "application/xml", "<a/>", 400, "not valid JSON"},
	} {
		var e httpapi.ErrorBody
		var header []string
		if bad.ct != "" {
			header = []string{"Content-Type", bad.ct}
		}
		status, b, _ := rawCall(t, "POST", base+bad.path, bad.body, header...)
		_ = json.Unmarshal(b, &e)
		if status != bad.status || !strings.Contains(e.Error, bad.want) {
			t.Errorf("%s: %d %q, want %d naming %s", bad.name, status, e.Error, bad.status, bad.want)
		}
	}
	var after struct{ Events []struct{ ID string } }
	call(t, "GET", base+"/v1/events?limit=500", nil, &after)
	if len(after.Events) != len(before.Events) {
		t.Errorf("bad requests stored %d events", len(after.Events)-len(before.Events))
	}

	// POST /v1/match explains that a raw event has no payload fields.
	var m service.MatchResult
	if code := call(t, "POST", base+"/v1/match", `{"filter":["order.*"],"match":{"data.amount":{"$exist":true}},"content_type":"application/xml","type":"order.created"}`, &m); code != 200 ||
		m.Matches || !strings.Contains(m.Note, "no payload fields") || len(m.Reasons) == 0 {
		t.Errorf("match a raw event: %d %+v", code, m)
	}
	if code := call(t, "POST", base+"/v1/match", `{"match":{"$type":{"$startsWith":"order."}},"content_type":"application/xml","type":"order.created"}`, &m); code != 200 || !m.Matches {
		t.Errorf("match a raw event by its type: %d %+v", code, m)
	}
	// An event given beside content_type is not read either.
	if code := call(t, "POST", base+"/v1/match", `{"match":{"data.amount":{"$exist":true}},"content_type":"text/plain","type":"x","event":{"data":{"amount":5}}}`, &m); code != 200 || m.Matches {
		t.Errorf("match a raw event whose body is JSON: %d %+v, want no match", code, m)
	}
	if code := call(t, "POST", base+"/v1/match", `{"content_type":"application/json","type":"x"}`, nil); code != 400 {
		t.Errorf("match a raw event of a JSON type: %d, want 400", code)
	}
}

// TestRun_TenantRawEvents: a raw event is its tenant's like a JSON one: a
// tenant's token cannot send one into another tenant, nor one without the
// ingest right, nor read another's; its Idempotency-Key is its tenant's.
func TestRun_TenantRawEvents(t *testing.T) {
	t.Parallel()
	f := newTenantFixture(t)
	body := "<invoice n=\"7\"/>"
	send := func(token, path, key string) (int, string) {
		status, b, _ := rawCall(t, "POST", f.base+path, body, "Authorization", "Bearer "+token,
			"Content-Type", "application/xml", "Idempotency-Key", key)
		var out struct{ ID, Error string }
		_ = json.Unmarshal(b, &out)
		return status, out.ID + out.Error
	}
	code, idA := send(f.tokens["acmeIngest"], "/v1/event?raw=true&type=invoice.sent", "inv-7")
	if code != 202 {
		t.Fatalf("acme's raw event: %d %s", code, idA)
	}
	eventually(t, "acme's raw event delivered to acme", 10*time.Second, func() bool { _, ok := f.recvA.has(idA); return ok })
	if got, _ := f.recvA.has(idA); string(got) != body {
		t.Errorf("acme got %q, want %q", got, body)
	}
	for _, tc := range []struct {
		name, token, path string
		want              int
	}{
		{"into another tenant", f.tokens["acmeIngest"], "/v1/tenants/globex/event?raw=true", 404},
		{"without the ingest right", f.tokens["acmeRead"], "/v1/event?raw=true", 403},
		{"without a token", "nope", "/v1/event?raw=true", 401},
	} {
		if code, msg := send(tc.token, tc.path, "other-"+strings.ReplaceAll(tc.name, " ", "-")); code != tc.want {
			t.Errorf("a raw event %s: %d %s, want %d", tc.name, code, msg, tc.want)
		}
	}
	// The same Idempotency-Key in another tenant is another event.
	code, idG := send(f.tokens["globexAll"], "/v1/event?raw=true&type=invoice.sent", "inv-7")
	if code != 202 || idG == idA {
		t.Errorf("globex's raw event with acme's key: %d %s (acme's is %s)", code, idG, idA)
	}
	if code, _ := f.as(t, f.tokens["globexAll"], "GET", "/v1/events/"+idA, nil); code != 404 {
		t.Errorf("globex reads acme's raw event: %d, want 404", code)
	}
	var page struct{ Events []struct{ ID string } }
	f.must(t, 200, f.tokens["globexAll"], "GET", "/v1/events?type=invoice.*", nil, &page)
	if len(page.Events) != 1 || page.Events[0].ID != idG {
		t.Errorf("globex's raw events: %+v, want only its own %s", page.Events, idG)
	}
	eventually(t, "globex's raw event delivered to globex", 10*time.Second, func() bool { _, ok := f.recvG.has(idG); return ok })
	if _, ok := f.recvG.has(idA); ok {
		t.Error("globex's destination got acme's raw event")
	}
}
