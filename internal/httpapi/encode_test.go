package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzDecodeBatch checks that the batch decoder never panics, and that what
// it accepts is what encoding/json reads as an array of objects, each within
// the limits and kept byte for byte.
func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{`[{"a":1}]`, `[{}, {"b":[1,2,{"c":null}]}]`, `[]`, `[{}, 3]`, `{"a":1}`, ` [ {} , {} ] `,
		`[{"a":"\u00e9\ud83d\ude00"}]`, `[{}]]`, `[{"a":1e999}]`, "[{\"a\":\"\xff\"}]"} {
		f.Add([]byte(s))
	}
	limits := Limits{MaxEventBytes: 256, MaxBatchBytes: 4096, MaxBatchEvents: 16}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := decodeBatch(body, limits)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status < 400 || ae.Status > 499 || ae.Message == "" {
				t.Fatalf("decodeBatch error %v is not a 4xx with a message", err)
			}
			return
		}
		var want []json.RawMessage
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("decodeBatch accepted %q, which encoding/json rejects: %v", body, err)
		}
		if len(events) != len(want) || len(events) == 0 || len(events) > limits.MaxBatchEvents {
			t.Fatalf("decodeBatch gave %d events, encoding/json %d", len(events), len(want))
		}
		for i, e := range events {
			if err := ValidateEvent(e); err != nil {
				t.Fatalf("event %d %q accepted but invalid: %v", i, e, err)
			}
			if int64(len(e)) > limits.MaxEventBytes || !bytes.Contains(body, e) {
				t.Fatalf("event %d %q is over the limit or not the request's own bytes", i, e)
			}
		}
	})
}
