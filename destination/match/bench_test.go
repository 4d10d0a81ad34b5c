package match

import (
	"fmt"
	"testing"
)

// A 200-byte event payload.
var benchPayload = []byte(`{"id":"evt_01J9","data":{"amount":150,"currency":"EUR","status":"paid",` +
	`"customer":{"id":"c_1","email":"ann@example.com","tier":"gold"},"tags":["vip","eu"],` +
	`"created":"2025-03-01T12:00:00Z"}}`)

func BenchmarkMatch(b *testing.B) {
	f, err := Compile([]byte(`{"data":{"amount":{"$gte":100},"currency":"EUR"},"data.customer.tier":{"$in":["gold","platinum"]}}`))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchPayload)))
	b.ReportAllocs()
	for b.Loop() {
		if !f.Match(benchPayload, testEnv) {
			b.Fatal("no match")
		}
	}
}

// BenchmarkMatch10 is the routing of one event through 10 destinations'
// filters, of 3 conditions each, some on arrays, envelope and regex.
func BenchmarkMatch10(b *testing.B) {
	var fs []*Filter
	for i := range 10 {
		raw := fmt.Sprintf(`{"data":{"amount":{"$gte":%d},"currency":{"$in":["EUR","USD"]}},`+
			`"$or":[{"data.tags":"vip"},{"data.customer.email":{"$regex":"@example\\.com$"}},{"$type":{"$startsWith":"order."}}]}`, i*20)
		f, err := Compile([]byte(raw))
		if err != nil {
			b.Fatal(err)
		}
		fs = append(fs, f)
	}
	b.SetBytes(int64(len(benchPayload)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for _, f := range fs {
			if f.Match(benchPayload, testEnv) {
				n++
			}
		}
		if n != 8 {
			b.Fatalf("%d matched", n)
		}
	}
}

// BenchmarkMatchEvent10 is BenchmarkMatch10 as the router would do it: the
// payload read once (NewEvent), then the 10 filters.
func BenchmarkMatchEvent10(b *testing.B) {
	var fs []*Filter
	for i := range 10 {
		raw := fmt.Sprintf(`{"data":{"amount":{"$gte":%d},"currency":{"$in":["EUR","USD"]}},`+
			`"$or":[{"data.tags":"vip"},{"data.customer.email":{"$regex":"@example\\.com$"}},{"$type":{"$startsWith":"order."}}]}`, i*20)
		f, err := Compile([]byte(raw))
		if err != nil {
			b.Fatal(err)
		}
		fs = append(fs, f)
	}
	b.SetBytes(int64(len(benchPayload)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		e := NewEvent(benchPayload, testEnv)
		for _, f := range fs {
			if f.MatchEvent(&e) {
				n++
			}
		}
		if n != 8 {
			b.Fatalf("%d matched", n)
		}
	}
}
