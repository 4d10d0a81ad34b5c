package webhook

import (
	"errors"
	"net/url"
	"strings"
)

// RedactURL returns a destination URL as it may be written where the URL is
// not the point: in an error, a log line, a span or an operational event.
// Destination URLs carry secrets: a password in the userinfo, an API key in
// the query, a token as a path segment (Slack, Discord and Teams webhook
// URLs are nothing but that). So the userinfo and every query value become
// "…", and so does every path segment of 16 or more letters, digits, '-'
// and '_': the shape of those tokens. Scheme, host, port and the rest of
// the path stay, which is what a reader needs to tell destinations apart.
// The URL as configured is shown only where the destination itself is.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a URL that does not parse)"
	}
	return Redact(u)
}

// Redact is RedactURL of a parsed URL.
func Redact(u *url.URL) string {
	var b strings.Builder
	if u.Scheme != "" {
		b.WriteString(u.Scheme)
		b.WriteString("://")
	}
	if u.User != nil {
		b.WriteString("…@")
	}
	b.WriteString(u.Host)
	segments := strings.Split(u.EscapedPath(), "/")
	for i, s := range segments {
		if tokenLike(s) {
			segments[i] = "…"
		}
	}
	b.WriteString(strings.Join(segments, "/"))
	if u.RawQuery != "" || u.ForceQuery {
		b.WriteByte('?')
		for i, part := range strings.Split(u.RawQuery, "&") {
			if i > 0 {
				b.WriteByte('&')
			}
			if k, _, ok := strings.Cut(part, "="); ok {
				b.WriteString(k)
				b.WriteString("=…")
			} else if part != "" {
				b.WriteString("…")
			}
		}
	}
	if u.Fragment != "" {
		b.WriteString("#…")
	}
	return b.String()
}

// tokenLike reports whether a path segment looks like a secret token.
func tokenLike(s string) bool {
	if len(s) < 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// redactError returns err with the URL of a *url.Error (net/http's errors
// carry the whole request URL) redacted, keeping what it wraps.
func redactError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		c := *ue
		c.URL = RedactURL(ue.URL)
		if err == error(ue) {
			return &c
		}
		return &redacted{msg: strings.ReplaceAll(err.Error(), ue.URL, c.URL), err: err}
	}
	return err
}

// redacted is an error whose message had a URL redacted; it unwraps to the
// original, for classification.
type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }
