package destination_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"fanout/destination"
	"fanout/destination/match"
)

// TestRegistry_Matching: the type index finds what a walk of every
// destination would, in id order, each destination once, within its tenant,
// and the payload filter keeps those it matches.
func TestRegistry_Matching(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, _, _ := openRegistry(t)
	mk := func(tenant string, all bool, filter []string, m string) string {
		d := &destination.Destination{URL: "https://x.example/" + fmt.Sprint(len(r.List())), Enabled: true, Tenant: tenant,
			AllTenants: all, Filter: filter}
		if m != "" {
			f, err := match.Compile([]byte(m))
			if err != nil {
				t.Fatal(err)
			}
			d.Match = f
		}
		if err := r.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
		return d.ID
	}
	anyA := mk("a", false, nil, "")
	exactA := mk("a", false, []string{"order.paid"}, "")
	twiceA := mk("a", false, []string{"order.*", "order.paid", "*"}, "")
	prefixA := mk("a", false, []string{"order.*"}, `{"data.amount":{"$gte":100}}`)
	otherB := mk("b", false, []string{"order.paid"}, "")
	audit := mk("", true, []string{"order.*"}, "")
	disabled := mk("a", false, nil, "")
	if _, err := r.Update(ctx, disabled, func(d *destination.Destination) error { d.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }
	tests := []struct {
		name, tenant, typ, payload string
		want                       []string
	}{
		{"exact, prefix, any and every tenant's", "a", "order.paid", `{"data":{"amount":150}}`, sorted(anyA, exactA, twiceA, prefixA, audit)},
		{"the payload filter refuses", "a", "order.paid", `{"data":{"amount":50}}`, sorted(anyA, exactA, twiceA, audit)},
		{"prefix only", "a", "order.refunded", `{"data":{"amount":150}}`, sorted(anyA, twiceA, prefixA, audit)},
		{"no type", "a", "", `{}`, sorted(anyA, twiceA)},
		{"another tenant", "b", "order.paid", `{}`, sorted(otherB, audit)},
		{"a tenant with none", "c", "user.new", `{}`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, d := range r.Matching(tc.tenant, tc.typ, []byte(tc.payload), match.Envelope{Type: tc.typ, Tenant: tc.tenant, Time: time.Now()}) {
				got = append(got, d.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Matching(%s, %q) = %v, want %v", tc.tenant, tc.typ, got, tc.want)
			}
		})
	}
}

// BenchmarkRouting: 1,000 destinations, of which 10 want the event's type
// and carry a payload filter (issue 21: the routing step at most 20 µs).
func BenchmarkRouting(b *testing.B) {
	ctx := context.Background()
	r, _, _ := openRegistry(b)
	for i := range 1000 {
		d := &destination.Destination{URL: fmt.Sprintf("https://x.example/%d", i), Enabled: true,
			Filter: []string{fmt.Sprintf("type.%d", i%100), "other.*"}}
		if i%100 == 7 {
			f, err := match.Compile([]byte(`{"data.amount":{"$gte":100},"data.currency":{"$in":["EUR","USD"]},"$tenant":"default"}`))
			if err != nil {
				b.Fatal(err)
			}
			d.Match = f
		}
		if err := r.Create(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	payload := []byte(`{"type":"type.7","id":"evt_123","data":{"amount":150,"currency":"EUR","customer":{"id":"c_1","email":"a@example.com"},"items":[{"sku":"a"},{"sku":"b"}]}}`)
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		n = len(r.Matching(destination.DefaultTenant, "type.7", payload, match.Envelope{Type: "type.7", Tenant: destination.DefaultTenant}))
	}
	if n != 10 {
		b.Fatalf("%d destinations matched, want 10", n)
	}
}
