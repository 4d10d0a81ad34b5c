package sink

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
)

// Credentials are write-only, like signing secrets: a config is shown in
// full only in the answer of the call that set it, and Masked everywhere
// else. A form that shows the masked config and posts it back keeps the
// stored secrets (Unmask), but only to the same address: a change of the
// address that keeps a masked secret is refused, or anyone who may edit a
// destination could point it at their own server and receive the password.

// Ellipsis stands for the masked part of a value, as in destination.
const Ellipsis = "…"

// MaskValue masks a secret: "…" and its last four characters when it has at
// least 12, else "…" alone; "" stays "".
func MaskValue(v string) string {
	if v == "" {
		return ""
	}
	r := []rune(v)
	if len(r) < 12 {
		return Ellipsis
	}
	return Ellipsis + string(r[len(r)-4:])
}

// urlParts splits a URL with credentials into what comes before its
// password ("nats://user:"), the password (unescaped), and what follows it
// ("@host:4222/x"). ok is false when the URL has no password.
func urlParts(raw string) (before, password, after string, ok bool) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return "", "", "", false
	}
	rest := raw[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return "", "", "", false
	}
	user, pass, found := strings.Cut(rest[:at], ":")
	if !found {
		return "", "", "", false
	}
	p, err := url.PathUnescape(pass)
	if err != nil {
		p = pass
	}
	return raw[:i+3] + user + ":", p, rest[at:], true
}

// URLPassword is the password in a URL, "" when it has none.
func URLPassword(raw string) string {
	_, p, _, _ := urlParts(raw)
	return p
}

// maskURLs masks the password of each URL in a comma-separated list.
func maskURLs(list string) string {
	urls := strings.Split(list, ",")
	for i, u := range urls {
		if before, p, after, ok := urlParts(strings.TrimSpace(u)); ok && p != "" {
			urls[i] = before + MaskValue(p) + after
		}
	}
	return strings.Join(urls, ",")
}

// fields decodes a config as an object of raw fields.
func fields(raw json.RawMessage) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, &ConfigError{Msg: "want a JSON object"}
	}
	return m, nil
}

func stringField(m map[string]json.RawMessage, name string) (string, bool) {
	v, ok := m[name]
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

func setString(m map[string]json.RawMessage, name, v string) {
	b, _ := json.Marshal(v)
	m[name] = b
}

func marshal(m map[string]json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(m)
	return bytes.TrimSpace(buf.Bytes())
}

// Mask returns raw with the kind's secrets masked: each secret field's
// value as MaskValue writes it, and the password of each URL.
func (k *Kind) Mask(raw json.RawMessage) (json.RawMessage, error) {
	m, err := fields(raw)
	if err != nil {
		return nil, err
	}
	for _, f := range k.Secrets {
		if s, ok := stringField(m, f); ok {
			setString(m, f, MaskValue(s))
		}
	}
	for _, f := range k.URLs {
		if s, ok := stringField(m, f); ok {
			setString(m, f, maskURLs(s))
		}
	}
	return marshal(m), nil
}

// endpoint is what a config connects to, without its secrets: its URL
// fields without passwords, and its Address fields. A secret is kept for the same endpoint only.
func (k *Kind) endpoint(m map[string]json.RawMessage) string {
	var b strings.Builder
	for _, f := range k.URLs {
		s, _ := stringField(m, f)
		for _, u := range strings.Split(s, ",") {
			u = strings.TrimSpace(u)
			if before, _, after, ok := urlParts(u); ok {
				u = before + after
			}
			b.WriteString(u)
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	for _, f := range k.Address {
		var compact bytes.Buffer
		if v, ok := m[f]; ok && json.Compact(&compact, v) == nil {
			b.Write(compact.Bytes())
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Unmask returns the config a change sets from the config sent and the one
// stored: a secret sent back as the mask of the stored one is the stored
// one, when the change keeps the address (the URL fields, passwords
// aside); otherwise a masked value is refused, naming the field, as is any
// secret that starts with "…" (a mask of something else). stored may be
// nil (a new destination, or one of another type).
func (k *Kind) Unmask(sent, stored json.RawMessage) (json.RawMessage, error) {
	m, err := fields(sent)
	if err != nil {
		return nil, err
	}
	var old map[string]json.RawMessage
	if len(stored) > 0 {
		if old, err = fields(stored); err != nil {
			old = nil
		}
	}
	sameAddress := old != nil && k.endpoint(m) == k.endpoint(old)
	again := func(f string) error {
		if old != nil && !sameAddress {
			return &ConfigError{Field: f, Msg: "is masked: the address changed, so send the credential again (a stored one goes to the address it was set for only)"}
		}
		return &ConfigError{Field: f, Msg: "is masked (it starts with …): send the full value"}
	}
	for _, f := range k.Secrets {
		s, ok := stringField(m, f)
		if !ok || !strings.HasPrefix(s, Ellipsis) {
			continue
		}
		prev, _ := stringField(old, f)
		if sameAddress && prev != "" && s == MaskValue(prev) {
			setString(m, f, prev)
			continue
		}
		return nil, again(f)
	}
	for _, f := range k.URLs {
		s, ok := stringField(m, f)
		if !ok {
			continue
		}
		prev, _ := stringField(old, f)
		urls := strings.Split(s, ",")
		prevs := strings.Split(prev, ",")
		for i, u := range urls {
			if !strings.HasPrefix(URLPassword(strings.TrimSpace(u)), Ellipsis) {
				continue
			}
			if sameAddress && i < len(prevs) && maskURLs(prevs[i]) == u {
				urls[i] = prevs[i]
				continue
			}
			return nil, again(f)
		}
		setString(m, f, strings.Join(urls, ","))
	}
	return marshal(m), nil
}
