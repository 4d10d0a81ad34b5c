package webhook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/dispatch"
)

// checkRow is an address and what Check must say of it: blocked is the
// reason of the refusal ("" for none), embedded the IPv4 address it names
// when the refusal is of an IPv4 address the IPv6 one carries.
type checkRow struct {
	addr     string
	blocked  string
	embedded string
}

// assertCheck fails the test if g.Check does not say what tc says.
func assertCheck(t *testing.T, g *Guard, tc checkRow) {
	t.Helper()
	err := g.Check(netip.MustParseAddr(tc.addr))
	var be *BlockedError
	switch {
	case tc.blocked == "" && err != nil:
		t.Errorf("Check(%s) = %v, want allowed", tc.addr, err)
	case tc.blocked == "":
	case !errors.As(err, &be) || be.Reason != tc.blocked:
		t.Errorf("Check(%s) = %v, want blocked as %s", tc.addr, err, tc.blocked)
	case tc.embedded == "" && be.Embedded.IsValid():
		t.Errorf("Check(%s) refused it for the IPv4 address %s it carries, want refused on its own", tc.addr, be.Embedded)
	case tc.embedded != "" && be.Embedded != netip.MustParseAddr(tc.embedded):
		t.Errorf("Check(%s) = %v: refused for embedded %v, want for embedded %s", tc.addr, err, be.Embedded, tc.embedded)
	}
}

