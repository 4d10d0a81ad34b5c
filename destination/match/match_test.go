package match

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var testEnv = Envelope{Type: "order.paid", Tenant: "acme", Time: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}

const order = `{"data":{"amount":150,"currency":"EUR","customer":{"id":"c_1","email":"ann@example.com"},
"tags":["vip","eu"],"items":[{"sku":"a1","qty":2},{"sku":"b2","qty":1}],"note":null,"paid":true,
"big":12345678901234567891,"ratio":0.1,"s":"caf\u00e9"}}`

type matchCase struct {
	name, filter, payload string
	want                  bool
}

var matchCases = []matchCase{
	{"empty filter", `{}`, order, true},
	{"nested implicit and", `{"data":{"amount":{"$gte":100},"currency":"EUR"}}`, order, true},
	{"nested and, one false", `{"data":{"amount":{"$gte":100},"currency":"USD"}}`, order, false},
	{"dotted path", `{"data.customer.id":"c_1"}`, order, true},
	{"dotted path in nested", `{"data":{"customer.id":"c_2"}}`, order, false},
	{"array contains", `{"data.tags":"vip"}`, order, true},
	{"array contains not", `{"data.tags":"us"}`, order, false},
	{"array index", `{"data.tags.1":"eu"}`, order, true},
	{"array index out of range", `{"data.tags.5":{"$exist":true}}`, order, false},
	{"path through array", `{"data.items.sku":"b2"}`, order, true},
	{"path through array index", `{"data.items.0.sku":"b2"}`, order, false},
	{"path through array op", `{"data.items.qty":{"$gt":1}}`, order, true},
	{"$eq string", `{"data.currency":{"$eq":"EUR"}}`, order, true},
	{"$eq number exact", `{"data.amount":{"$eq":150.0}}`, order, true},
	{"$eq number as string", `{"data.amount":"150"}`, order, false},
	{"$eq bool", `{"data.paid":true}`, order, true},
	{"$eq null", `{"data.note":null}`, order, true},
	{"$eq null missing", `{"data.nope":null}`, order, false},
	{"$eq unescaped", `{"data.s":"café"}`, order, true},
	{"$neq", `{"data.currency":{"$neq":"USD"}}`, order, true},
	{"$neq equal", `{"data.currency":{"$neq":"EUR"}}`, order, false},
	{"$neq missing", `{"data.nope":{"$neq":"EUR"}}`, order, true},
	{"$neq array has it", `{"data.tags":{"$neq":"vip"}}`, order, false},
	{"$gt", `{"data.amount":{"$gt":149.99}}`, order, true},
	{"$gt equal", `{"data.amount":{"$gt":150}}`, order, false},
	{"$gte", `{"data.amount":{"$gte":150}}`, order, true},
	{"$lt", `{"data.amount":{"$lt":1e3}}`, order, true},
	{"$lte", `{"data.amount":{"$lte":149}}`, order, false},
	{"$gt big integer exact", `{"data.big":{"$gt":12345678901234567890}}`, order, true},
	{"$eq big integer exact", `{"data.big":12345678901234567890}`, order, false},
	{"decimal exact", `{"data.ratio":{"$eq":0.10}}`, order, true},
	{"$gt string lexical", `{"data.currency":{"$gt":"EA"}}`, order, true},
	{"$gt type mismatch", `{"data.currency":{"$gt":1}}`, order, false},
	{"$lt type mismatch", `{"data.amount":{"$lt":"zzz"}}`, order, false},
	{"$gt missing", `{"data.nope":{"$gt":1}}`, order, false},
	{"$gt and $lt", `{"data.amount":{"$gt":100,"$lt":200}}`, order, true},
	{"$in", `{"data.currency":{"$in":["USD","EUR"]}}`, order, true},
	{"$in mixed", `{"data.amount":{"$in":["150",150]}}`, order, true},
	{"$in none", `{"data.currency":{"$in":["USD"]}}`, order, false},
	{"$in array field", `{"data.tags":{"$in":["eu","us"]}}`, order, true},
	{"$in empty", `{"data.currency":{"$in":[]}}`, order, false},
	{"$nin", `{"data.currency":{"$nin":["USD"]}}`, order, true},
	{"$nin has", `{"data.tags":{"$nin":["eu"]}}`, order, false},
	{"$nin missing", `{"data.nope":{"$nin":["eu"]}}`, order, true},
	{"$exist true", `{"data.note":{"$exist":true}}`, order, true},
	{"$exist true missing", `{"data.nope":{"$exist":true}}`, order, false},
	{"$exist false", `{"data.nope":{"$exist":false}}`, order, true},
	{"$exist false present", `{"data.note":{"$exist":false}}`, order, false},
	{"$regex", `{"data.customer.email":{"$regex":"@example\\.(com|org)$"}}`, order, true},
	{"$regex no", `{"data.customer.email":{"$regex":"^bob"}}`, order, false},
	{"$regex not string", `{"data.amount":{"$regex":"1"}}`, order, false},
	{"$regex array", `{"data.tags":{"$regex":"^v"}}`, order, true},
	{"$startsWith", `{"data.customer.id":{"$startsWith":"c_"}}`, order, true},
	{"$startsWith no", `{"data.customer.id":{"$startsWith":"d_"}}`, order, false},
	{"$endsWith", `{"data.customer.email":{"$endsWith":"@example.com"}}`, order, true},
	{"$endsWith number", `{"data.amount":{"$endsWith":"0"}}`, order, false},
	{"$or", `{"$or":[{"data.currency":"USD"},{"data.amount":{"$gt":100}}]}`, order, true},
	{"$or none", `{"$or":[{"data.currency":"USD"},{"data.amount":{"$gt":1000}}]}`, order, false},
	{"$or in field", `{"data.currency":{"$or":["USD","EUR"]}}`, order, true},
	{"$and", `{"$and":[{"data.currency":"EUR"},{"data.amount":{"$gt":100}}]}`, order, true},
	{"$and one false", `{"$and":[{"data.currency":"EUR"},{"data.amount":{"$gt":1000}}]}`, order, false},
	{"$not top", `{"$not":{"data.currency":"USD"}}`, order, true},
	{"$not top false", `{"$not":{"data.currency":"EUR"}}`, order, false},
	{"$not field op", `{"data.currency":{"$not":{"$in":["USD","GBP"]}}}`, order, true},
	{"$not field value", `{"data.currency":{"$not":"EUR"}}`, order, false},
	{"$not missing", `{"data.nope":{"$not":{"$gt":1}}}`, order, true},
	{"$type", `{"$type":"order.paid"}`, order, true},
	{"$type prefix", `{"$type":{"$startsWith":"order."}}`, order, true},
	{"$type no", `{"$type":{"$in":["order.refunded"]}}`, order, false},
	{"$tenant", `{"$tenant":"acme","data.currency":"EUR"}`, order, true},
	{"$tenant regex", `{"$tenant":{"$regex":"^a"}}`, order, true},
	{"$time after", `{"$time":{"$gte":"2025-03-01T00:00:00Z"}}`, order, true},
	{"$time zone", `{"$time":{"$eq":"2025-03-01T13:00:00+01:00"}}`, order, true},
	{"$time before", `{"$time":{"$lt":"2025-03-01T12:00:00Z"}}`, order, false},
	{"$time in $or", `{"$or":[{"$time":{"$lt":"2024-01-01T00:00:00Z"}},{"$type":"order.paid"}]}`, order, true},
	{"not JSON: $eq", `{"data.x":1}`, `not json`, false},
	{"not JSON: $exist false", `{"data.x":{"$exist":false}}`, `not json`, true},
	{"not JSON: $type", `{"$type":"order.paid"}`, `{"a":`, true},
	{"scalar payload", `{"a":1}`, `1`, false},
	{"array payload", `{"a":1}`, `[{"a":1}]`, true},
	{"key with dot in payload", `{"data":{"a":1}}`, `{"data.a":1}`, false},
	{"escaped key", `{"a*b":1}`, `{"a*b":1}`, true},
	{"escaped key not wildcard", `{"a*":1}`, `{"ab":1}`, false},
	{"key with backslash", `{"a\\b":1}`, `{"a\\b":1}`, true},
	{"unicode escaped key", `{"ab":1}`, `{"a\u0062":1}`, true},
	{"-0 is 0", `{"a":0}`, `{"a":-0.0}`, true},
	{"huge exponent", `{"a":{"$gt":1e300}}`, `{"a":1e301}`, true},
}

