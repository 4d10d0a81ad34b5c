package destination

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestOrdering_Validate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		key, want string // want: "" for valid, else a part of the error
	}{
		{"$type", ""},
		{"$tenant", ""},
		{"customer.id", ""},
		{"items.0.sku", ""},
		{"a*b.c?", ""}, // taken as written, not as gjson's wildcards
		{"", "required"},
		{"$time", `"$type" and "$tenant"`},
		{"$", `"$type" and "$tenant"`},
		{"a..b", "empty segment"},
		{".a", "empty segment"},
		{"a.", "empty segment"},
		{strings.Repeat("a.", 32) + "a", "more than 32 segments"},
		{strings.Repeat("a", 257), "longer than 256"},
		{"a\xffb", "UTF-8"},
	} {
		err := (&Ordering{Key: tc.key}).Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v, want valid", tc.key, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want an error naming %q", tc.key, err, tc.want)
		}
	}
}

func TestOrdering_OrderKey(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		key, payload, typ, tenant, want string
	}{
		{"customer.id", `{"customer":{"id":"c1"}}`, "", "", `"c1"`},
		{"customer.id", `{"customer":{"id":42}}`, "", "", `42`},
		{"customer.id", `{"customer":{"id":1.0}}`, "", "", `1.0`},
		{"customer.id", `{"customer":{"id":true}}`, "", "", `true`},
		{"customer.id", `{"customer":{"id":null}}`, "", "", NoOrderKey},
		{"customer.id", `{"customer":{"id":{"a":1}}}`, "", "", NoOrderKey},
		{"customer.id", `{"customer":{}}`, "", "", NoOrderKey},
		{"customer.id", `not json`, "", "", NoOrderKey},
		{"customer.id", `{"customer":{"id":"a\"b<"}}`, "", "", `"a\"b\u003c"`},
		{"items.1", `{"items":["a","b"]}`, "", "", `"b"`},
		{"a*", `{"ab":"no","a*":"yes"}`, "", "", `"yes"`},
		{"$type", `{}`, "order.paid", "", `"order.paid"`},
		{"$type", `{}`, "", "", NoOrderKey},
		{"$tenant", `{}`, "", "acme", `"acme"`},
		{"$tenant", `{}`, "", "", `"default"`},
		{"k", `{"k":"` + long + `"}`, "", "", `"sha256:`},
	} {
		got := (&Ordering{Key: tc.key}).OrderKey([]byte(tc.payload), tc.typ, tc.tenant)
		if got != tc.want && !(strings.HasSuffix(tc.want, ":") && strings.HasPrefix(got, tc.want)) {
			t.Errorf("%s of %s: %s, want %s", tc.key, tc.payload, got, tc.want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("%s of %s: %s is not JSON", tc.key, tc.payload, got)
		}
	}
}

// FuzzOrderKey: whatever the payload and path, a valid ordering's key of
// an event is a JSON value (what the API shows), never empty (the runtime
// would run the delivery in no order), at most 200 bytes or a hash, and
// the same for the same event.
func FuzzOrderKey(f *testing.F) {
	f.Add("customer.id", []byte(`{"customer":{"id":"c1"}}`), "t", "acme")
	f.Add("a.0.b", []byte(`{"a":[{"b":1e400}]}`), "", "")
	f.Add("$type", []byte(`[]`), "order.paid", "")
	f.Add("x", []byte(`{"x":"\ud800"}`), "", "")
	f.Fuzz(func(t *testing.T, key string, payload []byte, typ, tenant string) {
		o := &Ordering{Key: key}
		if o.Validate() != nil {
			return
		}
		got := o.OrderKey(payload, typ, tenant)
		if got == "" || !json.Valid([]byte(got)) || len(got) > maxOrderValue {
			t.Fatalf("%q of %q: key %q", key, payload, got)
		}
		if again := o.OrderKey(payload, typ, tenant); again != got {
			t.Fatalf("%q of %q: %q then %q", key, payload, got, again)
		}
	})
}