// TestGuard_Check: one address in every block of the table (the first and
// last where a boundary is at stake, and the addresses just outside), the
// globally reachable exceptions inside refused blocks, and an address of
// every kind that carries an IPv4 address.
func TestGuard_Check(t *testing.T) {
	t.Parallel()
	g := NewGuard(nil)
	tests := []checkRow{
		// Public.
		{"8.8.8.8", "", ""},
		{"93.184.216.34", "", ""},
		{"2606:2800:220:1:248:1893:25c8:1946", "", ""},
		{"2001:4860:4860::8888", "", ""},

		// IPv4, in the order of the table.
		{"0.0.0.0", "unspecified", ""},
		{"0.0.0.1", "reserved", ""},
		{"0.255.255.255", "reserved", ""},
		{"1.0.0.0", "", ""},
		{"9.255.255.255", "", ""},
		{"10.0.0.0", "private", ""},
		{"10.255.255.255", "private", ""},
		{"11.0.0.0", "", ""},
		{"100.63.255.255", "", ""},
		{"100.64.0.1", "shared (CGNAT)", ""},
		{"100.127.255.255", "shared (CGNAT)", ""},
		{"100.128.0.0", "", ""},
		{"127.0.0.1", "loopback", ""},
		{"127.255.255.255", "loopback", ""},
		{"169.254.169.254", "link-local", ""},
		{"169.254.0.0", "link-local", ""},
		{"169.255.0.0", "", ""},
		{"172.15.255.255", "", ""},
		{"172.16.0.1", "private", ""},
		{"172.31.255.255", "private", ""},
		{"172.32.0.0", "", ""},
		{"192.0.0.0", "IETF protocol assignment", ""},
		{"192.0.0.8", "IETF protocol assignment", ""},
		{"192.0.0.9", "", ""},  // PCP anycast
		{"192.0.0.10", "", ""}, // TURN anycast
		{"192.0.0.11", "IETF protocol assignment", ""},
		{"192.0.0.170", "IETF protocol assignment", ""},
		{"192.0.0.171", "IETF protocol assignment", ""},
		{"192.0.0.255", "IETF protocol assignment", ""},
		{"192.0.1.0", "", ""},
		{"192.0.2.1", "documentation", ""},
		{"192.0.2.255", "documentation", ""},
		{"192.31.196.1", "", ""}, // AS112-v4
		{"192.52.193.1", "", ""}, // AMT
		{"192.88.99.1", "", ""},  // deprecated 6to4 relay anycast
		{"192.175.48.1", "", ""}, // AS112 direct delegation
		{"192.167.255.255", "", ""},
		{"192.168.1.1", "private", ""},
		{"192.168.255.255", "private", ""},
		{"192.169.0.0", "", ""},
		{"198.17.255.255", "", ""},
		{"198.18.0.1", "reserved", ""},
		{"198.19.255.255", "reserved", ""},
		{"198.20.0.0", "", ""},
		{"198.51.100.1", "documentation", ""},
		{"203.0.113.9", "documentation", ""},
		{"203.0.114.0", "", ""},
		{"223.255.255.255", "", ""},
		{"224.0.0.1", "link-local", ""},
		{"224.0.1.1", "multicast", ""},
		{"239.255.255.255", "multicast", ""},
		{"240.0.0.1", "reserved", ""},
		{"255.255.255.255", "reserved", ""},
		// IPv4-mapped: the IPv4 address by another spelling.
		{"::ffff:127.0.0.1", "loopback", ""},
		{"::ffff:10.0.0.1", "private", ""},
		{"::ffff:8.8.8.8", "", ""},

		// IPv6, in the order of the table.
		{"::", "unspecified", ""},
		{"::1", "loopback", ""},
		{"::2", "reserved", "0.0.0.2"},
		{"::127.0.0.1", "loopback", "127.0.0.1"},
		{"::169.254.169.254", "link-local", "169.254.169.254"},
		{"::8.8.8.8", "IPv4-compatible (deprecated)", ""},
		{"64:ff9b::a9fe:a9fe", "link-local", "169.254.169.254"},
		{"64:ff9b::7f00:1", "loopback", "127.0.0.1"},
		{"64:ff9b::a00:5", "private", "10.0.0.5"},
		{"64:ff9b::c000:8", "IETF protocol assignment", "192.0.0.8"},
		{"64:ff9b::c000:9", "", ""},
		{"64:ff9b::808:808", "", ""},
		{"64:ff9b::ffff:ffff", "reserved", "255.255.255.255"},
		// Local-use NAT64: the IPv4 address around the u octet.
		{"64:ff9b:1:a9fe:a9:fe00::", "link-local", "169.254.169.254"},
		{"64:ff9b:1:a9fe:ffa9:fe00::", "link-local", "169.254.169.254"}, // u octet set
		{"64:ff9b:1:7f00:0:100::", "loopback", "127.0.0.1"},
		{"64:ff9b:1:c000:0:900::", "local-use NAT64", ""}, // 192.0.0.9, not 192.0.0.0
		{"64:ff9b:1:808:8:800::", "local-use NAT64", ""},
		{"64:ff9b:1::", "unspecified", "0.0.0.0"},
		{"64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "reserved", "255.255.255.255"},
		{"64:ff9b:2::", "", ""},
		{"100::1", "discard-only", ""},
		{"100::ffff:ffff:ffff:ffff", "discard-only", ""},
		{"100:0:0:1::1", "dummy", ""},
		{"100:0:0:1:ffff:ffff:ffff:ffff", "dummy", ""},
		// Teredo: server in bits 32 to 63, client inverted at the end.
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", "private", "10.0.0.1"}, // client 10.0.0.1
		{"2001:0:7f00:1:8000:63bf:f7f7:f7f7", "loopback", "127.0.0.1"},  // server 127.0.0.1
		{"2001:0:4136:e378:8000:63bf:f7f7:f7f7", "", ""},                // 65.54.227.120, 8.8.8.8
		{"2001:0:4136:e378:8000:63bf:5601:5601", "link-local", "169.254.169.254"},
		{"2001:1::1", "", ""},
		{"2001:1::2", "", ""},
		{"2001:1::3", "", ""},
		{"2001:1::4", "IETF protocol assignment", ""},
		{"2001:2::1", "benchmarking", ""},
		{"2001:2:0:ffff:ffff:ffff:ffff:ffff", "benchmarking", ""},
		{"2001:2:1::", "IETF protocol assignment", ""},
		{"2001:3::1", "", ""},
		{"2001:3:ffff:ffff:ffff:ffff:ffff:ffff", "", ""},
		{"2001:4:112::1", "", ""},
		{"2001:4:113::", "IETF protocol assignment", ""},
		{"2001:10::1", "IETF protocol assignment", ""}, // deprecated ORCHID
		{"2001:20::1", "", ""},
		{"2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", "", ""},
		{"2001:30::1", "", ""},
		{"2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", "", ""},
		{"2001:40::", "IETF protocol assignment", ""},
		{"2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "IETF protocol assignment", ""},
		{"2001:200::1", "", ""},
		{"2001:db8::1", "documentation", ""},
		{"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation", ""},
		// 6to4: the router's IPv4 address after 2002.
		{"2002:7f00:1::", "loopback", "127.0.0.1"},
		{"2002:a9fe:a9fe::1", "link-local", "169.254.169.254"},
		{"2002:c0a8:101::", "private", "192.168.1.1"},
		{"2002:808:808::", "", ""},
		{"2620:4f:8000::1", "", ""}, // AS112 direct delegation
		{"3fff::1", "documentation", ""},
		{"3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "documentation", ""},
		{"3fff:1000::", "", ""},
		{"5f00::1", "segment routing (SRv6)", ""},
		{"fc00::1", "private", ""},
		{"fd12::1", "private", ""},
		{"fd00:ec2::254", "private", ""},
		{"fd00::1%eth0", "private", ""}, // a zone hides nothing
		{"fe80::1", "link-local", ""},
		{"fe80::1%eth0", "link-local", ""},
		{"febf:ffff::", "link-local", ""},
		{"fec0::1", "site-local (deprecated)", ""},
		{"feff:ffff::", "site-local (deprecated)", ""},
		{"ff02::1", "link-local", ""},
		{"ff01::1", "multicast", ""},
		{"ff05::2", "multicast", ""},
		{"ff0e::1", "multicast", ""},
	}
	for _, tc := range tests {
		assertCheck(t, g, tc)
	}
	var be *BlockedError
	if err := g.Check(netip.Addr{}); !errors.As(err, &be) {
		t.Errorf("Check of the zero Addr = %v, want refused", err)
	}
}

// TestGuard_CheckAllowed: an allowed network lets through what it contains,
// before anything else, and counts for the IPv4 address an IPv6 one
// carries, except in the blocks refused on their own.
func TestGuard_CheckAllowed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		allow []string
		rows  []checkRow
	}{
		{[]string{"10.1.0.0/16"}, []checkRow{
			{"10.1.2.3", "", ""},
			{"10.2.0.1", "private", ""},
			{"::ffff:10.1.2.3", "", ""},
		}},
		{[]string{"10.0.0.0/8"}, []checkRow{
			{"64:ff9b::a00:5", "", ""},                                    // NAT64 to 10.0.0.5
			{"2002:a00:5::1", "", ""},                                     // 6to4 router 10.0.0.5
			{"2001:0:4136:e378:8000:63bf:f5ff:fffe", "", ""},              // Teredo client 10.0.0.1
			{"64:ff9b::7f00:1", "loopback", "127.0.0.1"},                  // another IPv4 address
			{"64:ff9b:1:a00:0:500::", "local-use NAT64", ""},              // refused on its own
			{"::10.0.0.5", "IPv4-compatible (deprecated)", ""},            // refused on its own
			{"2001:0:a00:1:8000:63bf:80ff:fffe", "loopback", "127.0.0.1"}, // server 10.0.0.1, client 127.0.0.1
		}},
		{[]string{"64:ff9b:1::/48"}, []checkRow{
			{"64:ff9b:1:a00:0:500::", "", ""},
			{"64:ff9b:1:7f00:0:100::", "", ""}, // the IPv6 network is allowed, whatever it carries
			{"64:ff9b::7f00:1", "loopback", "127.0.0.1"},
		}},
		{[]string{"127.0.0.0/8", "fe80::/10"}, []checkRow{
			{"127.0.0.1", "", ""},
			{"::ffff:127.0.0.1", "", ""},
			{"64:ff9b::7f00:1", "", ""},
			{"2002:7f00:1::", "", ""},
			{"::1", "loopback", ""},
			{"fe80::1%eth0", "", ""},
		}},
		{[]string{"0.0.0.0/0", "::/0"}, []checkRow{
			{"127.0.0.1", "", ""},
			{"64:ff9b::7f00:1", "", ""},
			{"fec0::1", "", ""},
		}},
	}
	for _, tc := range tests {
		nets, err := ParseNetworks(tc.allow)
		if err != nil {
			t.Fatal(err)
		}
		g := NewGuard(nets)
		for _, row := range tc.rows {
			assertCheck(t, g, row)
		}
	}
}

// TestBlockedError_Message: a refusal says what the address is, the IPv4
// address that got an IPv6 one refused, and how to allow it.
func TestBlockedError_Message(t *testing.T) {
	t.Parallel()
	g := NewGuard(nil)
	tests := []struct {
		addr string
		want []string
	}{
		{"10.0.0.5", []string{"10.0.0.5, a private address", "--allow-network 10.0.0.5/32"}},
		{"::", []string{"an unspecified address", "--allow-network ::/128"}},
		{"192.0.0.8", []string{"an IETF protocol assignment address"}},
		{"64:ff9b::a9fe:a9fe", []string{"NAT64 destination, 169.254.169.254, is a link-local address", "--allow-network 64:ff9b::a9fe:a9fe/128"}},
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", []string{"Teredo client, 10.0.0.1, is a private address"}},
		{"2002:7f00:1::", []string{"6to4 router, 127.0.0.1, is a loopback address"}},
	}
	for _, tc := range tests {
		err := g.Check(netip.MustParseAddr(tc.addr))
		if err == nil {
			t.Errorf("Check(%s) = nil, want refused", tc.addr)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("refusal of %s: %q does not say %q", tc.addr, err, w)
			}
		}
	}
}

