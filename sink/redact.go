package sink

import (
	"cmp"
	"regexp"
	"slices"
	"strings"

	"fanout/dispatch"
	"fanout/webhook"
)

// userinfo matches the credentials of a URL written inside a message:
// "nats://user:pass@", "amqp://guest:guest@", "redis://:pass@". Clients
// quote the URL they were given in their errors, and an error is written to
// attempts, logs and spans.
var userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s"']*@`)

// RedactString removes credentials from s: the userinfo of every URL in it
// becomes "…@", and every occurrence of each secret (a password, a token,
// a whole connection string) becomes "…" (a connection string its redacted
// form). Empty secrets are ignored; longer ones go first, so that a secret
// that contains another is removed whole.
func RedactString(s string, secrets ...string) string {
	sorted := slices.Clone(secrets)
	slices.SortFunc(sorted, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	for _, sec := range sorted {
		if sec == "" || !strings.Contains(s, sec) {
			continue
		}
		with := "…"
		if strings.Contains(sec, "://") {
			with = RedactURL(sec)
		}
		s = strings.ReplaceAll(s, sec, with)
	}
	return userinfo.ReplaceAllString(s, "${1}…@")
}

// RedactURL is a broker URL as it may be shown where the URL is not the
// point (an error, a log line): without its userinfo and query values, as
// webhook.RedactURL writes destination URLs.
func RedactURL(raw string) string { return webhook.RedactURL(raw) }

// Redact returns err with its message passed through RedactString. The
// result keeps err's classification (its dispatch.Status) but does not
// unwrap to it, so that nothing that walks the chain (a logger, a span
// recorder) finds the credentials again. nil stays nil; an err with nothing
// to redact is returned as it is.
func Redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := RedactString(msg, secrets...)
	if clean == msg {
		return err
	}
	return &redacted{msg: clean, status: dispatch.ErrorStatus(err)}
}

type redacted struct {
	msg    string
	status dispatch.Status
}

func (e *redacted) Error() string           { return e.msg }
func (e *redacted) Status() dispatch.Status { return e.status }
