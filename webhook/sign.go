package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Signatures follow Standard Webhooks (standardwebhooks.com), the scheme of
// Svix and most webhook senders, so that receivers can verify fanout's
// deliveries with any of its libraries:
//
//	webhook-id:        the event id, the same on every attempt
//	webhook-timestamp: Unix seconds of this attempt
//	webhook-signature: "v1,<base64 HMAC-SHA256 of id.timestamp.body>",
//	                   one per secret in force, space-separated
//
// A secret is "whsec_" followed by the base64 of 24 to 64 random bytes; the
// HMAC key is those bytes.

// SecretPrefix starts every signing secret.
const SecretPrefix = "whsec_"

// GenerateSecret returns a new signing secret of 32 random bytes.
func GenerateSecret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("webhook: crypto/rand failed: %v", err)) // the OS is broken
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

// ParseSecret returns the key of a "whsec_..." secret.
func ParseSecret(secret string) ([]byte, error) {
	rest, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("a signing secret starts with %q", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return nil, errors.New("a signing secret is whsec_ followed by base64")
	}
	if len(key) < 24 || len(key) > 64 {
		return nil, fmt.Errorf("a signing secret holds 24 to 64 bytes, this one %d", len(key))
	}
	return key, nil
}

// Sign returns the webhook-signature value for a delivery: one "v1,..."
// entry per key, space-separated, so that a receiver that knows either the
// new or the old secret of a rotation accepts it.
func Sign(keys [][]byte, id string, timestamp int64, body []byte) string {
	var out strings.Builder
	ts := strconv.FormatInt(timestamp, 10)
	for i, key := range keys {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(ts))
		mac.Write([]byte{'.'})
		mac.Write(body)
		if i > 0 {
			out.WriteByte(' ')
		}
		out.WriteString("v1,")
		out.WriteString(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return out.String()
}

// Verify reports whether a webhook-signature value carries a valid v1
// signature by key. It is what a receiver does; fanout uses it in tests and
// in the demonstration destination.
func Verify(key []byte, id string, timestamp int64, body []byte, header string) bool {
	want := Sign([][]byte{key}, id, timestamp, body)
	for _, sig := range strings.Fields(header) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return true
		}
	}
	return false
}
