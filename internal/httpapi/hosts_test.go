package httpapi

import (
	"net"
	"testing"
)

// TestHostPolicy: which Host headers fanout answers without a token.
func TestHostPolicy(t *testing.T) {
	t.Parallel()
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	loopback := NewHostPolicy(tcp("127.0.0.1:8000"), "localhost:8000", "")
	public := NewHostPolicy(tcp("10.1.2.3:8000"), "10.1.2.3:8000", "https://Fanout.Example.com/base")
	named := NewHostPolicy(tcp("127.0.0.1:8000"), "fanout.internal:8000", "")
	tests := []struct {
		name   string
		policy *HostPolicy
		host   string
		want   bool
	}{
		{"Localhost", loopback, "localhost:8000", true},
		{"LocalhostAnyCaseDot", loopback, "LocalHost.:8000", true},
		{"LocalhostNoPort", loopback, "localhost", true},
		{"SubdomainOfLocalhost", loopback, "app.localhost:8000", true},
		{"Loopback", loopback, "127.0.0.1:8000", true},
		{"OtherLoopback", loopback, "127.8.9.1", true},
		{"LoopbackV6", loopback, "[::1]:8000", true},
		{"MappedLoopback", loopback, "[::ffff:127.0.0.1]:8000", true},
		{"RebindingName", loopback, "rebind.attacker.example:8000", false},
		{"RebindingNameNoPort", loopback, "rebind.attacker.example", false},
		{"LocalhostAsLabel", loopback, "localhost.attacker.example:8000", false},
		{"LocalhostSuffixTrick", loopback, "evil-localhost:8000", false},
		{"Empty", loopback, "", false},
		{"OtherAddress", loopback, "10.0.0.5:8000", false},
		{"PublicURLHost", public, "fanout.example.com", true},
		{"PublicURLHostWithPort", public, "FANOUT.example.com:443", true},
		{"PublicURLSuffix", public, "fanout.example.com.attacker.example", false},
		{"PublicURLParent", public, "example.com", false},
		{"ListenAddress", public, "10.1.2.3:8000", true},
		{"NotListenAddress", public, "10.1.2.4:8000", false},
		{"ListenName", named, "fanout.internal:8000", true},
		{"NotListenName", named, "fanout.internal.attacker.example:8000", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.policy.Allows(tc.host); got != tc.want {
				t.Fatalf("allows(%q) = %v, want %v", tc.host, got, tc.want)
			}
		})
	}
}
