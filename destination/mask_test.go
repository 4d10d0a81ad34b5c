package destination_test

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"fanout/destination"
)

func TestMaskSecret(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_…LaSw"},
		{"whsec_abcdefghijkl", "whsec_…ijkl"},      // 12 after the prefix: four shown
		{"whsec_abcdefghijk", "whsec_…"},           // 11: too short to show any
		{"whsec_", "whsec_…"},                      // the prefix alone
		{"hunter2", "…"},                           // no prefix, short
		{"not-a-whsec-secret-0123", "…0123"},       // no prefix, long
		{"whsec_ééééééééééééé€€€€", "whsec_…€€€€"}, // characters, not bytes
	}
	for _, tc := range tests {
		if got := destination.MaskSecret(tc.in); got != tc.want {
			t.Errorf("MaskSecret(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMaskHeader(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"x", "…"},
		{"Bearer x", "…"},
		{"abcdefghijk", "…"},      // 11 characters
		{"abcdefghijkl", "…ijkl"}, // 12
		{"Bearer sk_live_0123456789abcdef", "…cdef"},
		{"ééééééééé€€€€", "…€€€€"},
	}
	for _, tc := range tests {
		if got := destination.MaskHeader(tc.in); got != tc.want {
			t.Errorf("MaskHeader(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDestination_Masked(t *testing.T) {
	t.Parallel()
	const (
		secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
		prev   = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
		auth   = "Bearer sk_live_0123456789abcdef"
	)
	until := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	d := &destination.Destination{ID: "dst_1", URL: "https://example.com/h", Secret: secret, PreviousSecret: prev,
		PreviousSecretExpires: &until, Filter: []string{"order.*"},
		Headers: map[string]string{"Authorization": auth, "X-Team": "ops"}}
	m := d.Masked()
	if m == d {
		t.Fatal("Masked returned the destination itself, not a copy")
	}
	if m.Secret != "whsec_…LaSw" || m.PreviousSecret != "whsec_…b7oD" || m.PreviousSecretExpires == nil ||
		m.Headers["Authorization"] != "…cdef" || m.Headers["X-Team"] != "…" || m.ID != d.ID || m.URL != d.URL {
		t.Fatalf("masked %+v", m)
	}
	// The original is untouched, and the copy's map and slice are its own.
	m.Headers["X-Team"], m.Filter[0] = "changed", "changed"
	if d.Secret != secret || d.PreviousSecret != prev || d.Headers["Authorization"] != auth || d.Headers["X-Team"] != "ops" ||
		d.Filter[0] != "order.*" {
		t.Fatalf("masking changed the destination: %+v", d)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{secret, prev, auth, secret[len(secret)-12:], "sk_live"} {
		if strings.Contains(string(b), s) {
			t.Fatalf("the masked destination's JSON holds %q: %s", s, b)
		}
	}
	if e := (&destination.Destination{}).Masked(); e.Secret != "" || e.PreviousSecret != "" || e.Headers != nil {
		t.Fatalf("an empty destination masked: %+v", e)
	}

	s := d.Secrets()
	if s.Secret != secret || s.PreviousSecret != prev || s.PreviousSecretExpires != &until || !maps.Equal(s.Headers, d.Headers) {
		t.Fatalf("secrets %+v", s)
	}
	if s := (&destination.Destination{Secret: secret}).Secrets(); s.Headers == nil {
		t.Fatal("secrets without headers: nil, want an empty map ({} in JSON)")
	}
}

func TestUnmask(t *testing.T) {
	t.Parallel()
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	secrets := []struct{ name, sent, stored, want string }{
		{"MaskKeeps", "whsec_…LaSw", secret, secret},
		{"NewSecret", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", secret, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"},
		{"OtherMask", "whsec_…abcd", secret, "whsec_…abcd"}, // not this secret's: stays, and Validate refuses it
		{"NothingStored", "whsec_…", "", "whsec_…"},
		{"Invalid", "hunter2", secret, "hunter2"},
	}
	for _, tc := range secrets {
		if got := destination.UnmaskSecret(tc.sent, tc.stored); got != tc.want {
			t.Errorf("%s: UnmaskSecret(%q, %q) = %q, want %q", tc.name, tc.sent, tc.stored, got, tc.want)
		}
	}

	stored := map[string]string{"Authorization": "Bearer sk_live_0123456789abcdef", "X-Team": "ops", "X-Empty": ""}
	headers := []struct {
		name string
		sent map[string]string
		want map[string]string
	}{
		{"Nil", nil, nil},
		{"MasksKept", map[string]string{"Authorization": "…cdef", "X-Team": "…"},
			map[string]string{"Authorization": "Bearer sk_live_0123456789abcdef", "X-Team": "ops"}},
		{"OtherCase", map[string]string{"authorization": "…cdef"}, map[string]string{"authorization": "Bearer sk_live_0123456789abcdef"}},
		{"NewValue", map[string]string{"Authorization": "Bearer new-token-value", "X-Team": "…"},
			map[string]string{"Authorization": "Bearer new-token-value", "X-Team": "ops"}},
		{"OtherMask", map[string]string{"Authorization": "…wxyz"}, map[string]string{"Authorization": "…wxyz"}},
		{"NewHeaderWithMask", map[string]string{"X-New": "…"}, map[string]string{"X-New": "…"}},
		{"Removed", map[string]string{}, map[string]string{}},
		{"EmptyStored", map[string]string{"X-Empty": "…"}, map[string]string{"X-Empty": "…"}},
	}
	for _, tc := range headers {
		got := destination.UnmaskHeaders(tc.sent, stored)
		if !maps.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("%s: UnmaskHeaders(%v) = %v, want %v", tc.name, tc.sent, got, tc.want)
		}
	}
}
