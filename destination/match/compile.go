package match

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// The bounds of a filter, so that none costs much to compile, to keep or
// to evaluate: a filter's evaluation is at most MaxConditions conditions,
// each a walk of the payload along a path and a test that is linear in
// the sizes of the value and of its operand.
const (
	// MaxSize is the most bytes a filter's JSON may have.
	MaxSize = 16 << 10
	// MaxDepth is the deepest a filter's JSON may nest (objects and arrays).
	MaxDepth = 16
	// MaxConditions is the most conditions a filter may have: each field
	// condition, operator, $and, $or and $not counts one.
	MaxConditions = 256
	// MaxPathSegments is the most segments a path may have, counting the
	// segments of nested objects above it.
	MaxPathSegments = 32
	// MaxInList is the most values an $in or $nin list may have.
	MaxInList = 512
	// MaxRegex is the longest a $regex pattern may be, in bytes.
	MaxRegex = 512
	// MaxRegexes is the most $regex a filter may have: each reads every
	// string it is tried on, and a filter of hundreds of them on a large
	// payload would cost every event routed through it a second of CPU.
	MaxRegexes = 16
)

// Error is why a filter did not compile: Path says where in the filter
// ("data.amount.$gte", "$or[1].$type"; empty for the filter as a whole),
// Msg what is wrong. Its Error() suits a 400 response.
type Error struct {
	Path string
	Msg  string
}

func (e *Error) Error() string {
	if e.Path == "" {
		return "filter: " + e.Msg
	}
	return "filter: at " + e.Path + ": " + e.Msg
}

func errAt(path, format string, args ...any) *Error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Envelope is what the filter may see of an event besides its payload, as
// $type, $tenant and $time.
type Envelope struct {
	Type   string
	Tenant string
	// Time is when fanout received the event.
	Time time.Time
}

// Filter is a compiled filter. It is safe for concurrent use.
type Filter struct {
	src  []byte // the filter as given, compacted
	root *node  // nil: the empty filter, which matches every event
}

// Compile validates a filter and compiles it. The error is an *Error.
func Compile(raw []byte) (*Filter, error) {
	if len(raw) > MaxSize {
		return nil, errAt("", "%d bytes, more than the %d a filter may have", len(raw), MaxSize)
	}
	if !utf8.Valid(raw) {
		return nil, errAt("", "not valid UTF-8")
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, errAt("", "not valid JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := parseValue(dec, "", 1)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errAt("", "not valid JSON: more after the filter")
	}
	if v.kind != kObject {
		return nil, errAt("", "a filter is a JSON object")
	}
	f := &Filter{src: compact.Bytes()}
	if len(v.keys) == 0 {
		return f, nil
	}
	c := compiler{}
	if f.root, err = c.cond("", prefix{}, v); err != nil {
		return nil, err
	}
	return f, nil
}

// MarshalJSON gives the filter back as it was given, compacted.
func (f *Filter) MarshalJSON() ([]byte, error) {
	return bytes.Clone(f.src), nil
}

// String is the filter's JSON.
func (f *Filter) String() string { return string(f.src) }

// A jv is a JSON value of a filter, its keys in order.
type jv struct {
	kind kind
	str  string // kString; kNumber: the literal
	b    bool
	arr  []*jv
	keys []string
	vals []*jv
}

type kind uint8

const (
	kNull kind = iota
	kBool
	kNumber
	kString
	kArray
	kObject
)

func parseValue(dec *json.Decoder, path string, depth int) (*jv, error) {
	if depth > MaxDepth {
		return nil, errAt(path, "nested more than %d deep", MaxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, errAt(path, "not valid JSON: %v", err)
	}
	switch t := tok.(type) {
	case nil:
		return &jv{kind: kNull}, nil
	case bool:
		return &jv{kind: kBool, b: t}, nil
	case json.Number:
		return &jv{kind: kNumber, str: string(t)}, nil
	case string:
		return &jv{kind: kString, str: t}, nil
	case json.Delim:
		if t == '[' {
			v := &jv{kind: kArray}
			for i := 0; dec.More(); i++ {
				e, err := parseValue(dec, path+"["+strconv.Itoa(i)+"]", depth+1)
				if err != nil {
					return nil, err
				}
				v.arr = append(v.arr, e)
			}
			_, err := dec.Token()
			if err != nil {
				return nil, errAt(path, "not valid JSON: %v", err)
			}
			return v, nil
		}
		v := &jv{kind: kObject}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, errAt(path, "not valid JSON: %v", err)
			}
			k := kt.(string)
			if v.get(k) != nil {
				return nil, errAt(join(path, k), "key given twice")
			}
			e, err := parseValue(dec, join(path, k), depth+1)
			if err != nil {
				return nil, err
			}
			v.keys = append(v.keys, k)
			v.vals = append(v.vals, e)
		}
		if _, err := dec.Token(); err != nil {
			return nil, errAt(path, "not valid JSON: %v", err)
		}
		return v, nil
	}
	return nil, errAt(path, "not valid JSON")
}

