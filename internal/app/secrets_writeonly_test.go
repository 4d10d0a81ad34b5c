package app

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/destination"
	"fanout/webhook"
)

// keyedReceiver records, by webhook-id, the Authorization header of each
// delivery whose signature one of the keys it was given verifies, and
// counts the others.
type keyedReceiver struct {
	*httptest.Server
	mu   sync.Mutex
	keys [][]byte
	auth map[string]string
	bad  int
}

func newKeyedReceiver(t *testing.T, secrets ...string) *keyedReceiver {
	r := &keyedReceiver{auth: map[string]string{}}
	for _, s := range secrets {
		k, err := webhook.ParseSecret(s)
		if err != nil {
			t.Fatal(err)
		}
		r.keys = append(r.keys, k)
	}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		ts, _ := strconv.ParseInt(req.Header.Get("webhook-timestamp"), 10, 64)
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, k := range r.keys {
			if webhook.Verify(k, req.Header.Get("webhook-id"), ts, body, req.Header.Get("webhook-signature")) {
				r.auth[req.Header.Get("webhook-id")] = req.Header.Get("Authorization")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		r.bad++
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *keyedReceiver) got(id string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.auth[id]
	return a, ok
}

// TestRun_SecretsWriteOnly: a destination's signing secrets and header
// values are in full in the answers of its creation, its rotation and
// GET .../secret, and in no other answer (the raw bytes are searched, so
// that no field, name or encoding can hide them); a PATCH that sends the
// masked values back keeps the real ones, which still sign and go out.
func TestRun_SecretsWriteOnly(t *testing.T) {
	t.Parallel()
	const (
		token = "writeonly-test-token-0123456789"
		// The secret given at creation, a long header value, a short one.
		secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
		auth   = "Bearer dest-token-0123456789abcdef"
		short  = "tiny42"
	)
	recv := newKeyedReceiver(t, secret)
	base, stop := startRun(t, []string{"--data", t.TempDir(), "--api-token", token, "--retry-initial", "20ms", "--retry-max", "100ms"}, nil)
	bearer := []string{"Authorization", "Bearer " + token}
	do := func(method, path string, body any) (int, []byte, http.Header) {
		t.Helper()
		return rawCall(t, method, base+path, body, bearer...)
	}
	// hides fails unless the answer holds none of the values in full.
	hides := func(what string, answer []byte, values ...string) {
		t.Helper()
		for _, v := range values {
			if bytes.Contains(answer, []byte(v)) {
				t.Fatalf("%s: the answer holds %q in full: %s", what, v, answer)
			}
		}
	}
	shows := func(what string, answer []byte, values ...string) {
		t.Helper()
		for _, v := range values {
			if !bytes.Contains(answer, []byte(v)) {
				t.Fatalf("%s: the answer lacks %q: %s", what, v, answer)
			}
		}
	}
	maskedSecret, maskedAuth := "whsec_…LaSw", "…cdef"

	// Creation shows what the caller set, in full.
	code, b, h := do("POST", "/v1/destinations", map[string]any{"url": recv.URL + "/hook", "secret": secret,
		"headers": map[string]string{"Authorization": auth, "X-Short": short}})
	if code != 201 {
		t.Fatalf("create: %d %s", code, b)
	}
	shows("create", b, secret, auth, short)
	if h.Get("Cache-Control") != "no-store" {
		t.Errorf("create: Cache-Control %q, want no-store", h.Get("Cache-Control"))
	}
	var d destination.Destination
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	path := "/v1/destinations/" + d.ID

	// Every read masks them.
	code, b, _ = do("GET", path, nil)
	if code != 200 {
		t.Fatalf("get: %d %s", code, b)
	}
	hides("get", b, secret, auth, short)
	var got destination.Destination
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Secret != maskedSecret || got.Headers["Authorization"] != maskedAuth || got.Headers["X-Short"] != "…" {
		t.Fatalf("get: secret %q, headers %q; want %q and %q, …", got.Secret, got.Headers, maskedSecret, maskedAuth)
	}
	code, b, _ = do("GET", "/v1/destinations", nil)
	if code != 200 || !bytes.Contains(b, []byte(d.ID)) {
		t.Fatalf("list: %d %s", code, b)
	}
	hides("list", b, secret, auth, short)

	// A PATCH answer masks them; a PATCH that sends the masks back (the
	// console's edit form posts what it showed) keeps the real values.
	code, b, _ = do("PATCH", path, map[string]any{"description": "orders"})
	if code != 200 {
		t.Fatalf("patch: %d %s", code, b)
	}
	hides("patch", b, secret, auth, short)
	code, b, _ = do("PATCH", path, map[string]any{"description": "orders, edited", "secret": got.Secret, "headers": got.Headers})
	if code != 200 {
		t.Fatalf("patch with the masks sent back: %d %s", code, b)
	}
	hides("patch with the masks", b, secret, auth, short)
	code, b, h = do("GET", path+"/secret", nil)
	if code != 200 {
		t.Fatalf("secret: %d %s", code, b)
	}
	var s destination.Secrets
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Secret != secret || s.Headers["Authorization"] != auth || s.Headers["X-Short"] != short || len(s.Headers) != 2 {
		t.Fatalf("after a PATCH of the masks, the secrets are %+v: the masks were stored", s)
	}
	if h.Get("Cache-Control") != "no-store" {
		t.Errorf("secret: Cache-Control %q, want no-store", h.Get("Cache-Control"))
	}
	// The real values still sign and go out.
	var ev struct{ ID string }
	if code := call(t, "POST", base+"/v1/event", `{"type":"order.paid"}`, &ev, bearer...); code != 202 {
		t.Fatalf("event: %d", code)
	}
	eventually(t, "the delivery, signed with the secret", 10*time.Second, func() bool { _, ok := recv.got(ev.ID); return ok })
	if a, _ := recv.got(ev.ID); a != auth {
		t.Fatalf("delivered with Authorization %q, want %q", a, auth)
	}

	// A secret that is not one is refused, a mask that is not this
	// secret's too (it is taken literally); a new header value replaces
	// the old one, and a header left out is removed.
	for _, bad := range []string{"hunter2", "whsec_…abcd", "whsec_…"} {
		if code, b, _ := do("PATCH", path, map[string]any{"secret": bad}); code != 400 || !strings.Contains(string(b), "secret") {
			t.Fatalf("PATCH secret %q: %d %s, want 400", bad, code, b)
		}
	}
	const auth2 = "Bearer rotated-token-9876543210"
	code, b, _ = do("PATCH", path, map[string]any{"headers": map[string]string{"authorization": auth2, "X-Short": "…"}})
	if code != 200 {
		t.Fatalf("patch headers: %d %s", code, b)
	}
	hides("patch headers", b, auth2, short)
	code, b, _ = do("PATCH", path, map[string]any{"headers": map[string]string{"authorization": "…3210"}})
	if code != 200 {
		t.Fatalf("patch headers: %d %s", code, b)
	}
	_, b, _ = do("GET", path+"/secret", nil)
	s = destination.Secrets{}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Secret != secret || len(s.Headers) != 1 || s.Headers["authorization"] != auth2 {
		t.Fatalf("secrets %+v, want the secret kept, the new Authorization kept through its mask, X-Short removed", s)
	}

	// Pause and resume answer masked.
	if code, b, _ := do("PATCH", path, map[string]any{"paused": true}); code != 200 {
		t.Fatalf("pause: %d %s", code, b)
	}
	code, b, _ = do("POST", path+"/resume", nil)
	if code != 200 {
		t.Fatalf("resume: %d %s", code, b)
	}
	hides("resume", b, secret, auth2)

	// Rotation shows the new secret and the previous one in full, once;
	// the header values, which it does not set, stay masked.
	code, b, h = do("POST", path+"/rotate-secret", nil)
	if code != 200 {
		t.Fatalf("rotate: %d %s", code, b)
	}
	var rotated destination.Destination
	if err := json.Unmarshal(b, &rotated); err != nil {
		t.Fatal(err)
	}
	if _, err := webhook.ParseSecret(rotated.Secret); err != nil || rotated.Secret == secret || rotated.PreviousSecret != secret {
		t.Fatalf("rotate: secret %q, previous %q; want a new secret in full and %q", rotated.Secret, rotated.PreviousSecret, secret)
	}
	hides("rotate", b, auth2)
	if h.Get("Cache-Control") != "no-store" {
		t.Errorf("rotate: Cache-Control %q, want no-store", h.Get("Cache-Control"))
	}
	for _, p := range []string{path, "/v1/destinations"} {
		_, b, _ = do("GET", p, nil)
		hides("GET "+p+" after the rotation", b, rotated.Secret, secret, auth2)
		shows("GET "+p+" after the rotation", b, destination.MaskSecret(rotated.Secret), maskedSecret)
	}
	_, b, _ = do("GET", path+"/secret", nil)
	shows("secret after the rotation", b, rotated.Secret, secret, auth2, `"previous_secret_expires_at"`)

	// The secret route of an unknown destination is a 404, and without
	// the token a 401 that holds nothing.
	if code, _, _ := do("GET", "/v1/destinations/nope/secret", nil); code != 404 {
		t.Fatalf("secret of an unknown destination: %d", code)
	}
	if code, b, _ := rawCall(t, "GET", base+path+"/secret", nil); code != 401 {
		t.Fatalf("secret without a token: %d %s", code, b)
	} else {
		hides("secret without a token", b, rotated.Secret, secret, auth2)
	}
	recv.mu.Lock()
	bad := recv.bad
	recv.mu.Unlock()
	if bad != 0 {
		t.Fatalf("%d deliveries were not signed with the secret", bad)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
