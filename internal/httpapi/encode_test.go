package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// FuzzDecodeBatch checks that the batch decoder never panics, and that what
// it accepts is what encoding/json reads as an array of objects, each within
// the limits and kept byte for byte.
func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{`[{"a":1}]`, `[{}, {"b":[1,2,{"c":null}]}]`, `[]`, `[{}, 3]`, `{"a":1}`, ` [ {} , {} ] `,
		`[{"a":"\u00e9\ud83d\ude00"}]`, `[{}]]`, `[{"a":1e999}]`, "[{\"a\":\"\xff\"}]",
		`[{"a":"}\"{"},{"b":"\\"}]`, "\t[\n{ \"x\" : [ ] }\r,{}\n]\n"} {
		f.Add([]byte(s))
	}
	limits := Limits{MaxEventBytes: 256, MaxBatchBytes: 4096, MaxBatchEvents: 16}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := decodeBatch(body, limits)
		// The fast path and the decoder agree: the fast path takes
		// exactly the batches the decoder accepts, and splits them the
		// same way.
		fast, ok := splitBatch(body, limits)
		slow, slowErr := scanBatch(body, limits)
		if ok != (slowErr == nil) {
			t.Fatalf("splitBatch ok=%v, scanBatch error %v, on %q", ok, slowErr, body)
		}
		if ok && (len(fast) != len(slow) || !slices.EqualFunc(fast, slow, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) })) {
			t.Fatalf("splitBatch %q, scanBatch %q", fast, slow)
		}
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

// BenchmarkDecodeBatch decodes a batch of 1,000 events of about 200 bytes,
// as the load tool sends them.
func BenchmarkDecodeBatch(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i := range 1000 {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"id":"evt-%08d","type":"order.created","data":{"order":%d,"customer":"c-%06d","total":"129.95","note":"a \"quoted\" word and some padding to about two hundred bytes"}}`, i, i, i)
	}
	buf.WriteByte(']')
	body := buf.Bytes()
	limits := Limits{MaxEventBytes: 1 << 20, MaxBatchBytes: 16 << 20, MaxBatchEvents: 10000}
	b.SetBytes(int64(len(body)))
	for _, bc := range []struct {
		name   string
		decode func([]byte, Limits) ([]json.RawMessage, error)
	}{{"split", decodeBatch}, {"decoder", scanBatch}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if events, err := bc.decode(body, limits); err != nil || len(events) != 1000 {
					b.Fatal(len(events), err)
				}
			}
		})
	}
}
