package match

import (
	"fmt"
	"strings"
	"testing"
)

// TestCompile_RegexCount: a filter may hold MaxRegexes $regex, no more: each
// reads every string it is tried on, and hundreds of them on a large
// payload made one event cost a second of routing.
func TestCompile_RegexCount(t *testing.T) {
	build := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(`{"f%d":{"$regex":"a+b"}}`, i)
		}
		return `{"$or":[` + strings.Join(parts, ",") + `]}`
	}
	if _, err := Compile([]byte(build(MaxRegexes))); err != nil {
		t.Fatalf("%d $regex: %v", MaxRegexes, err)
	}
	_, err := Compile([]byte(build(MaxRegexes + 1)))
	if err == nil || !strings.Contains(err.Error(), "$regex") {
		t.Fatalf("%d $regex: %v, want an error naming $regex", MaxRegexes+1, err)
	}
}