func TestMatch(t *testing.T) {
	for _, c := range matchCases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Compile([]byte(c.filter))
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Match([]byte(c.payload), testEnv); got != c.want {
				t.Errorf("Match = %v, want %v", got, c.want)
			}
			ok, why := f.Explain([]byte(c.payload), testEnv)
			if ok != c.want || (ok != (len(why) == 0)) {
				t.Errorf("Explain = %v %q, want %v", ok, why, c.want)
			}
			if r, judged := refMatch(t, []byte(c.filter), []byte(c.payload), testEnv); judged && r != c.want {
				t.Errorf("reference = %v, want %v", r, c.want)
			}
		})
	}
}

func refMatch(t *testing.T, filter, payload []byte, env Envelope) (bool, bool) {
	t.Helper()
	doc, hasDoc, ok := refPayload(payload)
	if !ok || hugeExponent(string(filter)) {
		return false, false
	}
	var fm map[string]any
	d := json.NewDecoder(bytes.NewReader(filter))
	d.UseNumber()
	if err := d.Decode(&fm); err != nil {
		t.Fatalf("reference: %v", err)
	}
	return ref(fm, &refEnv{env: env, doc: doc, hasDoc: hasDoc}), true
}

func TestExplain(t *testing.T) {
	cases := []struct{ filter, payload, want string }{
		{`{"data.amount":{"$gte":100}}`, `{"data":{"amount":50}}`, `data.amount: 50 is not >= 100`},
		{`{"data.amount":{"$gte":100}}`, `{"data":{}}`, `data.amount: missing, wanted $gte 100`},
		{`{"data.status":{"$neq":"test"}}`, `{"data":{"status":"test"}}`, `data.status: "test", wanted $neq "test"`},
		{`{"data.x":{"$exist":true}}`, `{}`, `data.x: missing`},
		{`{"data.x":{"$exist":false}}`, `{"data":{"x":1}}`, `data.x: is there (1), wanted $exist false`},
		{`{"data.c":{"$in":["USD","GBP"]}}`, `{"data":{"c":"EUR"}}`, `data.c: "EUR" is not in ["USD","GBP"]`},
		{`{"$type":{"$startsWith":"order."}}`, `{}`, `$type: "user.created" does not start with "order."`},
		{`{"$or":[{"a":1},{"b":2}]}`, `{"a":2}`, "none of $or matched|$or[0]: a: 2 is not 1|$or[1]: b: missing, wanted $eq 2"},
		{`{"a":{"$not":{"$lt":5}}}`, `{"a":2}`, `a: matches {"$lt":5}, which $not excludes`},
		{`{"a":1,"b":{"$regex":"^x"}}`, `{"a":0,"b":"y"}`, `a: 0 is not 1|b: "y" does not match "^x"`},
	}
	for _, c := range cases {
		f, err := Compile([]byte(c.filter))
		if err != nil {
			t.Fatal(err)
		}
		ok, why := f.Explain([]byte(c.payload), Envelope{Type: "user.created"})
		if ok || strings.Join(why, "|") != c.want {
			t.Errorf("%s on %s: %v %q, want %q", c.filter, c.payload, ok, strings.Join(why, "|"), c.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	deep := strings.Repeat(`{"a":`, MaxDepth+1) + "1" + strings.Repeat("}", MaxDepth+1)
	many := `{"$or":[` + strings.TrimSuffix(strings.Repeat(`{"a":1},`, MaxConditions+1), ",") + `]}`
	longIn := `{"a":{"$in":[` + strings.TrimSuffix(strings.Repeat(`1,`, MaxInList+1), ",") + `]}}`
	cases := []struct{ filter, path, msg string }{
		{`[]`, "", "a filter is a JSON object"},
		{`{"a":`, "", "not valid JSON"},
		{`{"a":1}{}`, "", "not valid JSON"},
		{`{"a":{"$foo":1}}`, "a.$foo", "unknown operator $foo"},
		{`{"$gt":1}`, "$gt", "applies to a field"},
		{`{"a":{"$gt":true}}`, "a.$gt", "$gt takes a number or a string"},
		{`{"a":{"$eq":[1]}}`, "a.$eq", "a value to compare with"},
		{`{"a":{"$eq":{"b":1}}}`, "a.$eq", "a value to compare with"},
		{`{"a":[1,2]}`, "a", "an array is not a condition"},
		{`{"a":{}}`, "a", "an empty object"},
		{`{"a":{"$in":"x"}}`, "a.$in", "$in takes a list"},
		{`{"a":{"$in":[{}]}}`, "a.$in[0]", "a value to compare with"},
		{`{"a":{"$exist":1}}`, "a.$exist", "$exist takes true or false"},
		{`{"a":{"$regex":"("}}`, "a.$regex", "$regex: error parsing regexp"},
		{`{"a":{"$regex":"` + strings.Repeat("a", MaxRegex+1) + `"}}`, "a.$regex", "a $regex of"},
		{`{"a":{"$startsWith":1}}`, "a.$startsWith", "$startsWith takes a string"},
		{`{"$or":[]}`, "$or", "non-empty list"},
		{`{"$or":{"a":1}}`, "$or", "non-empty list"},
		{`{"$or":[{"a":1},2]}`, "$or[1]", "a filter is a JSON object"},
		{`{"$not":1}`, "$not", "a filter is a JSON object"},
		{`{"a":{"$type":"x"}}`, "a.$type", "only at the top level"},
		{`{"$type":{"a":1}}`, "$type.a", "not an object with fields"},
		{`{"$time":{"$gt":"yesterday"}}`, "$time.$gt", "not a time in RFC 3339"},
		{`{"$time":{"$regex":"x"}}`, "$time.$regex", "$time takes"},
		{`{"$time":{"$in":["2025-01-01T00:00:00Z",3]}}`, "$time.$in[1]", "$time compares with a time"},
		{`{"a..b":1}`, "a..b", "empty segment"},
		{`{"a.$b":1}`, "a.$b", "may not begin with $"},
		{`{"a":1,"a":2}`, "a", "key given twice"},
		{deep, "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a", "nested more than"},
		{many, "$or[255].a", "more than 256 conditions"},
		{longIn, "a.$in", "at most 512 values"},
		{`{"` + strings.Repeat("a.", MaxPathSegments) + `a":1}`, strings.Repeat("a.", MaxPathSegments) + "a", "segments"},
		{`{"a":"` + strings.Repeat("x", MaxSize) + `"}`, "", "bytes, more than"},
		{"{\"a\":\"\xff\"}", "", "UTF-8"},
	}
	for _, c := range cases {
		_, err := Compile([]byte(c.filter))
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%.60s: error %v, want an *Error", c.filter, err)
			continue
		}
		if e.Path != c.path || !strings.Contains(e.Msg, c.msg) {
			t.Errorf("%.60s: %q at %q, want %q at %q", c.filter, e.Msg, e.Path, c.msg, c.path)
		}
	}
}

func TestMarshalJSON(t *testing.T) {
	in := `{ "data": {"amount": {"$gte": 100.50}, "currency":"EUR"}, "$type":"order.paid" }`
	f, err := Compile([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(f)
	want := `{"data":{"amount":{"$gte":100.50},"currency":"EUR"},"$type":"order.paid"}`
	if string(out) != want {
		t.Errorf("got %s, want %s", out, want)
	}
}

func TestDecimal(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"0", "-0", 0}, {"0.0", "0e10", 0}, {"1", "1.0", 0}, {"10", "1e1", 0}, {"0.1", "1e-1", 0},
		{"2", "10", -1}, {"-2", "-10", 1}, {"-1", "1", -1}, {"0.001", "0.01", -1},
		{"12345678901234567891", "12345678901234567890", 1}, {"1.5", "1.49999999999999999999", 1},
		{"1e400", "1e399", 1}, {"-1e400", "1", -1}, {"100", "99.9", 1}, {"0.000", "-0.1", 1},
	}
	for _, c := range cases {
		a, ok1 := parseDecimal(c.a)
		b, ok2 := parseDecimal(c.b)
		if !ok1 || !ok2 {
			t.Fatalf("%s %s: not parsed", c.a, c.b)
		}
		if got := compareDecimal(&a, &b); got != c.want {
			t.Errorf("compare(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
	for _, bad := range []string{"", "-", "1.", ".1", "1e", "1e+", "01x", "+1", "1..2"} {
		if _, ok := parseDecimal(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}