// fakeResolver resolves the names in hosts, and no other, and records the
// lookups.
type fakeResolver struct {
	hosts map[string][]netip.Addr
	mu    sync.Mutex
	asked []string // network host
}

func newFakeResolver(hosts map[string][]string) *fakeResolver {
	r := &fakeResolver{hosts: map[string][]netip.Addr{}}
	for h, addrs := range hosts {
		r.hosts[h] = []netip.Addr{} // found, even with no address
		for _, a := range addrs {
			r.hosts[h] = append(r.hosts[h], netip.MustParseAddr(a))
		}
	}
	return r
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.asked = append(r.asked, network+" "+host)
	r.mu.Unlock()
	addrs, ok := r.hosts[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

func (r *fakeResolver) lookups() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.asked)
}

// TestGuard_CheckHost: a name is resolved with the guard's resolver, and
// refused when any of its addresses is.
func TestGuard_CheckHost(t *testing.T) {
	t.Parallel()
	r := newFakeResolver(map[string][]string{
		"private.test":  {"10.0.0.5"},
		"nat64.test":    {"64:ff9b::7f00:1"},
		"public.test":   {"8.8.8.8", "2001:4860:4860::8888"},
		"mixed.test":    {"8.8.8.8", "169.254.169.254"},
		"mapped.test":   {"::ffff:127.0.0.1"},
		"teredo.test":   {"2001:0:4136:e378:8000:63bf:f5ff:fffe"},
		"nothing.test":  {},
		"loopback.test": {"127.0.0.1"},
	})
	tests := []struct {
		allow    []string
		host     string
		want     dispatch.Status
		blocked  string
		embedded string
	}{
		{nil, "private.test", dispatch.StatusPermanent, "private", ""},
		{nil, "nat64.test", dispatch.StatusPermanent, "loopback", "127.0.0.1"},
		{nil, "mixed.test", dispatch.StatusPermanent, "link-local", ""},
		{nil, "mapped.test", dispatch.StatusPermanent, "loopback", ""},
		{nil, "teredo.test", dispatch.StatusPermanent, "private", "10.0.0.1"},
		{nil, "public.test", dispatch.StatusOK, "", ""},
		{nil, "unknown.test", dispatch.StatusDNS, "", ""},
		{nil, "nothing.test", dispatch.StatusDNS, "", ""},
		{[]string{"127.0.0.0/8"}, "loopback.test", dispatch.StatusOK, "", ""},
		{[]string{"127.0.0.0/8"}, "nat64.test", dispatch.StatusOK, "", ""},
		{nil, "[64:ff9b::a9fe:a9fe]", dispatch.StatusPermanent, "link-local", "169.254.169.254"},
	}
	for _, tc := range tests {
		nets, err := ParseNetworks(tc.allow)
		if err != nil {
			t.Fatal(err)
		}
		err = NewGuard(nets, WithResolver(r)).CheckHost(context.Background(), tc.host)
		if got := dispatch.ErrorStatus(err); got != tc.want {
			t.Errorf("CheckHost(%s) with %v allowed = %v (%v), want %v", tc.host, tc.allow, err, got, tc.want)
			continue
		}
		var be *BlockedError
		if tc.blocked != "" && (!errors.As(err, &be) || be.Reason != tc.blocked ||
			be.Embedded.IsValid() != (tc.embedded != "") || (tc.embedded != "" && be.Embedded.String() != tc.embedded)) {
			t.Errorf("CheckHost(%s) = %v, want blocked as %s (embedded %q)", tc.host, err, tc.blocked, tc.embedded)
		}
	}
	// Everything allowed: nothing is resolved (a proxy may be the only
	// one that can).
	before := len(r.lookups())
	if err := NewGuard(mustNetworks(t, "0.0.0.0/0", "::/0"), WithResolver(r)).CheckHost(context.Background(), "unknown.test"); err != nil {
		t.Errorf("CheckHost with everything allowed = %v", err)
	}
	if after := len(r.lookups()); after != before {
		t.Errorf("CheckHost with everything allowed resolved the name")
	}
}

