package match

import (
	"fmt"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// explain is eval, adding to why the reasons of a false.
func (n *node) explain(in *Event, why *[]string) bool {
	switch n.kind {
	case nAnd:
		ok := true
		for _, k := range n.kids {
			if !k.explain(in, why) {
				ok = false
			}
		}
		return ok
	case nOr:
		var sub []string
		for i, k := range n.kids {
			var w []string
			if k.explain(in, &w) {
				return true
			}
			for _, r := range w {
				sub = append(sub, fmt.Sprintf("$or[%d]: %s", i, r))
			}
		}
		*why = append(*why, where(n.path)+"none of $or matched")
		*why = append(*why, sub...)
		return false
	case nNot:
		if !n.kids[0].eval(in) {
			return true
		}
		*why = append(*why, fmt.Sprintf("%smatches %s, which $not excludes", where(n.path), n.src))
		return false
	}
	if n.eval(in) {
		return true
	}
	*why = append(*why, n.reason(in))
	return false
}

func where(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

var phrases = map[opKind]string{
	opEq: "is not", opIn: "is not in", opGt: "is not >", opGte: "is not >=", opLt: "is not <",
	opLte: "is not <=", opRegex: "does not match", opStartsWith: "does not start with",
	opEndsWith: "does not end with",
}

// reason says why the leaf n is false.
func (n *node) reason(in *Event) string {
	vals := n.values(in)
	shown := strings.Join(vals, ", ")
	switch {
	case n.op == opExist && n.neg:
		return fmt.Sprintf("%s: is there (%s), wanted $exist false", n.path, shown)
	case n.op == opExist:
		return n.path + ": missing"
	case len(vals) == 0:
		return fmt.Sprintf("%s: missing, wanted %s %s", n.path, n.name, n.src)
	case n.neg:
		return fmt.Sprintf("%s: %s, wanted %s %s", n.path, shown, n.name, n.src)
	}
	return fmt.Sprintf("%s: %s %s %s", n.path, shown, phrases[n.op], n.src)
}

// values are the values at the leaf's path, written as JSON.
func (n *node) values(in *Event) []string {
	switch n.env {
	case envType, envTenant:
		s := in.env.Type
		if n.env == envTenant {
			s = in.env.Tenant
		}
		if s == "" {
			return nil
		}
		return []string{quote(s)}
	case envTime:
		if in.env.Time.IsZero() {
			return nil
		}
		return []string{quote(in.env.Time.UTC().Format(time.RFC3339Nano))}
	}
	var out []string
	if in.root.Exists() {
		n.collect(in.root, 0, &out)
	}
	return out
}

// collect is walk, keeping the values it reaches.
func (n *node) collect(v gjson.Result, i int, out *[]string) {
	if i == len(n.segs) {
		raw := v.Raw
		if len(raw) > 80 {
			raw = raw[:77] + "..."
		}
		*out = append(*out, raw)
		return
	}
	s := &n.segs[i]
	if v.IsObject() {
		if c := v.Get(s.key); c.Exists() {
			n.collect(c, i+1, out)
		}
		return
	}
	if !v.IsArray() {
		return
	}
	k := 0
	v.ForEach(func(_, e gjson.Result) bool {
		if s.index >= 0 {
			if k == s.index {
				n.collect(e, i+1, out)
				return false
			}
			k++
			return true
		}
		if e.IsObject() {
			if c := e.Get(s.key); c.Exists() {
				n.collect(c, i+1, out)
			}
		}
		return true
	})
}
