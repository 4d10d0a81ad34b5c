package destination

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"fanout/webhook"
)

// FuzzValidate feeds the destinations API's input, a JSON object, through
// the decoding and validation that the API does, and checks that what
// Validate accepts is what the rest of fanout can use: an http(s) URL, a
// signing key, limits in range, filters Matches can read, and a destination
// that, stored as JSON and read back (the registry keeps it so), is still
// valid and the same. A refusal must be an *Error, which the API answers
// with 400 and its message.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"url":"https://example.com/hook"}`,
		`{"url":"http://10.0.0.1/x","filter":["order.*","*","user.created"],"max_concurrency":3,"rate_limit":2.5}`,
		`{"url":"https://h/p?q=1","headers":{"X-Team":"a b"},"retry":{"initial":"1s","max":30,"max_attempts":3}}`,
		`{"url":"https://h/","retry":{"max_age":"72h"},"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}`,
		`{"url":"https://h/","filter":["a*b"]}`,
		`{"url":"https://h/","filter":["order.*","user.created"]}`,
		`{"url":"https://h/","rate_limit":{"rate":100,"per":"minute","burst":10}}`,
		`{"url":"https://h/","rate_limit":{"rate":3,"per":"second"}}`,
		`{"url":"https://h/","rate_limit":{"rate":1,"per":"day","burts":2}}`,
		`{"url":"ftp://h/"}`,
		`{"url":"https://u:p@h/"}`,
		`{"url":"https://h/","headers":{"Webhook-Id":"x"}}`,
		`{"url":"https://h/","retry":{"initial":-1,"max_age":1e300}}`,
		`{"url":"https://h/#frag","max_concurrency":100000}`,
	} {
		f.Add([]byte(s))
	}
	guard := webhook.NewGuard(nil)
	f.Fuzz(func(t *testing.T, input []byte) {
		var d Destination
		if json.Unmarshal(input, &d) != nil {
			return
		}
		err := d.Validate(guard)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Error() == "" {
				t.Fatalf("Validate(%s) = %v: a refusal must be an *Error with a message", input, err)
			}
			return
		}
		if u, err := url.Parse(d.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil {
			t.Fatalf("Validate accepted the URL %q", d.URL)
		}
		if _, err := webhook.ParseSecret(d.Secret); err != nil || len(d.Keys(time.Now())) == 0 {
			t.Fatalf("Validate accepted a destination without a usable signing key: %q (%v)", d.Secret, err)
		}
		if d.MaxConcurrency < 1 || d.MaxConcurrency > MaxConcurrency || d.RateLimit.Rate < 0 {
			t.Fatalf("Validate accepted max_concurrency %d, rate_limit %g", d.MaxConcurrency, d.RateLimit.Rate)
		}
		if r := d.Retry; r != nil && (r.Initial < 0 || r.Max < 0 || r.MaxAge < 0 || r.MaxAge == 0 && r.MaxAttempts == 0) {
			t.Fatalf("Validate accepted the retry policy %+v", *r)
		}
		for _, typ := range eventTypesNear(d.Filter) {
			if got, want := d.Matches(typ), wantsRef(d.Filter, typ); got != want {
				t.Fatalf("filter %q: Matches(%q) = %v, want %v", d.Filter, typ, got, want)
			}
		}
		if err := headerFieldsValid(d.Headers); err != nil {
			t.Fatalf("Validate accepted a header that net/http refuses to send: %v", err)
		}

		stored, err := json.Marshal(&d)
		if err != nil {
			t.Fatalf("a valid destination does not marshal: %v", err)
		}
		var back Destination
		if err := json.Unmarshal(stored, &back); err != nil {
			t.Fatalf("a stored destination does not read back: %v\n%s", err, stored)
		}
		if err := back.Validate(guard); err != nil {
			t.Fatalf("a stored destination reads back invalid: %v\n%s", err, stored)
		}
		again, _ := json.Marshal(&back)
		if string(again) != string(stored) {
			t.Fatalf("a stored destination reads back different:\n%s\n%s", stored, again)
		}
	})
}

