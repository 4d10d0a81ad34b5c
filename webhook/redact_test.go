package webhook

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"https://example.com/hooks", "https://example.com/hooks"},
		{"https://example.com:8443/a/b?x=1", "https://example.com:8443/a/b?x=…"},
		{"https://example.com/hook?api_key=SECRET&sig=abc&flag", "https://example.com/hook?api_key=…&sig=…&…"},
		{"https://user:pass@example.com/", "https://…@example.com/"},
		{"https://token@example.com/", "https://…@example.com/"},
		{"https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
			"https://hooks.slack.com/services/T00000000/B00000000/…"},
		{"https://discord.com/api/webhooks/123456789012345678/abc-DEF_ghi-jkl_MNO-pqr",
			"https://discord.com/api/webhooks/…/…"},
		{"https://example.com/fifteen-chars-", "https://example.com/fifteen-chars-"},
		{"https://example.com/sixteen-chars-xx", "https://example.com/…"},
		{"https://example.com/with.dot.in.a.long.segment", "https://example.com/with.dot.in.a.long.segment"},
		{"https://example.com/a#frag", "https://example.com/a#…"},
		{"https://example.com/a?", "https://example.com/a?"},
		{"http://[::1]:80/x", "http://[::1]:80/x"},
		{"%zz", "(a URL that does not parse)"},
	}
	for _, tc := range tests {
		if got := RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRedactError: net/http's errors name the whole request URL; what
// fanout keeps of them names it redacted, and still unwraps to the cause.
func TestRedactError(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection refused")
	raw := "http://u:pw@example.com/x/ABCDEFGHIJKLMNOPQRST?api_key=SECRET"
	for _, err := range []error{
		&url.Error{Op: "Post", URL: raw, Err: cause},
		&wrapped{&url.Error{Op: "Post", URL: raw, Err: cause}},
	} {
		got := redactError(err)
		for _, secret := range []string{"pw", "ABCDEFGHIJKLMNOPQRST", "SECRET"} {
			if strings.Contains(got.Error(), secret) {
				t.Errorf("redactError(%v) = %q: still holds %q", err, got, secret)
			}
		}
		if !errors.Is(got, cause) || !strings.Contains(got.Error(), "example.com") {
			t.Errorf("redactError(%v) = %q: lost its cause or its host", err, got)
		}
	}
}

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "sending: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }
