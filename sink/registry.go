package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
)

// Kind is one family of broker destinations ("nats", "redis", "rabbitmq").
// Its package declares it; a Registry holds the kinds fanout offers.
type Kind struct {
	// Name is the destination's "type".
	Name string
	// Delivered says what a nil Send means for this kind, for the README
	// and the console.
	Delivered string
	// Secrets are the top-level config fields that hold a secret string
	// (a password, a token): write-only, shown masked as signing secrets
	// are.
	Secrets []string
	// URLs are the top-level config fields that hold a connection URL, or
	// several separated by commas, whose password is a secret.
	URLs []string
	// Address are the other top-level config fields that say where, and
	// how, the credentials go (Kafka's brokers, TLS and SASL mechanism): a
	// masked secret is kept only while they and the URLs stay the same.
	Address []string
	// Parse decodes a config strictly (DecodeStrict) and validates it; its
	// errors are *ConfigError.
	Parse func(raw json.RawMessage) (Config, error)
}

// Config is a parsed, valid destination config of one kind.
type Config interface {
	// Open connects a sender. Its errors are classified as Send's: a
	// broker that cannot be reached is retryable, refused credentials or a
	// blocked address are permanent.
	Open(ctx context.Context, env Env) (Sender, error)
	// Target says where messages go, without secrets, for logs and the
	// console: "nats://broker:4222 subject orders".
	Target() string
	// SecretValues are the config's secrets, removed from every error of
	// its sender (Redact).
	SecretValues() []string
}

// ConfigError is a config that cannot work: a 400, naming the field.
type ConfigError struct {
	// Field is the field's path in the config ("url", "tls.ca"), "" for
	// the config as a whole, "type" for an unknown kind.
	Field string
	Msg   string
}

func (e *ConfigError) Error() string {
	if e.Field == "" {
		return "config: " + e.Msg
	}
	if e.Field == "type" {
		return "type: " + e.Msg
	}
	return "config." + e.Field + ": " + e.Msg
}

// Errorf returns a *ConfigError for field.
func Errorf(field, format string, args ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// DecodeStrict decodes a JSON object into v, refusing unknown fields,
// values of the wrong type and anything after the object, with an error
// that names the field.
func DecodeStrict(raw json.RawMessage, v any) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return &ConfigError{Msg: "want a JSON object"}
	}
	if err := exactNames(raw, v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			return &ConfigError{Field: te.Field, Msg: fmt.Sprintf("want %s, not a JSON %s", typeName(te.Type.Kind().String()), te.Value)}
		case errors.As(err, &se):
			return &ConfigError{Msg: fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, err)}
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return &ConfigError{Field: strings.Trim(f, `"`), Msg: "unknown field"}
		}
		var ce *ConfigError
		if errors.As(err, &ce) {
			return ce
		}
		return &ConfigError{Msg: err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &ConfigError{Msg: "unexpected data after the JSON object"}
	}
	return nil
}

func typeName(k string) string {
	switch k {
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	}
	return k
}

// Registry is the kinds fanout offers, by name.
type Registry struct {
	kinds map[string]*Kind
}

// NewRegistry returns a registry of kinds; a later kind of the same name
// replaces an earlier one.
func NewRegistry(kinds ...*Kind) *Registry {
	r := &Registry{kinds: make(map[string]*Kind, len(kinds))}
	for _, k := range kinds {
		r.kinds[k.Name] = k
	}
	return r
}

// Names are the kinds' names, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.kinds))
	for n := range r.kinds {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Kind returns the kind called name.
func (r *Registry) Kind(name string) (*Kind, error) {
	k, ok := r.kinds[name]
	if !ok {
		return nil, &ConfigError{Field: "type", Msg: fmt.Sprintf("unknown destination type %q; known: webhook, %s", name, strings.Join(r.Names(), ", "))}
	}
	return k, nil
}

// Parse parses and validates the config of a destination of type typ.
func (r *Registry) Parse(typ string, raw json.RawMessage) (Config, error) {
	k, err := r.Kind(typ)
	if err != nil {
		return nil, err
	}
	return k.Parse(raw)
}

// Mask returns the config of a destination of type typ with its secrets
// masked, for every answer but the one that set them.
func (r *Registry) Mask(typ string, raw json.RawMessage) (json.RawMessage, error) {
	k, err := r.Kind(typ)
	if err != nil {
		return nil, err
	}
	return k.Mask(raw)
}

// Unmask returns the config a change sets: see Kind.Unmask.
func (r *Registry) Unmask(typ string, sent, stored json.RawMessage) (json.RawMessage, error) {
	k, err := r.Kind(typ)
	if err != nil {
		return nil, err
	}
	return k.Unmask(sent, stored)
}

// exactNames refuses a field of raw whose name is not exactly one of v's
// (a struct): encoding/json matches names without regard to case, but the
// masking and the check that a kept secret stays at its address (mask.go)
// read the exact names, so "Password" would be stored and shown unmasked,
// and "Endpoint_URL" would move a destination without its address seeming
// to change.
func exactNames(raw json.RawMessage, v any) error {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(raw, &top) != nil {
		return nil // Decode says why
	}
	names := map[string]bool{}
	jsonNames(t, names)
	for k := range top {
		if names[k] {
			continue
		}
		for n := range names {
			if strings.EqualFold(n, k) {
				return &ConfigError{Field: k, Msg: fmt.Sprintf("unknown field: names are case-sensitive (%s)", n)}
			}
		}
		return &ConfigError{Field: k, Msg: "unknown field"}
	}
	return nil
}

// jsonNames adds the JSON names of struct type t's fields to names, those
// of its embedded structs included.
func jsonNames(t reflect.Type, names map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-":
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
			jsonNames(f.Type, names)
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct:
			jsonNames(f.Type.Elem(), names)
		case !f.IsExported():
		case name == "":
			names[f.Name] = true
		default:
			names[name] = true
		}
	}
}
