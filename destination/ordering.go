package destination

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Ordering makes a destination receive the events of one key one at a
// time, in the order fanout received them (ordered delivery). Key says
// where an event's key is: "$type" (its type), "$tenant" (its tenant), or a
// dotted path into its payload ("customer.id", "items.0.sku"), as in the
// payload filters of package match.
type Ordering struct {
	Key string `json:"key"`
}

// Limits of an ordering key.
const (
	// MaxOrderPath bounds the length of Ordering.Key, and
	// maxOrderPathSegments its number of segments (those of match).
	MaxOrderPath         = 256
	maxOrderPathSegments = 32
	// maxOrderValue is the longest key value kept as it is; a longer one
	// is replaced by its hash (a sequence of its own all the same).
	maxOrderValue = 200
)

// NoOrderKey is the key of the events that have no value at an ordering's
// path (or one that is an object, an array or null): they form one
// sequence of their own.
const NoOrderKey = "null"

// Validate says what is wrong with an ordering, in the words of the API.
func (o *Ordering) Validate() error {
	k := o.Key
	switch {
	case k == "$type" || k == "$tenant":
		return nil
	case k == "":
		return invalid(`ordering.key is required: "$type", "$tenant", or a dotted path into the payload such as "customer.id"`)
	case len(k) > MaxOrderPath:
		return invalid("ordering.key is longer than %d bytes", MaxOrderPath)
	case strings.HasPrefix(k, "$"):
		return invalid(`ordering.key %q: the envelope fields are "$type" and "$tenant"`, k)
	case !utf8.ValidString(k):
		return invalid("ordering.key is not valid UTF-8")
	}
	segs := strings.Split(k, ".")
	if len(segs) > maxOrderPathSegments {
		return invalid("ordering.key %q has more than %d segments", k, maxOrderPathSegments)
	}
	for _, s := range segs {
		if s == "" {
			return invalid("ordering.key %q has an empty segment (a leading, trailing or double dot)", k)
		}
	}
	return nil
}

// OrderKey returns the key of an event under this ordering: the JSON text
// of the value found (a string, a number as written, true or false), or
// NoOrderKey when there is none. It never returns "".
func (o *Ordering) OrderKey(payload []byte, eventType, tenant string) string {
	var v gjson.Result
	switch o.Key {
	case "$type":
		v = gjson.Result{Type: gjson.String, Str: eventType}
		if eventType == "" {
			return NoOrderKey
		}
	case "$tenant":
		v = gjson.Result{Type: gjson.String, Str: tenant}
		if tenant == "" {
			v.Str = "default"
		}
	default:
		if !gjson.ValidBytes(payload) {
			return NoOrderKey // a payload that is not JSON has no fields
		}
		v = gjson.GetBytes(payload, orderPath(o.Key))
	}
	var key string
	switch v.Type {
	case gjson.String:
		b, _ := json.Marshal(v.Str)
		key = string(b)
	case gjson.Number, gjson.True, gjson.False:
		key = v.Raw
		if key == "" {
			key = v.String()
		}
	default:
		return NoOrderKey
	}
	if len(key) > maxOrderValue {
		sum := sha256.Sum256([]byte(key))
		return `"sha256:` + hex.EncodeToString(sum[:]) + `"`
	}
	return key
}

// orderPath is a dotted path as a gjson path: each segment escaped, so
// that gjson's wildcards and modifiers are taken as they are written.
func orderPath(k string) string {
	segs := strings.Split(k, ".")
	for i, s := range segs {
		segs[i] = gjson.Escape(s)
	}
	return strings.Join(segs, ".")
}
