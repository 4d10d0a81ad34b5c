package service

import (
	"strings"
	"testing"
)

func TestParseToken(t *testing.T) {
	tests := []struct {
		raw, id, secret string
		ok              bool
	}{
		{"fo_0123456789abcdef_c2VjcmV0", "tok_0123456789abcdef", "c2VjcmV0", true},
		{"fo_0123456789ABCDEF_x", "tok_0123456789ABCDEF", "x", true},
		{"fo_0123456789abcdef_", "", "", false},      // no secret
		{"fo_0123456789abcde_x", "", "", false},      // short id
		{"fo_0123456789abcdeg_x", "", "", false},     // not hex
		{"fx_0123456789abcdef_x", "", "", false},     // not ours
		{"operator-token-0123456789", "", "", false}, // an operator's
		{"fo_0123456789abcdef_" + strings.Repeat("a", 101), "", "", false},
	}
	for _, tc := range tests {
		id, secret, ok := parseToken(tc.raw)
		if id != tc.id || secret != tc.secret || ok != tc.ok {
			t.Errorf("parseToken(%q) = %q, %q, %v; want %q, %q, %v", tc.raw, id, secret, ok, tc.id, tc.secret, tc.ok)
		}
	}
}

// FuzzParseToken: any bearer token is split without panicking, and what
// is taken names a document of the shape MintToken writes.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"fo_0123456789abcdef_c2VjcmV0", "fo__", "fo_", "", "fo_0123456789abcdef_\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		id, secret, ok := parseToken(raw)
		if !ok {
			return
		}
		if len(id) != len("tok_")+16 || !strings.HasPrefix(id, "tok_") || secret == "" || len(secret) > 100 ||
			raw != tokenPrefix+strings.TrimPrefix(id, "tok_")+"_"+secret {
			t.Fatalf("parseToken(%q) = %q, %q", raw, id, secret)
		}
	})
}
