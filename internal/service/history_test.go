package service

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func TestStats_Quantiles(t *testing.T) {
	t.Parallel()
	var h [latencyBins]uint32
	if v := quantile(&h, 0.5); !math.IsNaN(v) {
		t.Fatalf("empty: %v, want NaN", v)
	}
	for i := 1; i <= 1000; i++ {
		h[latencyBin(float64(i))]++ // 1..1000 ms
	}
	for _, tt := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}, {0.01, 10}} {
		got := quantile(&h, tt.q)
		if got < tt.want || got > tt.want*1.2 {
			t.Errorf("p%v = %v, want %v within a bin (+19%%)", tt.q*100, got, tt.want)
		}
	}
	if latencyBin(-1) != 0 || latencyBin(1e12) != latencyBins-1 {
		t.Fatal("out of range latencies must fall in the end bins")
	}
}

// TestTypeFilter: what a type pattern of the API becomes for the store: a
// prefix keeps everything before the *, the dot too (order.* must not match
// orders.x, which the conformance suite's ScanTypes checks of each driver
// given this shape), in characters, not bytes.
func TestTypeFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in             string
		tags, prefixes []string
		anyType        bool
		wantErr        string
	}{
		{in: "order.*", prefixes: []string{"order."}},
		{in: "order*", prefixes: []string{"order"}},
		{in: "bestellung.grö*", prefixes: []string{"bestellung.grö"}},
		{in: "order.paid, user.*", tags: []string{"order.paid"}, prefixes: []string{"user."}},
		{in: "order.*,*", anyType: true},
		{in: " , ", tags: nil},
		{in: "or*der", wantErr: "only a trailing *"},
		{in: "o*.*", wantErr: "only a trailing *"},
		{in: strings.Repeat("x", 201), wantErr: "up to 200 characters"},
		{in: "\xff*", wantErr: "UTF-8"},
	}
	for _, tc := range tests {
		tags, prefixes, anyType, err := typeFilter(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("typeFilter(%q) err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(tags, tc.tags) || !slices.Equal(prefixes, tc.prefixes) || anyType != tc.anyType {
			t.Errorf("typeFilter(%q) = %q, %q, %v, %v; want %q, %q, %v", tc.in, tags, prefixes, anyType, err, tc.tags, tc.prefixes, tc.anyType)
		}
	}
}
