package storeutil

import (
	"strings"
	"sync"
)

// RowKind names what a statement writes, for dispatch.StoreStats.Rows:
// "calls inserted", "attempts updated", "dedup deleted"; "" for a
// statement that writes no row (a SELECT, a pragma). It reads the
// statement's first words, so a statement that starts with a WITH clause
// is counted as "".
func RowKind(query string) string {
	f := strings.Fields(query)
	word := func(i int) string {
		if i < len(f) {
			return strings.ToUpper(f[i])
		}
		return ""
	}
	table := func(i int) string {
		if i < len(f) {
			t, _, _ := strings.Cut(f[i], "(")
			return strings.ToLower(t)
		}
		return ""
	}
	switch word(0) {
	case "INSERT":
		i := 1
		if word(i) == "OR" {
			i += 2
		}
		if word(i) == "INTO" {
			return table(i+1) + " inserted"
		}
	case "UPDATE":
		return table(1) + " updated"
	case "DELETE":
		if word(1) == "FROM" {
			return table(2) + " deleted"
		}
	}
	return ""
}

// RowCounter adds up the rows that committed transactions wrote, by kind.
type RowCounter struct {
	mu   sync.Mutex
	rows map[string]int64
}

// Add adds what one committed transaction wrote.
func (c *RowCounter) Add(rows map[string]int64) {
	if len(rows) == 0 {
		return
	}
	c.mu.Lock()
	if c.rows == nil {
		c.rows = make(map[string]int64)
	}
	for k, n := range rows {
		c.rows[k] += n
	}
	c.mu.Unlock()
}

// Snapshot returns a copy of the counts.
func (c *RowCounter) Snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.rows))
	for k, n := range c.rows {
		out[k] = n
	}
	return out
}
