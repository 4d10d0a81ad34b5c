package main

import (
	"slices"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(slices.Clone(c.in)); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestSplitAt(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	lat := ms(9, 1, 5, 2, 7)
	before, after := splitAt(lat, 3)
	if !slices.Equal(before, ms(1, 5, 9)) || !slices.Equal(after, ms(2, 7)) {
		t.Errorf("splitAt 3: %v %v", before, after)
	}
	if !slices.Equal(lat, ms(9, 1, 5, 2, 7)) {
		t.Errorf("splitAt changed its input: %v", lat)
	}
	if b, a := splitAt(lat, -1); len(b) != 0 || len(a) != 5 {
		t.Errorf("splitAt -1: %v %v", b, a)
	}
	if b, a := splitAt(lat, 99); len(b) != 5 || len(a) != 0 {
		t.Errorf("splitAt 99: %v %v", b, a)
	}
}

func TestPhaseOrderAlternates(t *testing.T) {
	if !slices.Equal(phaseOrder(0), []bool{false, true}) || !slices.Equal(phaseOrder(1), []bool{true, false}) ||
		!slices.Equal(phaseOrder(2), phaseOrder(0)) {
		t.Errorf("phase orders %v %v %v", phaseOrder(0), phaseOrder(1), phaseOrder(2))
	}
}

func TestMedianTenants(t *testing.T) {
	run := func(alone, beside float64, aAccepted int64, missing int, errs map[string]int) *tenantsReport {
		r := &tenantsReport{Alone: tenantPhase{BP99: alone}, Beside: tenantPhase{BP99: beside, AAccepted: aAccepted,
			BMissing: missing, AErrors: errs}}
		r.P99Ratio = ratio(beside, alone)
		return r
	}
	m := medianTenants([]*tenantsReport{
		run(10, 20, 100, 0, nil),
		run(10, 40, 90, 2, map[string]int{"429": 1}),
		run(20, 10, 100, 0, nil),
	})
	if m.Runs != 3 || m.P99Ratio != 2 || !slices.Equal(m.P99RatioRange, []float64{0.5, 4}) ||
		!slices.Equal(m.PerRunP99Ratio, []float64{2, 4, 0.5}) {
		t.Errorf("ratio: median %v range %v per run %v", m.P99Ratio, m.P99RatioRange, m.PerRunP99Ratio)
	}
	if m.Alone.BP99 != 10 || m.Beside.BP99 != 20 {
		t.Errorf("p99 medians %v %v", m.Alone.BP99, m.Beside.BP99)
	}
	if m.Beside.AAccepted != 90 || m.Beside.BMissing != 2 || m.Beside.AErrors["429"] != 1 {
		t.Errorf("worst run's counts: accepted %d missing %d errors %v", m.Beside.AAccepted, m.Beside.BMissing, m.Beside.AErrors)
	}
	if ratio(1, 0) != 0 {
		t.Error("ratio over 0")
	}
}
