package transform

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Bounds of what a handler answers.
const (
	maxURLBytes     = 2048
	maxHeaders      = 50
	maxHeaderValue  = 4096
	maxCancelReason = 500
)

// Methods are the methods a handler may choose: those whose request
// carries the body that the signature covers.
var Methods = []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// ReservedHeaders are the headers fanout sets on every delivery, or that
// describe the connection rather than the request: a handler that sets one
// fails its run. The webhook-* ones carry the signature, which covers the
// body as transformed.
var ReservedHeaders = []string{
	"webhook-id", "webhook-timestamp", "webhook-signature",
	"host", "content-length", "content-type", "user-agent", "transfer-encoding", "connection",
	"te", "trailer", "upgrade", "keep-alive", "proxy-connection", "proxy-authorization", "expect",
}

// Result is a handler's answer, checked.
type Result struct {
	Method string
	// Path is the URL path as written in a URL (escaped); Query the query
	// without its "?".
	Path, Query string
	// Headers are the delivery's own headers (names as the handler wrote
	// them, unique without regard to case).
	Headers map[string]string
	// Payload is the body, as JSON; nil when the handler removed it (an
	// empty body).
	Payload []byte
	// Cancel is set when the handler cancelled the delivery, with its
	// Reason when it gave one (webhook.cancel = "why").
	Cancel bool
	Reason string
}

// DecodeResult reads a handler's answer: the JSON object
// {method, path, query, headers, payload, cancel} that the run writes, and
// refuses what fanout will not send, naming the field.
func DecodeResult(b []byte) (*Result, error) {
	var raw struct {
		Method  json.RawMessage `json:"method"`
		Path    json.RawMessage `json:"path"`
		Query   json.RawMessage `json:"query"`
		Headers json.RawMessage `json:"headers"`
		Payload json.RawMessage `json:"payload"`
		Cancel  json.RawMessage `json:"cancel"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("the handler's answer is not a JSON object: %v", err)
	}
	res := &Result{}
	switch c := bytes.TrimSpace(raw.Cancel); {
	case len(c) == 0 || string(c) == "null" || string(c) == "false":
	case string(c) == "true":
		res.Cancel = true
	case c[0] == '"':
		var reason string
		if err := json.Unmarshal(c, &reason); err != nil {
			return nil, fmt.Errorf("cancel: %v", err)
		}
		if reason != "" {
			res.Cancel, res.Reason = true, trimReason(reason)
		}
	default:
		return nil, errors.New("cancel must be true, false or a reason (a string)")
	}
	if res.Cancel {
		return res, nil // nothing else of it is sent
	}
	var err error
	if res.Method, err = str("method", raw.Method); err != nil {
		return nil, err
	}
	res.Method = strings.ToUpper(res.Method)
	if !contains(Methods, res.Method) {
		return nil, fmt.Errorf("method %q: a transformation may send %s", res.Method, strings.Join(Methods, ", "))
	}
	if res.Path, err = str("path", raw.Path); err != nil {
		return nil, err
	}
	if err := checkPath(res.Path); err != nil {
		return nil, err
	}
	if len(raw.Query) > 0 && string(raw.Query) != "null" {
		if res.Query, err = str("query", raw.Query); err != nil {
			return nil, err
		}
	}
	res.Query = strings.TrimPrefix(res.Query, "?")
	if err := checkQuery(res.Query); err != nil {
		return nil, err
	}
	if res.Headers, err = headers(raw.Headers); err != nil {
		return nil, err
	}
	if len(raw.Payload) > 0 {
		res.Payload = []byte(raw.Payload)
	}
	return res, nil
}

func str(field string, raw json.RawMessage) (string, error) {
	var s string
	if len(raw) == 0 || raw[0] != '"' {
		return "", fmt.Errorf("%s must be a string", field)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%s: %v", field, err)
	}
	return s, nil
}

func checkPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//"):
		return fmt.Errorf("path %q must start with a single /", p)
	case len(p) > maxURLBytes:
		return fmt.Errorf("path is longer than %d bytes", maxURLBytes)
	case strings.ContainsAny(p, "?#"):
		return fmt.Errorf("path %q holds ? or #: set the query in webhook.query", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return fmt.Errorf("path %q holds a control character or a backslash", p)
		}
	}
	return nil
}

func checkQuery(q string) error {
	if len(q) > maxURLBytes {
		return fmt.Errorf("query is longer than %d bytes", maxURLBytes)
	}
	for i := 0; i < len(q); i++ {
		if c := q[i]; c <= 0x20 || c >= 0x7f || c == '#' {
			return fmt.Errorf("query %q holds a space, a # or a character to escape: build it with encodeURIComponent", q)
		}
	}
	return nil
}

func headers(raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '{' {
		return nil, errors.New("headers must be an object of names to string values")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("headers: %v", err)
	}
	if len(m) > maxHeaders {
		return nil, fmt.Errorf("headers: %d of them, over the limit of %d", len(m), maxHeaders)
	}
	out := make(map[string]string, len(m))
	seen := make(map[string]bool, len(m))
	for k, rv := range m {
		v, err := str("header "+k, rv)
		if err != nil {
			return nil, err
		}
		lower := strings.ToLower(k)
		switch {
		case !httpguts.ValidHeaderFieldName(k):
			return nil, fmt.Errorf("header name %q is not a valid HTTP field name", k)
		case contains(ReservedHeaders, lower):
			return nil, fmt.Errorf("header %s is set by fanout (or the connection) and a transformation cannot set it", k)
		case !httpguts.ValidHeaderFieldValue(v) || len(v) > maxHeaderValue:
			return nil, fmt.Errorf("header %s has a value with a control character or over %d bytes", k, maxHeaderValue)
		case seen[lower]:
			return nil, fmt.Errorf("header %s is set twice (names are not case-sensitive)", k)
		}
		seen[lower] = true
		out[k] = v
	}
	return out, nil
}

func trimReason(s string) string {
	if len(s) > maxCancelReason {
		s = strings.ToValidUTF8(s[:maxCancelReason], "") + "..."
	}
	return s
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// appendJSON appends v as JSON; what it is handed always encodes.
func appendJSON(b []byte, v any) []byte {
	j, _ := json.Marshal(v)
	return append(b, j...)
}
