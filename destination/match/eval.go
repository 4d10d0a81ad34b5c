package match

import (
	"regexp"
	"strings"
	"time"
	"unsafe"

	"github.com/tidwall/gjson"
)

type nodeKind uint8

const (
	nLeaf nodeKind = iota
	nAnd
	nOr
	nNot
)

// segment is a step of a path: a key of an object (escaped for gjson), and
// index, when the segment is a number, the element of an array it picks.
type segment struct {
	key   string
	index int
}

// node is a compiled condition.
type node struct {
	kind nodeKind
	kids []*node // nAnd, nOr; nNot: the one it negates
	path string  // where it applies, for messages
	src  string  // its operand as JSON, for messages

	// nLeaf: the test op of the value at env or segs, with its operand
	// (list, re); neg negates it ($neq, $nin, $exist false).
	env  envField
	segs []segment
	op   opKind
	name string
	neg  bool
	list []scalar
	re   *regexp.Regexp
}

// Event is an event read for filters: its payload checked and parsed
// once, for the router that matches an event against several destinations'
// filters. It reads the payload in place: keep the payload unchanged while
// the Event is in use.
type Event struct {
	root gjson.Result // the payload; nothing if it is not JSON
	env  Envelope
}

// NewEvent reads an event for MatchEvent. A payload that is not JSON has
// no fields: every path in it is missing.
func NewEvent(payload []byte, env Envelope) Event {
	e := Event{env: env}
	if gjson.ValidBytes(payload) {
		e.root = gjson.Parse(unsafe.String(unsafe.SliceData(payload), len(payload)))
	}
	return e
}

// Match reports whether an event matches the filter: its payload, the JSON
// body as received, and its envelope. A payload that is not JSON has no
// fields (every path is missing). It is NewEvent then MatchEvent.
func (f *Filter) Match(payload []byte, env Envelope) bool {
	if f.root == nil {
		return true
	}
	e := NewEvent(payload, env)
	return f.root.eval(&e)
}

// MatchEvent is Match for an event read with NewEvent.
func (f *Filter) MatchEvent(e *Event) bool {
	return f.root == nil || f.root.eval(e)
}

// Explain is Match, and when the event does not match, the reasons why
// not, one a line, such as "data.amount: 50 is not >= 100".
func (f *Filter) Explain(payload []byte, env Envelope) (bool, []string) {
	if f.root == nil {
		return true, nil
	}
	e := NewEvent(payload, env)
	var why []string
	if f.root.explain(&e, &why) {
		return true, nil
	}
	return false, why
}

func (n *node) eval(in *Event) bool {
	switch n.kind {
	case nAnd:
		for _, k := range n.kids {
			if !k.eval(in) {
				return false
			}
		}
		return true
	case nOr:
		for _, k := range n.kids {
			if k.eval(in) {
				return true
			}
		}
		return false
	case nNot:
		return !n.kids[0].eval(in)
	}
	return n.found(in) != n.neg
}

// found reports whether some value at the node's path passes its test.
func (n *node) found(in *Event) bool {
	switch n.env {
	case envType:
		return n.envString(in.env.Type)
	case envTenant:
		return n.envString(in.env.Tenant)
	case envTime:
		if in.env.Time.IsZero() {
			return false
		}
		return n.op == opExist || n.testTime(in.env.Time)
	}
	if !in.root.Exists() {
		return false
	}
	return n.walk(in.root, 0)
}

func (n *node) envString(s string) bool {
	if s == "" {
		return false
	}
	return n.op == opExist || n.test(gjson.Result{Type: gjson.String, Str: s})
}

// walk follows the path from v, its i-th segment next: into an object by
// key; into an array by index if the segment is a number, else into the
// objects among its elements that have that key, any of them.
func (n *node) walk(v gjson.Result, i int) bool {
	if i == len(n.segs) {
		return n.leaf(v)
	}
	s := &n.segs[i]
	if v.IsObject() {
		c := v.Get(s.key)
		return c.Exists() && n.walk(c, i+1)
	}
	if !v.IsArray() {
		return false
	}
	found, k := false, 0
	v.ForEach(func(_, e gjson.Result) bool {
		if s.index >= 0 {
			if k == s.index {
				found = n.walk(e, i+1)
				return false
			}
			k++
			return true
		}
		if e.IsObject() {
			if c := e.Get(s.key); c.Exists() && n.walk(c, i+1) {
				found = true
				return false
			}
		}
		return true
	})
	return found
}

// leaf tests the value at the end of the path, or if it is an array, its
// elements, any of them.
func (n *node) leaf(v gjson.Result) bool {
	if n.op == opExist {
		return true
	}
	if !v.IsArray() {
		return n.test(v)
	}
	found := false
	v.ForEach(func(_, e gjson.Result) bool {
		found = n.test(e)
		return !found
	})
	return found
}

func (n *node) test(v gjson.Result) bool {
	switch n.op {
	case opEq:
		return equal(v, &n.list[0])
	case opIn:
		for i := range n.list {
			if equal(v, &n.list[i]) {
				return true
			}
		}
		return false
	case opGt, opGte, opLt, opLte:
		c, ok := compare(v, &n.list[0])
		return ok && cmpOK(n.op, c)
	case opRegex:
		return v.Type == gjson.String && n.re.MatchString(v.Str)
	case opStartsWith:
		return v.Type == gjson.String && strings.HasPrefix(v.Str, n.list[0].str)
	case opEndsWith:
		return v.Type == gjson.String && strings.HasSuffix(v.Str, n.list[0].str)
	}
	return false
}

func cmpOK(op opKind, c int) bool {
	switch op {
	case opGt:
		return c > 0
	case opGte:
		return c >= 0
	case opLt:
		return c < 0
	case opLte:
		return c <= 0
	}
	return false
}

func (n *node) testTime(t time.Time) bool {
	switch n.op {
	case opEq, opIn:
		for i := range n.list {
			if t.Equal(n.list[i].t) {
				return true
			}
		}
		return false
	case opGt, opGte, opLt, opLte:
		return cmpOK(n.op, t.Compare(n.list[0].t))
	}
	return false
}

// equal reports whether v is the scalar sc: the same JSON type, and the
// same string, or the same number (exactly), or the same boolean, or both
// null.
func equal(v gjson.Result, sc *scalar) bool {
	switch sc.kind {
	case kString:
		return v.Type == gjson.String && v.Str == sc.str
	case kNumber:
		if v.Type != gjson.Number {
			return false
		}
		d, ok := parseDecimal(v.Raw)
		return ok && compareDecimal(&d, &sc.num) == 0
	case kBool:
		return (sc.b && v.Type == gjson.True) || (!sc.b && v.Type == gjson.False)
	case kNull:
		return v.Type == gjson.Null && v.Exists()
	}
	return false
}

// compare orders v and sc when both are numbers or both strings.
func compare(v gjson.Result, sc *scalar) (int, bool) {
	switch {
	case sc.kind == kNumber && v.Type == gjson.Number:
		d, ok := parseDecimal(v.Raw)
		if !ok {
			return 0, false
		}
		return compareDecimal(&d, &sc.num), true
	case sc.kind == kString && v.Type == gjson.String:
		return strings.Compare(v.Str, sc.str), true
	}
	return 0, false
}