func (v *jv) get(k string) *jv {
	for i, kk := range v.keys {
		if kk == k {
			return v.vals[i]
		}
	}
	return nil
}

// json is v written back, compact, for messages.
func (v *jv) json() string {
	var b strings.Builder
	v.write(&b)
	return b.String()
}

func (v *jv) write(b *strings.Builder) {
	switch v.kind {
	case kNull:
		b.WriteString("null")
	case kBool:
		b.WriteString(strconv.FormatBool(v.b))
	case kNumber:
		b.WriteString(v.str)
	case kString:
		b.WriteString(quote(v.str))
	case kArray:
		b.WriteByte('[')
		for i, e := range v.arr {
			if i > 0 {
				b.WriteByte(',')
			}
			e.write(b)
		}
		b.WriteByte(']')
	case kObject:
		b.WriteByte('{')
		for i, k := range v.keys {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(quote(k))
			b.WriteByte(':')
			v.vals[i].write(b)
		}
		b.WriteByte('}')
	}
}

// quote is s as a JSON string, without escaping <, > and &.
func quote(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// Envelope fields, addressed by reserved names at a filter's top level.
type envField uint8

const (
	envNone envField = iota
	envType
	envTenant
	envTime
)

var envNames = map[string]envField{"$type": envType, "$tenant": envTenant, "$time": envTime}

// prefix is where a condition applies: the filter's top level (nothing),
// a path into the payload, or an envelope field.
type prefix struct {
	env  envField
	segs []string
}

func (p prefix) root() bool { return p.env == envNone && len(p.segs) == 0 }

func (p prefix) String() string {
	switch p.env {
	case envType:
		return "$type"
	case envTenant:
		return "$tenant"
	case envTime:
		return "$time"
	}
	return strings.Join(p.segs, ".")
}

type compiler struct {
	conds   int
	regexes int
}

func (c *compiler) count(path string) error {
	c.conds++
	if c.conds > MaxConditions {
		return errAt(path, "more than %d conditions", MaxConditions)
	}
	return nil
}

// cond compiles v, the condition on pre that the filter gives at path.
func (c *compiler) cond(path string, pre prefix, v *jv) (*node, error) {
	switch v.kind {
	case kArray:
		return nil, errAt(path, "an array is not a condition: $in takes a list of values, $and and $or a list of conditions")
	case kObject:
	default:
		if pre.root() {
			return nil, errAt(path, "a filter is a JSON object")
		}
		return c.op(path, pre, "$eq", v)
	}
	if len(v.keys) == 0 {
		return nil, errAt(path, `an empty object matches nothing in particular: use {"$exist": true} for a field that must be there`)
	}
	var kids []*node
	for i, k := range v.keys {
		kpath := join(path, k)
		val := v.vals[i]
		var n *node
		var err error
		switch {
		case k == "$and" || k == "$or":
			n, err = c.logical(kpath, pre, k, val)
		case k == "$not":
			if err = c.count(kpath); err != nil {
				return nil, err
			}
			var sub *node
			if sub, err = c.cond(kpath, pre, val); err == nil {
				n = &node{kind: nNot, kids: []*node{sub}, path: pre.String(), src: val.json()}
			}
		case envNames[k] != envNone:
			if !pre.root() {
				return nil, errAt(kpath, "%s is a field of the event, only at the top level of a filter", k)
			}
			n, err = c.cond(kpath, prefix{env: envNames[k]}, val)
		case ops[k] != opNone:
			if pre.root() {
				return nil, errAt(kpath, "%s applies to a field: put it under one, as in {\"data.amount\": {\"%s\": ...}}", k, k)
			}
			n, err = c.op(kpath, pre, k, val)
		case strings.HasPrefix(k, "$"):
			return nil, errAt(kpath, "unknown operator %s", k)
		default:
			if pre.env != envNone {
				return nil, errAt(kpath, "%s is a string, not an object with fields", pre)
			}
			segs := strings.Split(k, ".")
			for _, s := range segs {
				if s == "" {
					return nil, errAt(kpath, "a path has an empty segment")
				}
				if strings.HasPrefix(s, "$") {
					return nil, errAt(kpath, "a path segment may not begin with $")
				}
			}
			if len(pre.segs)+len(segs) > MaxPathSegments {
				return nil, errAt(kpath, "a path of more than %d segments", MaxPathSegments)
			}
			sub := prefix{segs: append(append([]string(nil), pre.segs...), segs...)}
			n, err = c.cond(kpath, sub, val)
		}
		if err != nil {
			return nil, err
		}
		kids = append(kids, n)
	}
	if len(kids) == 1 {
		return kids[0], nil
	}
	return &node{kind: nAnd, kids: kids}, nil
}

func (c *compiler) logical(path string, pre prefix, k string, v *jv) (*node, error) {
	if err := c.count(path); err != nil {
		return nil, err
	}
	if v.kind != kArray || len(v.arr) == 0 {
		return nil, errAt(path, "%s takes a non-empty list of conditions", k)
	}
	n := &node{kind: nAnd, path: pre.String()}
	if k == "$or" {
		n.kind = nOr
	}
	for i, e := range v.arr {
		sub, err := c.cond(path+"["+strconv.Itoa(i)+"]", pre, e)
		if err != nil {
			return nil, err
		}
		n.kids = append(n.kids, sub)
	}
	return n, nil
}

type opKind uint8

const (
	opNone opKind = iota
	opEq
	opNeq
	opGt
	opGte
	opLt
	opLte
	opIn
	opNin
	opExist
	opRegex
	opStartsWith
	opEndsWith
)

var ops = map[string]opKind{
	"$eq": opEq, "$neq": opNeq, "$gt": opGt, "$gte": opGte, "$lt": opLt, "$lte": opLte,
	"$in": opIn, "$nin": opNin, "$exist": opExist, "$regex": opRegex,
	"$startsWith": opStartsWith, "$endsWith": opEndsWith,
}

// op compiles the operator name with its operand v on pre.
func (c *compiler) op(path string, pre prefix, name string, v *jv) (*node, error) {
	if err := c.count(path); err != nil {
		return nil, err
	}
	n := &node{kind: nLeaf, path: pre.String(), env: pre.env, op: ops[name], name: name, src: v.json()}
	for _, s := range pre.segs {
		seg := segment{key: gjson.Escape(s), index: -1}
		if i, err := strconv.Atoi(s); err == nil && i >= 0 && strconv.Itoa(i) == s {
			seg.index = i
		}
		n.segs = append(n.segs, seg)
	}
	switch n.op {
	case opNeq:
		n.op, n.neg = opEq, true
	case opNin:
		n.op, n.neg = opIn, true
	}
	isTime := pre.env == envTime
	switch n.op {
	case opEq:
		sc, err := scalarOf(path, v, isTime)
		if err != nil {
			return nil, err
		}
		n.list = []scalar{sc}
	case opGt, opGte, opLt, opLte:
		if !isTime && v.kind != kNumber && v.kind != kString {
			return nil, errAt(path, "%s takes a number or a string", name)
		}
		sc, err := scalarOf(path, v, isTime)
		if err != nil {
			return nil, err
		}
		n.list = []scalar{sc}
	case opIn:
		if v.kind != kArray {
			return nil, errAt(path, "%s takes a list of values", name)
		}
		if len(v.arr) > MaxInList {
			return nil, errAt(path, "%s takes at most %d values", name, MaxInList)
		}
		for i, e := range v.arr {
			sc, err := scalarOf(path+"["+strconv.Itoa(i)+"]", e, isTime)
			if err != nil {
				return nil, err
			}
			n.list = append(n.list, sc)
		}
	case opExist:
		if v.kind != kBool {
			return nil, errAt(path, "$exist takes true or false")
		}
		n.neg = !v.b
	case opRegex, opStartsWith, opEndsWith:
		if isTime {
			return nil, errAt(path, "$time takes $eq, $neq, $gt, $gte, $lt, $lte, $in, $nin and $exist")
		}
		if v.kind != kString {
			return nil, errAt(path, "%s takes a string", name)
		}
		n.list = []scalar{{kind: kString, str: v.str}}
		if n.op == opRegex {
			if c.regexes++; c.regexes > MaxRegexes {
				return nil, errAt(path, "more than %d $regex in one filter", MaxRegexes)
			}
			if len(v.str) > MaxRegex {
				return nil, errAt(path, "a $regex of %d bytes, more than %d", len(v.str), MaxRegex)
			}
			re, err := regexp.Compile(v.str)
			if err != nil {
				return nil, errAt(path, "$regex: %v", err)
			}
			n.re = re
		}
	}
	return n, nil
}

// scalar is an operand: a string, number, boolean or null, or a time.
type scalar struct {
	kind kind
	str  string // kString; kNumber: the literal
	b    bool
	num  decimal
	t    time.Time // a $time operand
}

func scalarOf(path string, v *jv, isTime bool) (scalar, error) {
	if isTime {
		if v.kind != kString {
			return scalar{}, errAt(path, "$time compares with a time in RFC 3339, as in \"2025-01-31T12:00:00Z\"")
		}
		t, err := time.Parse(time.RFC3339Nano, v.str)
		if err != nil {
			return scalar{}, errAt(path, "%q is not a time in RFC 3339, as in \"2025-01-31T12:00:00Z\"", v.str)
		}
		return scalar{kind: kString, str: v.str, t: t}, nil
	}
	sc := scalar{kind: v.kind, str: v.str, b: v.b}
	switch v.kind {
	case kArray, kObject:
		return sc, errAt(path, "a value to compare with is a string, a number, true, false or null")
	case kNumber:
		d, ok := parseDecimal(v.str)
		if !ok {
			return sc, errAt(path, "%s is not a number", v.str)
		}
		sc.num = d
	}
	return sc, nil
}

// UnmarshalJSON compiles a filter from JSON, so that a stored destination's
// filter is compiled once, as it is loaded.
func (f *Filter) UnmarshalJSON(b []byte) error {
	g, err := Compile(b)
	if err != nil {
		return err
	}
	*f = *g
	return nil
}
