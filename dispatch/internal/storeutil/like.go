package storeutil

import "strings"

// EscapeLike escapes LIKE's wildcards (and its escape, the backslash) in s,
// for a pattern that matches s literally: SQLite with ESCAPE '\', PostgreSQL
// (LIKE and ILIKE) by default.
func EscapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
