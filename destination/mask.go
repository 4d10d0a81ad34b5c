package destination

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	"fanout/webhook"
)

// Secrets are written once and then masked: a destination's signing
// secrets and header values (an Authorization, an API key) are shown in
// full only in the answer of the call that set them (creation, rotation)
// and by their own route (GET /v1/destinations/{id}/secret); everywhere
// else the destination is shown Masked.

// Ellipsis stands for the masked part of a value.
const Ellipsis = "…"

// maskShown is the number of trailing characters a mask keeps, and
// maskMin the length a value needs for any of them to be kept.
const (
	maskShown = 4
	maskMin   = 12
)

// MaskSecret masks a signing secret: "whsec_…abcd", its prefix and last
// four characters. A value too short to hide anything with four shown
// (fewer than 12 characters after the prefix, never a valid secret) keeps
// only the prefix; "" stays "" (no secret).
func MaskSecret(s string) string {
	if s == "" {
		return ""
	}
	rest, ok := strings.CutPrefix(s, webhook.SecretPrefix)
	prefix := ""
	if ok {
		prefix = webhook.SecretPrefix
	}
	return prefix + maskTail(rest)
}

// MaskHeader masks a header value: "…" and its last four characters when
// it has at least 12, else "…" alone; "" stays "".
func MaskHeader(v string) string {
	if v == "" {
		return ""
	}
	return maskTail(v)
}

func maskTail(v string) string {
	r := []rune(v)
	if len(r) < maskMin {
		return Ellipsis
	}
	return Ellipsis + string(r[len(r)-maskShown:])
}

// Masked returns a copy of the destination with its secrets and header
// values masked, for every answer but the one that set them. The copy
// shares nothing that the masking changes (or a slice) with d.
func (d *Destination) Masked() *Destination {
	m := *d
	m.Secret = MaskSecret(d.Secret)
	m.PreviousSecret = MaskSecret(d.PreviousSecret)
	m.Filter = slices.Clone(d.Filter)
	m.Config = d.maskedConfig // nil unless the registry masked it: never the stored one
	if d.Headers != nil {
		m.Headers = make(map[string]string, len(d.Headers))
		for k, v := range d.Headers {
			m.Headers[k] = MaskHeader(v)
		}
	}
	return &m
}

// Secrets are what Masked hides, in full: the answer of
// GET /v1/destinations/{id}/secret.
type Secrets struct {
	Secret                string            `json:"secret"`
	PreviousSecret        string            `json:"previous_secret,omitempty"`
	PreviousSecretExpires *time.Time        `json:"previous_secret_expires_at,omitempty"`
	Headers               map[string]string `json:"headers"`
	// Config is a broker destination's config with its credentials.
	Config json.RawMessage `json:"config,omitempty"`
}

// Secrets returns the destination's secrets and header values in full.
func (d *Destination) Secrets() *Secrets {
	h := make(map[string]string, len(d.Headers))
	for k, v := range d.Headers {
		h[k] = v
	}
	return &Secrets{Secret: d.Secret, PreviousSecret: d.PreviousSecret, PreviousSecretExpires: d.PreviousSecretExpires, Headers: h,
		Config: d.Config}
}

// UnmaskSecret is the secret a change sets: the stored one when the change
// sends back its mask (a form that showed the masked destination and
// posts it back), else the one sent, valid or not (Validate judges it).
func UnmaskSecret(sent, stored string) string {
	if stored != "" && sent == MaskSecret(stored) {
		return stored
	}
	return sent
}

// UnmaskHeaders are the headers a change sets: those sent, where a value
// equal to the mask of the stored value of the same header (its name in
// any case) is that stored value. It returns a new map.
func UnmaskHeaders(sent, stored map[string]string) map[string]string {
	if sent == nil {
		return nil
	}
	out := make(map[string]string, len(sent))
	for k, v := range sent {
		out[k] = v
		old, ok := stored[k]
		if !ok {
			for sk, sv := range stored {
				if strings.EqualFold(sk, k) {
					old, ok = sv, true
					break
				}
			}
		}
		if ok && old != "" && v == MaskHeader(old) {
			out[k] = old
		}
	}
	return out
}
