package httpapi

import (
	"encoding/json"
	"testing"
)

// FuzzValidateEvent checks that an accepted event is a JSON object that
// encoding/json reads, and that a refusal never panics.
func FuzzValidateEvent(f *testing.F) {
	for _, s := range []string{`{"user_id":"42"}`, `[]`, `"x"`, `{`, ``, ` {} `, `{"a":1}{}`, "{\"\xff\":1}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if err := ValidateEvent(body); err != nil {
			return
		}
		var obj map[string]json.RawMessage // raw: 1e999 is valid JSON, though no float64
		if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
			t.Fatalf("validateEvent accepted %q, which is not a JSON object: %v", body, err)
		}
	})
}
