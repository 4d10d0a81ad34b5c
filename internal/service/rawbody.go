package service

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strconv"
	"strings"
	"unicode/utf8"
)

// A raw event is a body that is not JSON (POST /v1/event?raw=true): XML, a
// form, bytes. fanout stores it and delivers it byte for byte, with the
// Content-Type it came with, and reads nothing in it: its type is the one
// the request named, and payload filters and transformations see no fields.
//
// The runtime's inputs are JSON (the drivers, the upgrades and the history's
// search read them as such), and a JSON event is always an object, so a raw
// event's input is a JSON array, which no JSON event can be:
//
//	["raw", type, content type, "text" | "base64", body]
//
// The body is a JSON string of its bytes when they are valid UTF-8 (stored
// at about their size, and found by the history's text search), base64
// otherwise. Deciding by the first byte keeps JSON events on their path at
// the cost of one comparison.
type RawEvent struct {
	// Type is the event's type, for routing and listings; "" is none.
	Type        string
	ContentType string
	Body        []byte
}

// Raw events' encodings of their body.
const (
	rawText   = "text"
	rawBase64 = "base64"
)

// Bounds of what a raw event's request names.
const (
	maxRawTypeBytes        = 255
	maxRawContentTypeBytes = 255
)

// isRaw says whether a stored event input is a raw event's (see RawEvent).
func isRaw(input []byte) bool { return len(input) > 0 && input[0] == '[' }

// encodeRaw writes a raw event as its input.
func encodeRaw(ev *RawEvent) []byte {
	enc, n := rawText, len(ev.Body)+len(ev.Body)/16
	if !utf8.Valid(ev.Body) {
		enc, n = rawBase64, base64.StdEncoding.EncodedLen(len(ev.Body))
	}
	out := make([]byte, 0, n+len(ev.Type)+len(ev.ContentType)+32)
	out = append(out, `["raw",`...)
	out = appendText(out, ev.Type)
	out = append(out, ',')
	out = appendText(out, ev.ContentType)
	out = append(out, `,"`...)
	out = append(out, enc...)
	out = append(out, `",`...)
	if enc == rawText {
		out = appendText(out, string(ev.Body))
	} else {
		out = append(out, '"')
		out = base64.StdEncoding.AppendEncode(out, ev.Body)
		out = append(out, '"')
	}
	return append(out, ']')
}