func mustNetworks(t *testing.T, specs ...string) []netip.Prefix {
	t.Helper()
	nets, err := ParseNetworks(specs)
	if err != nil {
		t.Fatal(err)
	}
	return nets
}

// TestGuard_Dial: the guard's dialer, as the client uses it, refuses a
// loopback destination by address or by name, and reaches it when allowed;
// a name is resolved with the guard's resolver (internal.test exists only
// there), over IPv4 and IPv6, and a name with a blocked address and an
// allowed one reaches the allowed one.
func TestGuard_Dial(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close) // the subtests run in parallel, after this function returns
	var srv6 *httptest.Server
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		srv6 = &httptest.Server{Listener: ln, Config: &http.Server{Handler: srv.Config.Handler}}
		srv6.Start()
		t.Cleanup(srv6.Close)
	}
	r := newFakeResolver(map[string][]string{
		"internal.test": {"127.0.0.1"},
		"nat64.test":    {"64:ff9b::7f00:1"},
		"mixed.test":    {"10.0.0.5", "127.0.0.1"},
		// The IPv6 address first, where nothing listens on the port:
		// the IPv4 one is tried next.
		"dual.test": {"::1", "127.0.0.2", "127.0.0.1"},
	})
	byName := func(name string) string {
		return strings.Replace(srv.URL, "127.0.0.1", name, 1)
	}
	type dialCase struct {
		name   string
		allow  []string
		url    string
		want   dispatch.Status
		lookup string // the lookup the resolver must have seen
		system bool   // resolve with the system's resolver, not the fake one
	}
	tests := []dialCase{
		{"LoopbackRefused", nil, srv.URL, dispatch.StatusPermanent, "", false},
		{"LoopbackByNameRefused", nil, byName("localhost"), dispatch.StatusPermanent, "", true},
		{"LoopbackAllowed", []string{"127.0.0.0/8", "::1"}, srv.URL, dispatch.StatusOK, "", false},
		{"FakeNameRefused", nil, byName("internal.test"), dispatch.StatusPermanent, "ip internal.test", false},
		{"FakeNameAllowed", []string{"127.0.0.0/8"}, byName("internal.test"), dispatch.StatusOK, "ip internal.test", false},
		{"NAT64NameRefused", nil, byName("nat64.test"), dispatch.StatusPermanent, "ip nat64.test", false},
		{"MixedNameReachesTheAllowedAddress", []string{"127.0.0.0/8"}, byName("mixed.test"), dispatch.StatusOK, "ip mixed.test", false},
		{"DualStackName", []string{"127.0.0.0/8", "::1"}, byName("dual.test"), dispatch.StatusOK, "ip dual.test", false},
		{"UnknownName", []string{"127.0.0.0/8"}, byName("unknown.test"), dispatch.StatusDNS, "ip unknown.test", false},
	}
	if srv6 != nil {
		tests = append(tests,
			dialCase{"IPv6LiteralRefused", nil, srv6.URL, dispatch.StatusPermanent, "", false},
			dialCase{"IPv6LiteralAllowed", []string{"::1"}, srv6.URL, dispatch.StatusOK, "", false})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var res Resolver = r
			if tc.system {
				res = nil // the default
			}
			g := NewGuard(mustNetworks(t, tc.allow...), WithResolver(res))
			for _, viaConfig := range []bool{false, true} {
				cfg := Config{Timeout: 2 * time.Second, DialContext: g.DialContext(2 * time.Second)}
				if viaConfig {
					cfg = Config{Timeout: 2 * time.Second, Guard: g}
				}
				c := NewClient(cfg)
				_, err := c.Send(context.Background(), &Request{URL: tc.url, ID: "x", Body: []byte(`{}`)})
				c.Close()
				if got := dispatch.ErrorStatus(err); got != tc.want {
					t.Fatalf("Send to %s (guard in Config: %v) err=%v (%v), want %v", tc.url, viaConfig, err, got, tc.want)
				}
				if tc.want == dispatch.StatusPermanent && !strings.Contains(err.Error(), "--allow-network") {
					t.Fatalf("refusal %q does not say how to allow it", err)
				}
			}
			if tc.lookup != "" && !slices.Contains(r.lookups(), tc.lookup) {
				t.Fatalf("the guard's resolver was not asked %q: %v", tc.lookup, r.lookups())
			}
		})
	}
}

