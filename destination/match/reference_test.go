package match

import (
	"bytes"
	"encoding/json"
	"io"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The reference evaluator: the language's semantics written again, plainly
// and independently of the compiled one, on the payload and the filter
// decoded by encoding/json into any. The fuzz target compares the two.

// refPayload decodes a payload for ref; ok is false when the payload is
// one ref cannot judge the same way (duplicate keys, which encoding/json
// reads last-wins and the language first-wins; invalid UTF-8; numbers with
// huge exponents, which big.Rat would take too long over).
func refPayload(payload []byte) (doc any, hasDoc bool, ok bool) {
	if !json.Valid(payload) {
		return nil, false, true
	}
	if !utf8.Valid(payload) || hugeExponent(string(payload)) || hasDuplicateKeys(payload) {
		return nil, false, false
	}
	d := json.NewDecoder(bytes.NewReader(payload))
	d.UseNumber()
	if err := d.Decode(&doc); err != nil {
		return nil, false, false
	}
	return doc, true, true
}

var hugeExp = regexp.MustCompile(`[eE][+-]?0*[0-9]{4,}`)

func hugeExponent(s string) bool { return hugeExp.MatchString(s) }

func hasDuplicateKeys(payload []byte) bool {
	d := json.NewDecoder(bytes.NewReader(payload))
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // the next token is a key
	}
	var stack []*frame
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return false
		}
		if err != nil {
			return true
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.key {
			if k, ok := tok.(string); ok {
				if top.keys[k] {
					return true
				}
				top.keys[k] = true
				top.key = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].obj {
			stack[len(stack)-1].key = true
		}
	}
}

type refEnv struct {
	env    Envelope
	doc    any
	hasDoc bool
}

// ref evaluates the filter f (decoded into any, UseNumber) on e.
func ref(f map[string]any, e *refEnv) bool {
	return refCond(f, e, "", nil)
}

// refCond is the condition v on the prefix: env ("$type"...) or path.
func refCond(v any, e *refEnv, env string, path []string) bool {
	m, isObj := v.(map[string]any)
	if !isObj {
		return refOp("$eq", v, e, env, path)
	}
	for k, sub := range m {
		var ok bool
		switch {
		case k == "$and":
			ok = true
			for _, c := range sub.([]any) {
				ok = ok && refCond(c, e, env, path)
			}
		case k == "$or":
			for _, c := range sub.([]any) {
				ok = ok || refCond(c, e, env, path)
			}
		case k == "$not":
			ok = !refCond(sub, e, env, path)
		case k == "$type" || k == "$tenant" || k == "$time":
			ok = refCond(sub, e, k, nil)
		case strings.HasPrefix(k, "$"):
			ok = refOp(k, sub, e, env, path)
		default:
			p := append(append([]string{}, path...), strings.Split(k, ".")...)
			ok = refCond(sub, e, env, p)
		}
		if !ok {
			return false
		}
	}
	return true
}

// refValues are the values at the prefix, arrays not yet expanded.
func refValues(e *refEnv, env string, path []string) []any {
	switch env {
	case "$type":
		if e.env.Type == "" {
			return nil
		}
		return []any{e.env.Type}
	case "$tenant":
		if e.env.Tenant == "" {
			return nil
		}
		return []any{e.env.Tenant}
	case "$time":
		if e.env.Time.IsZero() {
			return nil
		}
		return []any{e.env.Time}
	}
	if !e.hasDoc {
		return nil
	}
	cur := []any{e.doc}
	for _, seg := range path {
		var next []any
		idx, err := strconv.Atoi(seg)
		isIdx := err == nil && idx >= 0 && strconv.Itoa(idx) == seg
		for _, v := range cur {
			switch v := v.(type) {
			case map[string]any:
				if c, ok := v[seg]; ok {
					next = append(next, c)
				}
			case []any:
				if isIdx {
					if idx < len(v) {
						next = append(next, v[idx])
					}
					continue
				}
				for _, el := range v {
					if om, ok := el.(map[string]any); ok {
						if c, ok := om[seg]; ok {
							next = append(next, c)
						}
					}
				}
			}
		}
		cur = next
	}
	return cur
}

func refOp(op string, operand any, e *refEnv, env string, path []string) bool {
	vals := refValues(e, env, path)
	switch op {
	case "$exist":
		return (len(vals) > 0) == operand.(bool)
	case "$neq":
		return !refOp("$eq", operand, e, env, path)
	case "$nin":
		return !refOp("$in", operand, e, env, path)
	}
	var flat []any
	for _, v := range vals {
		if a, ok := v.([]any); ok {
			flat = append(flat, a...)
		} else {
			flat = append(flat, v)
		}
	}
	for _, v := range flat {
		if refTest(op, operand, v) {
			return true
		}
	}
	return false
}

func refTest(op string, operand, v any) bool {
	if t, ok := v.(time.Time); ok {
		return refTime(op, operand, t)
	}
	switch op {
	case "$eq":
		return refEq(operand, v)
	case "$in":
		for _, o := range operand.([]any) {
			if refEq(o, v) {
				return true
			}
		}
		return false
	case "$gt", "$gte", "$lt", "$lte":
		c, ok := refCompare(v, operand)
		if !ok {
			return false
		}
		return map[string]bool{"$gt": c > 0, "$gte": c >= 0, "$lt": c < 0, "$lte": c <= 0}[op]
	case "$regex":
		s, ok := v.(string)
		return ok && regexp.MustCompile(operand.(string)).MatchString(s)
	case "$startsWith":
		s, ok := v.(string)
		return ok && strings.HasPrefix(s, operand.(string))
	case "$endsWith":
		s, ok := v.(string)
		return ok && strings.HasSuffix(s, operand.(string))
	}
	panic("ref: operator " + op)
}

func refEq(a, b any) bool {
	if c, ok := refCompare(a, b); ok {
		return c == 0
	}
	switch a := a.(type) {
	case bool:
		bb, ok := b.(bool)
		return ok && a == bb
	case nil:
		return b == nil
	}
	return false
}

func refCompare(a, b any) (int, bool) {
	switch a := a.(type) {
	case json.Number:
		bn, ok := b.(json.Number)
		if !ok {
			return 0, false
		}
		ra, ok1 := new(big.Rat).SetString(string(a))
		rb, ok2 := new(big.Rat).SetString(string(bn))
		if !ok1 || !ok2 {
			panic("ref: number " + string(a) + " " + string(bn))
		}
		return ra.Cmp(rb), true
	case string:
		bs, ok := b.(string)
		if !ok {
			return 0, false
		}
		return strings.Compare(a, bs), true
	}
	return 0, false
}

func refTime(op string, operand any, t time.Time) bool {
	parse := func(o any) time.Time {
		pt, err := time.Parse(time.RFC3339Nano, o.(string))
		if err != nil {
			panic(err)
		}
		return pt
	}
	switch op {
	case "$eq":
		return t.Equal(parse(operand))
	case "$in":
		for _, o := range operand.([]any) {
			if t.Equal(parse(o)) {
				return true
			}
		}
		return false
	case "$gt":
		return t.After(parse(operand))
	case "$gte":
		return !t.Before(parse(operand))
	case "$lt":
		return t.Before(parse(operand))
	case "$lte":
		return !t.After(parse(operand))
	}
	panic("ref: $time " + op)
}