// appendText appends s as a JSON string, escaping only what JSON requires:
// encoding/json would also escape <, > and &, which the history's text
// search would then not find. Bytes that are not UTF-8 become U+FFFD (a
// body is text only when it is valid; types are checked before).
func appendText(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// decodeRaw reads a raw event's input (isRaw). An input that is not one
// written by encodeRaw is an error, never a guess.
func decodeRaw(input []byte) (*RawEvent, error) {
	var parts []string
	if err := json.Unmarshal(input, &parts); err != nil {
		return nil, fmt.Errorf("raw event: %v", err)
	}
	if len(parts) != 5 || parts[0] != "raw" {
		return nil, errors.New(`raw event: want ["raw", type, content type, encoding, body]`)
	}
	ev := &RawEvent{Type: parts[1], ContentType: parts[2]}
	switch parts[3] {
	case rawText:
		ev.Body = []byte(parts[4])
	case rawBase64:
		b, err := base64.StdEncoding.DecodeString(parts[4])
		if err != nil {
			return nil, fmt.Errorf("raw event: body: %v", err)
		}
		ev.Body = b
	default:
		return nil, fmt.Errorf("raw event: unknown encoding %q", parts[3])
	}
	return ev, nil
}

// rawType reads the type of a raw event's input without decoding its body.
func rawType(input []byte) string {
	var parts []json.RawMessage
	if json.Unmarshal(input, &parts) != nil || len(parts) < 2 {
		return ""
	}
	var t string
	_ = json.Unmarshal(parts[1], &t)
	return t
}

// noFields is the payload filters get of a raw event: not JSON, so every
// path in it is missing (match.NewEvent), where nil would skip the filters.
var noFields = []byte{}

// filterPayload is what payload filters see of an event's input: the JSON
// event, or nothing of a raw one (whose body may be JSON by chance: it is
// not read).
func filterPayload(input []byte) []byte {
	if isRaw(input) {
		return noFields
	}
	return input
}

// deliveryBody is what a delivery of an event's input sends: the JSON
// event with no content type of its own (the client's application/json),
// or a raw event's bytes and content type.
func deliveryBody(input []byte) (body []byte, contentType string, err error) {
	if !isRaw(input) {
		return input, "", nil
	}
	ev, err := decodeRaw(input)
	if err != nil {
		return nil, "", err
	}
	return ev.Body, ev.ContentType, nil
}

// CheckRawContentType checks the Content-Type of a raw event: a media type
// (type/subtype, with parameters if any) in printable ASCII, not JSON (a
// JSON event is sent without ?raw=true, and filters read it), and not the
// form type that curl -d sends when no type is given, which would deliver
// an XML body as a form. It returns the value as given, trimmed: that is
// what destinations receive.
func CheckRawContentType(ct string) (string, error) {
	ct = strings.TrimSpace(ct)
	if ct == "" {
		return "", Invalid("a raw event (raw=true) needs a Content-Type: the type its destinations receive, such as application/xml")
	}
	if len(ct) > maxRawContentTypeBytes {
		return "", Invalid("Content-Type is longer than %d bytes", maxRawContentTypeBytes)
	}
	if strings.ContainsFunc(ct, func(c rune) bool { return (c < 0x20 && c != '\t') || c > 0x7e }) {
		return "", Invalid("Content-Type %q has characters other than printable ASCII", ct)
	}
	mt, _, err := mime.ParseMediaType(ct)
	typ, sub, ok := strings.Cut(mt, "/")
	if err != nil || !ok || typ == "" || sub == "" || typ == "*" || sub == "*" {
		return "", Invalid("Content-Type %q is not a media type such as application/xml or text/csv; charset=utf-8", ct)
	}
	switch {
	case mt == "application/json" || strings.HasSuffix(sub, "+json"):
		return "", Invalid("Content-Type %q is JSON: send a JSON event without raw=true, so that filters can read it", ct)
	case mt == "application/x-www-form-urlencoded":
		return "", Invalid("Content-Type %q is what curl -d sends when no type is given: name the body's own type (curl -H 'Content-Type: application/xml' --data-binary @file)", ct)
	}
	return ct, nil
}

// CheckRawType checks a raw event's type (the type parameter): like a JSON
// event's "type", but bounded, printable, and not one of fanout's own.
func CheckRawType(t string) error {
	switch {
	case len(t) > maxRawTypeBytes:
		return Invalid("type is longer than %d bytes", maxRawTypeBytes)
	case !utf8.ValidString(t) || strings.ContainsFunc(t, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		return Invalid("type %s must be printable UTF-8", strconv.Quote(t))
	case isNotice(t):
		return Invalid("type %q: the types fanout.* are fanout's own events", t)
	}
	return nil
}

// IngestRaw stores a raw event, as Ingest stores one JSON event: durable
// once it returns its id, under the same tenant rules and idempotency key.
// Its content type must pass CheckRawContentType, its type CheckRawType.
func (s *Service) IngestRaw(ctx context.Context, scope Scope, tenant string, ev *RawEvent, idempotencyKey string) (string, error) {
	ct, err := CheckRawContentType(ev.ContentType)
	if err != nil {
		return "", err
	}
	if err := CheckRawType(ev.Type); err != nil {
		return "", err
	}
	if len(ev.Body) == 0 {
		return "", Invalid("request body is empty")
	}
	in := *ev
	in.ContentType = ct
	ids, err := s.Ingest(ctx, scope, tenant, []json.RawMessage{encodeRaw(&in)}, idempotencyKey)
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// RawBody is how the API shows a raw event's body (EventView.Raw): as
// Text when its bytes are valid UTF-8, else as Base64, with its content
// type and its size in bytes. The console shows Text as text, never markup.
type RawBody struct {
	ContentType string `json:"content_type"`
	Size        int    `json:"size"`
	Text        string `json:"text,omitempty"`
	Base64      string `json:"base64,omitempty"`
}

// rawView is the view of a raw event's input; nil for a JSON event or an
// input that cannot be read.
func rawView(input []byte) *RawBody {
	if !isRaw(input) {
		return nil
	}
	ev, err := decodeRaw(input)
	if err != nil {
		return nil
	}
	v := &RawBody{ContentType: ev.ContentType, Size: len(ev.Body)}
	if utf8.Valid(ev.Body) {
		v.Text = string(ev.Body)
	} else {
		v.Base64 = base64.StdEncoding.EncodeToString(ev.Body)
	}
	return v
}