// pipeDialer is a dialFunc for tests: it records the addresses dialed,
// fails those in fail, hangs on those in hang until its context ends, and
// connects the others to one end of a pipe.
type pipeDialer struct {
	fail, hang []string
	mu         sync.Mutex
	dialed     []string
}

func (d *pipeDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dialed = append(d.dialed, addr)
	d.mu.Unlock()
	switch {
	case slices.Contains(d.fail, addr):
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused")}
	case slices.Contains(d.hang, addr):
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	c, other := net.Pipe()
	_ = other.Close()
	return c, nil
}

func (d *pipeDialer) addrs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.dialed)
}

// TestGuard_DialAddresses: what the guard's dialer dials, for a name, an
// address, each network: only allowed addresses, in the resolver's order,
// of the family the network asks for.
func TestGuard_DialAddresses(t *testing.T) {
	t.Parallel()
	r := newFakeResolver(map[string][]string{
		"mixed.test":   {"10.0.0.5", "8.8.8.8", "169.254.169.254", "8.8.4.4"},
		"private.test": {"10.0.0.5", "64:ff9b::a00:5"},
		"mapped.test":  {"::ffff:8.8.8.8"},
		"dual.test":    {"2001:4860:4860::8888", "8.8.8.8"},
		"nat64.test":   {"64:ff9b::808:808"},
		"empty.test":   {},
	})
	tests := []struct {
		name    string
		network string
		addr    string
		fail    []string
		want    []string // dialed; none: a DNS error, unless blocked
		blocked string   // the refusal's reason, if refused
	}{
		{"OnlyAllowed", "tcp", "mixed.test:80", nil, []string{"8.8.8.8:80"}, ""},
		{"InOrder", "tcp", "mixed.test:80", []string{"8.8.8.8:80"}, []string{"8.8.8.8:80", "8.8.4.4:80"}, ""},
		{"NoneAllowed", "tcp", "private.test:80", nil, nil, "private"},
		{"Unmapped", "tcp", "mapped.test:443", nil, []string{"8.8.8.8:443"}, ""},
		{"IPv4Only", "tcp4", "dual.test:80", nil, []string{"8.8.8.8:80"}, ""},
		{"IPv6Only", "tcp6", "dual.test:80", nil, []string{"[2001:4860:4860::8888]:80"}, ""},
		{"FallbackAfterFailure", "tcp", "dual.test:80", []string{"[2001:4860:4860::8888]:80"}, []string{"[2001:4860:4860::8888]:80", "8.8.8.8:80"}, ""},
		{"NAT64Public", "tcp", "nat64.test:80", nil, []string{"[64:ff9b::808:808]:80"}, ""},
		{"IPv6Literal", "tcp", "[2001:4860:4860::8888]:443", nil, []string{"[2001:4860:4860::8888]:443"}, ""},
		{"IPv6LiteralBlocked", "tcp", "[64:ff9b::a9fe:a9fe]:80", nil, nil, "link-local"},
		{"IPv4LiteralBlocked", "tcp", "0.0.0.1:80", nil, nil, "reserved"},
		{"EmptyHost", "tcp", ":80", nil, nil, "unspecified"},
		{"EmptyAnswer", "tcp", "empty.test:80", nil, nil, ""},
		{"UnknownName", "tcp", "unknown.test:80", nil, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := &pipeDialer{fail: tc.fail}
			dial := NewGuard(nil, WithResolver(r)).dialContext(2*time.Second, d.dial)
			c, err := dial(context.Background(), tc.network, tc.addr)
			if c != nil {
				c.Close()
			}
			var be *BlockedError
			switch {
			case tc.blocked != "":
				if !errors.As(err, &be) || be.Reason != tc.blocked {
					t.Fatalf("dial %s: %v, want blocked as %s", tc.addr, err, tc.blocked)
				}
			case tc.want == nil: // nothing to dial
				if got := dispatch.ErrorStatus(err); got != dispatch.StatusDNS {
					t.Fatalf("dial %s: %v (%v), want a DNS error", tc.addr, err, got)
				}
			case err != nil:
				t.Fatalf("dial %s: %v", tc.addr, err)
			}
			if got := d.addrs(); !slices.Equal(got, tc.want) {
				t.Fatalf("dial %s dialed %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
}

// TestGuard_DialFallback: over "tcp", the other address family is tried
// after fallbackDelay when the first hangs, at once when it fails; the
// connection made first wins, and the dial that hung is ended.
func TestGuard_DialFallback(t *testing.T) {
	t.Parallel()
	const v6, v4 = "[2001:4860:4860::8888]:80", "8.8.8.8:80"
	r := newFakeResolver(map[string][]string{"dual.test": {"2001:4860:4860::8888", "8.8.8.8"}})
	tests := []struct {
		name     string
		d        *pipeDialer
		min, max time.Duration
	}{
		{"FirstHangs", &pipeDialer{hang: []string{v6}}, fallbackDelay, 5 * time.Second},
		{"FirstFails", &pipeDialer{fail: []string{v6}}, 0, fallbackDelay - 50*time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dial := NewGuard(nil, WithResolver(r)).dialContext(10*time.Second, tc.d.dial)
			start := time.Now()
			c, err := dial(context.Background(), "tcp", "dual.test:80")
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if took := time.Since(start); took < tc.min || took > tc.max {
				t.Fatalf("the dial took %v, want between %v and %v", took, tc.min, tc.max)
			}
			if got, want := tc.d.addrs(), []string{v6, v4}; !slices.Equal(got, want) {
				t.Fatalf("dialed %v, want %v", got, want)
			}
		})
	}
}

// TestGuard_DialTimeout: the timeout bounds the whole dial, the lookup and
// the connection.
func TestGuard_DialTimeout(t *testing.T) {
	t.Parallel()
	r := newFakeResolver(map[string][]string{"hang.test": {"8.8.8.8"}})
	tests := []struct {
		name string
		addr string
		res  Resolver
	}{
		{"Connect", "hang.test:80", r},
		{"ConnectLiteral", "8.8.8.8:80", r},
		{"Lookup", "slow.test:80", hangingResolver{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := &pipeDialer{hang: []string{"8.8.8.8:80"}}
			dial := NewGuard(nil, WithResolver(tc.res)).dialContext(100*time.Millisecond, d.dial)
			// A backstop, so that a dial without the timeout fails the
			// test rather than hang it.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err := dial(ctx, "tcp", tc.addr)
			if got := dispatch.ErrorStatus(err); got != dispatch.StatusTimeout {
				t.Fatalf("dial err=%v (%v), want a timeout", err, got)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("the dial took %v with a timeout of 100ms", took)
			}
		})
	}
}

// hangingResolver answers when its context ends.
type hangingResolver struct{}

func (hangingResolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	<-ctx.Done()
	return nil, &net.DNSError{Err: ctx.Err().Error(), IsTimeout: true}
}

// TestGuard_Control: the last check, at the socket, refuses what Check
// refuses, whatever resolved the address.
func TestGuard_Control(t *testing.T) {
	t.Parallel()
	g := NewGuard(mustNetworks(t, "10.1.0.0/16"))
	tests := []struct {
		network, addr string
		refused       bool
	}{
		{"tcp4", "127.0.0.1:80", true},
		{"tcp6", "[64:ff9b::7f00:1]:80", true},
		{"tcp6", "[fe80::1%eth0]:80", true},
		{"tcp4", "10.1.0.1:80", false},
		{"tcp4", "8.8.8.8:443", false},
		{"tcp6", "[2001:4860:4860::8888]:443", false},
	}
	for _, tc := range tests {
		err := g.control(tc.network, tc.addr, nil)
		var be *BlockedError
		if errors.As(err, &be) != tc.refused {
			t.Errorf("control(%s, %s) = %v, want refused %v", tc.network, tc.addr, err, tc.refused)
		}
	}
}

// TestSend_ThroughProxyResolver: behind a proxy, the destination's name is
// checked with the guard's resolver, before the proxy is handed anything.
func TestSend_ThroughProxyResolver(t *testing.T) {
	t.Parallel()
	proxy := newRecordingProxy(t)
	proxyURL := proxy.url
	r := newFakeResolver(map[string][]string{
		"internal.test": {"127.0.0.1"},
		"nat64.test":    {"64:ff9b::a9fe:a9fe"},
		"public.test":   {"8.8.8.8"},
	})
	tests := []struct {
		allow   []string
		url     string
		want    dispatch.Status
		blocked string
	}{
		{nil, "http://internal.test/hook", dispatch.StatusPermanent, "loopback"},
		{nil, "http://nat64.test/hook", dispatch.StatusPermanent, "link-local"},
		{nil, "http://public.test/hook", dispatch.StatusOK, ""},
		{[]string{"127.0.0.0/8"}, "http://internal.test/hook", dispatch.StatusOK, ""},
	}
	for _, tc := range tests {
		proxy.reset()
		c := NewClient(Config{Timeout: 2 * time.Second, Guard: NewGuard(mustNetworks(t, tc.allow...), WithResolver(r)),
			Proxy: http.ProxyURL(proxyURL)})
		_, err := c.Send(context.Background(), &Request{URL: tc.url, ID: "x", Body: []byte(`{}`)})
		c.Close()
		if got := dispatch.ErrorStatus(err); got != tc.want {
			t.Errorf("Send to %s with %v allowed: err=%v (%v), want %v", tc.url, tc.allow, err, got, tc.want)
			continue
		}
		var be *BlockedError
		if tc.blocked != "" && (!errors.As(err, &be) || be.Reason != tc.blocked) {
			t.Errorf("Send to %s: err=%v, want blocked as %s", tc.url, err, tc.blocked)
		}
		got := proxy.fetched()
		if want := tc.want == dispatch.StatusOK; (len(got) == 1 && got[0] == tc.url) != want {
			t.Errorf("Send to %s with %v allowed: the proxy fetched %v", tc.url, tc.allow, got)
		}
	}
}

func TestParseNetworks(t *testing.T) {
	t.Parallel()
	got, err := ParseNetworks([]string{"10.0.0.0/8", " 127.0.0.1 ", "::1", "192.168.1.7/16"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.168.0.0/16"}
	if len(got) != len(want) {
		t.Fatalf("ParseNetworks = %v (%d prefixes), want %v", got, len(got), want)
	}
	for i, p := range got {
		if p.String() != want[i] {
			t.Fatalf("ParseNetworks = %v, want %v", got, want)
		}
	}
	if _, err := ParseNetworks([]string{"not-a-net"}); err == nil {
		t.Fatal("ParseNetworks accepted garbage")
	}
}

// FuzzGuardCheck checks what Check says of any address against what it
// says of the same address in other forms: an IPv4 address refused alike
// when IPv4-mapped, carried by NAT64's well-known prefix or a 6to4 prefix
// (which then names it), an IPv6 address alike with a zone, and anything
// let through by an allowed network that is just that address.
func FuzzGuardCheck(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "8.8.8.8", "192.0.0.9", "0.0.0.1", "64:ff9b::a9fe:a9fe",
		"2001:0:4136:e378:8000:63bf:f5ff:fffe", "fec0::1", "::127.0.0.1", "64:ff9b:1:a9fe:a9:fe00::"} {
		f.Add(netip.MustParseAddr(s).AsSlice())
	}
	g := NewGuard(nil)
	verdict := func(err error) string {
		if err == nil {
			return ""
		}
		var be *BlockedError
		if !errors.As(err, &be) || be.Reason == "" || !strings.Contains(err.Error(), "--allow-network") {
			return "not a BlockedError with a reason and the flag: " + err.Error()
		}
		return be.Reason
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		got := verdict(g.Check(a))
		if strings.HasPrefix(got, "not a") {
			t.Fatalf("Check(%s): %s", a, got)
		}
		if err := NewGuard([]netip.Prefix{netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())}).Check(a); err != nil {
			t.Fatalf("Check(%s) with that very address allowed = %v", a, err)
		}
		if a.Is6() && !a.Is4In6() {
			if z := verdict(g.Check(a.WithZone("eth0"))); z != got {
				t.Fatalf("Check(%s%%eth0) = %q, Check(%s) = %q", a, z, a, got)
			}
			return
		}
		v4 := a.Unmap()
		a16 := v4.As16()
		if m := verdict(g.Check(netip.AddrFrom16(a16))); m != got {
			t.Fatalf("Check(%s) = %q, Check of its IPv4-mapped form = %q", v4, got, m)
		}
		b4 := v4.As4()
		nat64 := netip.AddrFrom16([16]byte{0, 0x64, 0xff, 0x9b, 12: b4[0], b4[1], b4[2], b4[3]})
		sixToFour := netip.AddrFrom16([16]byte{0x20, 0x02, b4[0], b4[1], b4[2], b4[3], 15: 1})
		for _, w := range []netip.Addr{nat64, sixToFour} {
			err := g.Check(w)
			if verdict(err) != got {
				t.Fatalf("Check(%s) = %q, Check(%s) = %v", v4, got, w, err)
			}
			var be *BlockedError
			if errors.As(err, &be) && be.Embedded != v4 {
				t.Fatalf("Check(%s) = %v: names %v, want %s", w, err, be.Embedded, v4)
			}
		}
	})
}
