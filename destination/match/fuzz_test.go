package match

import (
	"bytes"
	"testing"
	"time"
)

var fuzzPayloads = []string{
	order,
	`{"a":1}`, `{"a":[1,2,{"b":3}]}`, `{"a":{"b":[{"c":"x"},{"c":["y","z"]}]}}`, `[{"a":1},{"a":2}]`,
	`{"a":null,"b":true,"c":false,"d":"","e":-0.0,"f":1e2,"g":"caf\u00e9"}`, `not json`, ``, `"s"`,
	`{"a":{"0":1},"b":[[1,2],[3]]}`, `{"a.b":1,"a":{"b":2}}`, `{"a*":1,"a\\b":2,"a|b":3,"#":4,"@this":5}`,
	`{"n":12345678901234567891,"m":0.30000000000000004}`,
}

func FuzzMatch(f *testing.F) {
	for _, c := range matchCases {
		f.Add([]byte(c.filter), []byte(c.payload), testEnv.Type, testEnv.Tenant, testEnv.Time.Unix())
	}
	filters := []string{
		`{"a":1}`, `{"a":{"$neq":1}}`, `{"a.b":{"$gt":2}}`, `{"a.b.c":"y"}`, `{"a.0":1}`, `{"b.1":3}`,
		`{"a":{"$in":[1,"1",null,true]}}`, `{"a":{"$nin":[2]}}`, `{"a":{"$exist":false}}`, `{"a":null}`,
		`{"e":0}`, `{"f":{"$lte":100}}`, `{"g":{"$regex":"é$"}}`, `{"a":{"$startsWith":""}}`,
		`{"$or":[{"a":1},{"$not":{"b":true}}]}`, `{"$and":[{"a":{"$exist":true}},{"a":{"$not":{"$gt":0}}}]}`,
		`{"a":{"b":{"$or":[{"c":"x"},{"$lt":"z"}]}}}`, `{"$type":{"$endsWith":".paid"},"$tenant":{"$neq":"x"}}`,
		`{"$time":{"$in":["2025-03-01T12:00:00Z"]}}`, `{"a*":1}`, `{"a\\b":2}`, `{"#":4}`, `{"@this":5}`,
		`{"n":{"$gt":12345678901234567890}}`, `{"m":{"$lt":0.3}}`, `{"a":{"$not":{"0":1}}}`,
	}
	for _, fl := range filters {
		for _, p := range fuzzPayloads {
			f.Add([]byte(fl), []byte(p), "order.paid", "", int64(0))
		}
	}
	f.Fuzz(func(t *testing.T, filter, payload []byte, typ, tenant string, unix int64) {
		c, err := Compile(filter)
		if err != nil {
			return
		}
		env := Envelope{Type: typ, Tenant: tenant}
		if unix != 0 {
			env.Time = time.Unix(unix%(1<<34), 0)
		}
		got := c.Match(payload, env)
		ok, why := c.Explain(payload, env)
		if ok != got || ok != (len(why) == 0) {
			t.Fatalf("Match %v, Explain %v %q", got, ok, why)
		}
		if !utfValid(typ) || !utfValid(tenant) {
			return
		}
		want, judged := refMatch(t, filter, payload, env)
		if judged && got != want {
			t.Fatalf("filter %s on %q (%+v): Match %v, reference %v (%q)", filter, payload, env, got, want, why)
		}
	})
}

// utfValid: the reference decodes strings as encoding/json does, with
// invalid UTF-8 made U+FFFD; Envelope strings are compared as they are.
func utfValid(s string) bool {
	return bytes.Equal([]byte(s), bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
}

func FuzzCompile(f *testing.F) {
	for _, c := range matchCases {
		f.Add([]byte(c.filter))
	}
	f.Add([]byte(`{"a":{"$regex":"(a+)+$"}}`))
	f.Add([]byte(`{"$not":{"$or":[{"a":{"$in":[1,2]}},{"$time":{"$gte":"2025-01-01T00:00:00.5+02:00"}}]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Compile(raw)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T %v, not an *Error", err, err)
			}
			return
		}
		out, err := c.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Compile(out)
		if err != nil {
			t.Fatalf("%s compiled, its MarshalJSON %s does not: %v", raw, out, err)
		}
		out2, _ := c2.MarshalJSON()
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip: %s, then %s", out, out2)
		}
		for _, p := range fuzzPayloads {
			c.Match([]byte(p), testEnv)
			c.Explain([]byte(p), testEnv)
		}
	})
}
