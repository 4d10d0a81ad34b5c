package transform

import (
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzDecodeResult: whatever a handler answers, DecodeResult either
// refuses it or returns a request fanout may send: an allowed method, a
// path that keeps the destination's host, a query without a fragment,
// headers that are valid and none of fanout's own.
func FuzzDecodeResult(f *testing.F) {
	for _, s := range []string{
		`{"method":"POST","path":"/a","query":"b=1","headers":{"X":"y"},"payload":{"k":[1,2]}}`,
		`{"cancel":"why"}`, `{"cancel":true}`, `{"method":"put","path":"//h/x"}`,
		`{"method":"POST","path":"/","headers":{"webhook-id":"x"}}`, `{"method":"POST","path":"/%zz","query":"?x#y"}`,
		`null`, `[]`, `{"method":"DELETE","path":"/\u0000"}`,
	} {
		f.Add([]byte(s))
	}
	base, _ := url.Parse("https://receiver.example:8443/hooks")
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := DecodeResult(b)
		if err != nil {
			if res != nil {
				t.Fatal("a result with an error")
			}
			return
		}
		if res.Cancel {
			return
		}
		if !contains(Methods, res.Method) {
			t.Fatalf("method %q", res.Method)
		}
		for k, v := range res.Headers {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) || contains(ReservedHeaders, strings.ToLower(k)) {
				t.Fatalf("header %q: %q", k, v)
			}
		}
		if strings.ContainsAny(res.Query, "# \r\n") {
			t.Fatalf("query %q", res.Query)
		}
		u := *base
		u.RawQuery = res.Query
		if err := setPath(&u, res.Path); err != nil {
			return // refused by Run
		}
		got, err := url.Parse(u.String())
		if err != nil || got.Host != base.Host || got.Scheme != base.Scheme {
			t.Fatalf("path %q query %q: %s (%v) leaves the destination's host", res.Path, res.Query, u.String(), err)
		}
	})
}