// wantsRef is the filter semantics README.md documents ("Filters"), written
// apart from Matches to be its oracle: no filter takes every event, typed or
// not; an entry that ends in * takes every type that starts with what comes
// before the * (so "*" takes every event, and "order.*" takes "order." but
// not "order" or an untyped event); any other entry takes exactly its type.
func wantsRef(filter []string, typ string) bool {
	if len(filter) == 0 {
		return true
	}
	for _, p := range filter {
		if stem, wildcard := strings.CutSuffix(p, "*"); wildcard {
			if len(typ) >= len(stem) && typ[:len(stem)] == stem {
				return true
			}
		} else if typ == p {
			return true
		}
	}
	return false
}

// eventTypesNear returns event types on both sides of each filter entry's
// edge: the entry itself, its stem with and without one more or one less
// byte, the entry with something before or after it, other case, and none.
func eventTypesNear(filter []string) []string {
	types := []string{"", "x", "order.paid"}
	for _, p := range filter {
		stem := strings.TrimSuffix(p, "*")
		types = append(types, p, stem, stem+"x", p+"x", "x"+p, strings.ToUpper(p), strings.ToLower(p))
		if stem != "" {
			types = append(types, stem[:len(stem)-1])
		}
	}
	return types
}

// TestMatches checks Matches against wantsRef on the filters README.md
// shows and their edges.
func TestMatches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		filter []string
		typ    string
		want   bool
	}{
		{nil, "", true},
		{nil, "order.paid", true},
		{[]string{"*"}, "", true},
		{[]string{"*"}, "anything", true},
		{[]string{"order.*"}, "order.paid", true},
		{[]string{"order.*"}, "order.", true},
		{[]string{"order.*"}, "order", false},
		{[]string{"order.*"}, "", false},
		{[]string{"order.*"}, "Order.paid", false},
		{[]string{"order.paid"}, "order.paid", true},
		{[]string{"order.paid"}, "order.paid.x", false},
		{[]string{"order.paid"}, "", false},
		{[]string{"user.created"}, "", false},
		{[]string{"user.created", "order.*"}, "order.x", true},
		{[]string{"user.created", "order.*"}, "user.deleted", false},
		{[]string{"user.created", "order.*"}, "user.created", true},
	}
	for _, tc := range tests {
		d := &Destination{URL: "https://example.com/hook", Filter: tc.filter}
		if err := d.Validate(nil); err != nil {
			t.Fatalf("filter %q: %v", tc.filter, err)
		}
		if got, ref := d.Matches(tc.typ), wantsRef(tc.filter, tc.typ); got != tc.want || ref != tc.want {
			t.Errorf("filter %q, type %q: Matches = %v, wantsRef = %v, want %v", tc.filter, tc.typ, got, ref, tc.want)
		}
	}
}

// TestValidate_HeaderFieldsNetHTTPRefuses: a destination's headers are sent
// with every delivery; net/http refuses to send a header name that is not an
// HTTP token, or a value with a control character, and the delivery then
// fails for good. So Validate must refuse them, with a 400 at the API.
func TestValidate_HeaderFieldsNetHTTPRefuses(t *testing.T) {
	t.Parallel()
	var accepted []string
	for _, h := range []map[string]string{
		{"X-Nul": "a\x00b"},
		{"X-Del": "a\x7fb"},
		{"X(Paren)": "v"},
		{"X-É": "v"},
		{"X,Comma": "v"},
	} {
		d := &Destination{URL: "https://example.com/hook", Headers: h}
		if err := d.Validate(nil); err == nil {
			accepted = append(accepted, fmt.Sprintf("%q", h))
		}
	}
	if len(accepted) > 0 {
		t.Errorf("Validate accepts headers net/http refuses to send, so every delivery would fail: %s",
			strings.Join(accepted, ", "))
	}
}

// headerFieldsValid checks header fields as net/http does before it sends
// them: names are tokens (RFC 9110, 5.6.2), values have no control
// characters but tab.
func headerFieldsValid(h map[string]string) error {
	for k, v := range h {
		if k == "" {
			return errors.New("empty header name")
		}
		for _, c := range []byte(k) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
				return fmt.Errorf("header name %q is not a token", k)
			}
		}
		for _, c := range []byte(v) {
			if c < ' ' && c != '\t' || c == 0x7f {
				return fmt.Errorf("header %s has a control character in %q", k, v)
			}
		}
	}
	return nil
}
