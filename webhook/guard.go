package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"fanout/dispatch"
)

// Guard refuses connections to addresses a delivery has no business reaching
// from inside a server: every block that IANA's special-purpose address
// registries mark not globally reachable (loopback, private, link-local,
// where cloud metadata services live, shared, documentation, benchmarking,
// reserved...), multicast, and the IPv6 addresses that carry one of those
// IPv4 addresses (NAT64, 6to4, Teredo), unless an allowed network contains
// them. See blocks for the list and the reason of each.
//
// It checks the address the dialer is about to connect to, after DNS, so
// that a name that resolves to 10.0.0.5 is caught as surely as the literal,
// and a DNS answer that changes between a check and the dial (rebinding)
// changes nothing. It is meant for every kind of destination: whatever
// connects to a user-supplied host dials through DialContext, or calls
// CheckHost when something else (a proxy) makes the connection.
type Guard struct {
	allow    []netip.Prefix
	resolver Resolver
}

// Resolver looks up the addresses of a host, as net.Resolver.LookupNetIP
// does (network is "ip", "ip4" or "ip6"); *net.Resolver is one. A guard
// resolves names with its own, so that what it checks and what it dials
// come from the same answer, and so that tests can make a name resolve to
// an internal address without touching DNS.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// GuardOption configures a Guard when it is made; a guard does not change
// afterwards, since connections are checked concurrently.
type GuardOption func(*Guard)

// WithResolver makes the guard resolve names with r, in CheckHost and in
// DialContext; nil keeps net.DefaultResolver.
func WithResolver(r Resolver) GuardOption {
	return func(g *Guard) {
		if r != nil {
			g.resolver = r
		}
	}
}

// NewGuard returns a guard that lets the allowed networks through and
// resolves names with net.DefaultResolver, unless an option says otherwise.
func NewGuard(allow []netip.Prefix, opts ...GuardOption) *Guard {
	g := &Guard{allow: allow, resolver: net.DefaultResolver}
	for _, o := range opts {
		o(g)
	}
	return g
}

// ParseNetworks parses CIDR prefixes (10.0.0.0/8, ::1/128) or addresses.
func ParseNetworks(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range specs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a network (10.0.0.0/8) nor an address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// BlockedError is the refusal of an address; it is permanent.
type BlockedError struct {
	Addr netip.Addr
	// Reason is the kind of address refused: "loopback", "private",
	// "link-local", "documentation"... (see blocks). When the refusal is
	// of an IPv4 address that Addr carries, it is that address's.
	Reason string
	// Embedded, when valid, is the IPv4 address inside the IPv6 Addr that
	// was refused, and Embedding says what it is to Addr ("NAT64
	// destination", "6to4 router", "Teredo client"...): a user who
	// typed 64:ff9b::a9fe:a9fe learns that it is the metadata service.
	Embedded  netip.Addr
	Embedding string
}

func (e *BlockedError) Error() string {
	what := article(e.Reason) + " " + e.Reason + " address"
	if e.Embedded.IsValid() {
		what = fmt.Sprintf("an address whose %s, %s, is %s", e.Embedding, e.Embedded, what)
	}
	allow := "a network"
	if e.Addr.IsValid() {
		allow = netip.PrefixFrom(e.Addr, e.Addr.BitLen()).String()
	}
	return fmt.Sprintf("refused to connect to %s, %s: fanout does not deliver to internal networks "+
		"unless they are allowed (--allow-network %s)", e.Addr, what, allow)
}

// article is the indefinite article of a reason, which starts with a
// vowel sound when it starts with a vowel letter (IETF, unspecified).
func article(reason string) string {
	if reason != "" && strings.ContainsRune("aeiouAEIOU", rune(reason[0])) {
		return "an"
	}
	return "a"
}

// Status makes a refusal permanent: retrying reaches the same address.
func (e *BlockedError) Status() dispatch.Status { return dispatch.StatusPermanent }

// A block is a range of addresses and what the guard does with it.
type block struct {
	prefix netip.Prefix
	// reason refuses the block's addresses; "" lets them through (the
	// registry marks them globally reachable, or has no value for them).
	reason string
	// embeds, when set, returns the IPv4 addresses that an address of the
	// block carries: the address is refused when one of them is, whatever
	// reason says, since a packet to it ends up at (or goes through) them.
	embeds func(a [16]byte) []embedded
}

// embedded is an IPv4 address carried by an IPv6 one, and what it is to it.
type embedded struct {
	addr netip.Addr
	role string
}

func v4(b ...byte) netip.Addr { return netip.AddrFrom4([4]byte(b)) }

// The IPv4 address in an address of each translation or tunnelling
// prefix, where that prefix's RFC puts it.
var (
	// RFC 6052 section 2.2, a /96 prefix: the last 32 bits.
	nat64 = func(a [16]byte) []embedded {
		return []embedded{{v4(a[12:16]...), "NAT64 destination"}}
	}
	// RFC 6052 section 2.2, a /48 prefix: bits 48 to 63, then, past the
	// u octet (bits 64 to 71), bits 72 to 87.
	nat64Local = func(a [16]byte) []embedded {
		return []embedded{{v4(a[6], a[7], a[9], a[10]), "local-use NAT64 destination"}}
	}
	// RFC 3056 section 2: 2002:V4ADDR::/48, bits 16 to 47.
	sixToFour = func(a [16]byte) []embedded {
		return []embedded{{v4(a[2:6]...), "6to4 router"}}
	}
	// RFC 4380 section 4: the server's IPv4 address in bits 32 to 63, the
	// client's (as its NAT maps it) in the last 32 bits, every bit
	// inverted. Reaching the client involves both: the relay sends to the
	// client's address, and its first bubble through the server.
	teredo = func(a [16]byte) []embedded {
		return []embedded{
			{v4(a[4:8]...), "Teredo server"},
			{v4(^a[12], ^a[13], ^a[14], ^a[15]), "Teredo client"},
		}
	}
	// RFC 4291 section 2.5.5.1: the last 32 bits.
	compatible = func(a [16]byte) []embedded {
		return []embedded{{v4(a[12:16]...), "embedded IPv4 address"}}
	}
)

// blocks is what the guard refuses, in the order it is checked: the first
// block that contains an address decides. It follows the IANA IPv4 and
// IPv6 Special-Purpose Address Registries: every block whose "Globally
// Reachable" is False is refused; the more specific blocks they mark True
// come first and let their addresses through. Refused too: multicast, which
// those registries leave to others, and two deprecated blocks they do not
// list, IPv4-compatible addresses (::/96) and site-local ones (fec0::/10).
// An IPv4-mapped IPv6 address (::ffff:0:0/96, False in the registry) is
// judged as the IPv4 address it spells: Check unmaps it first, and the
// dialer connects to it over IPv4.
//
// Left open, as the registries mark them globally reachable: the anycast
// addresses of PCP and TURN (192.0.0.9, 192.0.0.10, and 2001:1::1 to
// 2001:1::3 with DNS-SD's), AS112 (192.31.196.0/24, 192.175.48.0/24,
// 2001:4:112::/48, 2620:4f:8000::/48), AMT (192.52.193.0/24, 2001:3::/32),
// ORCHIDv2 and DETs (2001:20::/28, 2001:30::/28) and NAT64's well-known
// prefix (64:ff9b::/96), judged by the IPv4 address it carries. Also open:
// 192.88.99.0/24, the deprecated 6to4 relay anycast prefix (RFC 7526), for
// which the registry removed every value: it was, and may still be, routed
// on the Internet like any public prefix.
var blocks = []block{
	// IPv4.
	{pfx("0.0.0.0/32"), "unspecified", nil},       // RFC 1122 section 3.2.1.3: this host
	{pfx("0.0.0.0/8"), "reserved", nil},           // RFC 791 section 3.2: this network
	{pfx("10.0.0.0/8"), "private", nil},           // RFC 1918
	{pfx("100.64.0.0/10"), "shared (CGNAT)", nil}, // RFC 6598
	{pfx("127.0.0.0/8"), "loopback", nil},         // RFC 1122 section 3.2.1.3
	{pfx("169.254.0.0/16"), "link-local", nil},    // RFC 3927; cloud metadata services at 169.254.169.254
	{pfx("172.16.0.0/12"), "private", nil},        // RFC 1918
	{pfx("192.0.0.9/32"), "", nil},                // RFC 7723: PCP anycast, globally reachable
	{pfx("192.0.0.10/32"), "", nil},               // RFC 8155: TURN anycast, globally reachable
	// RFC 6890 section 2.1, and within it RFC 7335's 192.0.0.0/29, RFC
	// 7600's 192.0.0.8, RFC 8880's 192.0.0.170 and 192.0.0.171.
	{pfx("192.0.0.0/24"), "IETF protocol assignment", nil},
	{pfx("192.0.2.0/24"), "documentation", nil},    // RFC 5737: TEST-NET-1
	{pfx("192.168.0.0/16"), "private", nil},        // RFC 1918
	{pfx("198.18.0.0/15"), "reserved", nil},        // RFC 2544: benchmarking, under the reason users knew
	{pfx("198.51.100.0/24"), "documentation", nil}, // RFC 5737: TEST-NET-2
	{pfx("203.0.113.0/24"), "documentation", nil},  // RFC 5737: TEST-NET-3
	{pfx("224.0.0.0/24"), "link-local", nil},       // RFC 5771: multicast's local network control block
	{pfx("224.0.0.0/4"), "multicast", nil},         // RFC 5771
	{pfx("240.0.0.0/4"), "reserved", nil},          // RFC 1112 section 4, with RFC 8190's limited broadcast, 255.255.255.255

	// IPv6.
	{pfx("::/128"), "unspecified", nil}, // RFC 4291
	{pfx("::1/128"), "loopback", nil},   // RFC 4291
	// RFC 4291 section 2.5.5.1, deprecated: not in the registry, and where
	// a packet to one goes depends on the host's tunnels.
	{pfx("::/96"), "IPv4-compatible (deprecated)", compatible},
	{pfx("64:ff9b::/96"), "", nat64},                       // RFC 6052: globally reachable as its IPv4 address is
	{pfx("64:ff9b:1::/48"), "local-use NAT64", nat64Local}, // RFC 8215
	{pfx("100::/64"), "discard-only", nil},                 // RFC 6666
	{pfx("100:0:0:1::/64"), "dummy", nil},                  // RFC 9780
	{pfx("2001::/32"), "", teredo},                         // RFC 4380: Teredo, no value: judged by its IPv4 addresses
	{pfx("2001:1::1/128"), "", nil},                        // RFC 7723: PCP anycast, globally reachable
	{pfx("2001:1::2/128"), "", nil},                        // RFC 8155: TURN anycast, globally reachable
	{pfx("2001:1::3/128"), "", nil},                        // RFC 9665: DNS-SD SRP anycast, globally reachable
	{pfx("2001:2::/48"), "benchmarking", nil},              // RFC 5180
	{pfx("2001:3::/32"), "", nil},                          // RFC 7450: AMT, globally reachable
	{pfx("2001:4:112::/48"), "", nil},                      // RFC 7535: AS112-v6, globally reachable
	{pfx("2001:20::/28"), "", nil},                         // RFC 7343: ORCHIDv2, globally reachable
	{pfx("2001:30::/28"), "", nil},                         // RFC 9374: DETs, globally reachable
	{pfx("2001::/23"), "IETF protocol assignment", nil},    // RFC 2928; within it RFC 4843's deprecated ORCHID, 2001:10::/28
	{pfx("2001:db8::/32"), "documentation", nil},           // RFC 3849
	{pfx("2002::/16"), "", sixToFour},                      // RFC 3056: 6to4, no value: judged by its IPv4 address
	{pfx("3fff::/20"), "documentation", nil},               // RFC 9637
	{pfx("5f00::/16"), "segment routing (SRv6)", nil},      // RFC 9602: SRv6 SIDs
	{pfx("fc00::/7"), "private", nil},                      // RFC 4193: unique local; AWS's metadata service is at fd00:ec2::254
	{pfx("fe80::/10"), "link-local", nil},                  // RFC 4291
	{pfx("fec0::/10"), "site-local (deprecated)", nil},     // RFC 3879: not in the registry, and never globally reachable
	{pfx("ff02::/16"), "link-local", nil},                  // RFC 4291: link-local multicast
	{pfx("ff00::/8"), "multicast", nil},                    // RFC 4291
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// blockOf returns the block that decides for addr, or nil if none does.
func blockOf(addr netip.Addr) *block {
	for i := range blocks {
		if blocks[i].prefix.Contains(addr) {
			return &blocks[i]
		}
	}
	return nil
}

// allowed reports whether an allowed network contains addr.
func (g *Guard) allowed(addr netip.Addr) bool {
	for _, p := range g.allow {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Check returns a BlockedError if addr may not be reached.
//
// An allowed network that contains addr lets it through before anything
// else. An IPv6 address that carries an IPv4 address (NAT64, 6to4, Teredo,
// IPv4-compatible) is refused when that IPv4 address is, and an allowed
// network that contains the IPv4 address counts for the IPv6 one: an
// operator who allowed 10.0.0.0/8 reaches 64:ff9b::a00:5 through NAT64, as
// 10.0.0.5. That does not open a block that is refused on its own account
// (the local-use NAT64 prefix, IPv4-compatible addresses): only an allowed
// network that contains the IPv6 address does, since how an operator lays
// out IPv4 addresses inside 64:ff9b:1::/48 is theirs to choose.
func (g *Guard) Check(addr netip.Addr) error {
	// A zone changes nothing to where an address is; netip.Prefix never
	// contains a zoned address, so it would slip past every block.
	addr = addr.Unmap().WithZone("")
	if !addr.IsValid() {
		return &BlockedError{Addr: addr, Reason: "invalid"}
	}
	if g.allowed(addr) {
		return nil
	}
	b := blockOf(addr)
	if b == nil {
		return nil
	}
	if b.embeds != nil {
		for _, e := range b.embeds(addr.As16()) {
			if g.allowed(e.addr) {
				continue
			}
			if eb := blockOf(e.addr); eb != nil && eb.reason != "" {
				return &BlockedError{Addr: addr, Reason: eb.reason, Embedded: e.addr, Embedding: e.role}
			}
		}
	}
	if b.reason == "" {
		return nil
	}
	return &BlockedError{Addr: addr, Reason: b.reason}
}

// allowsAll reports whether the allowed networks cover every address, in
// which case nothing is checked: the operator handed the policy to something
// else (an egress proxy that enforces it).
func (g *Guard) allowsAll() bool {
	var v4, v6 bool
	for _, p := range g.allow {
		v4 = v4 || (p.Bits() == 0 && p.Addr().Is4())
		v6 = v6 || (p.Bits() == 0 && p.Addr().Is6())
	}
	return v4 && v6
}

// CheckHost resolves host (unless it is an address) with the guard's
// resolver and returns a BlockedError if any of its addresses may not be
// reached. It is the check of a destination that fanout does not dial
// itself, such as one whose request goes through a proxy: the dial-time
// check cannot see it then. The proxy resolves the name again, so a DNS
// answer that changes in between (rebinding) can still reach a blocked
// address; an egress proxy that enforces the same rules closes that gap.
func (g *Guard) CheckHost(ctx context.Context, host string) error {
	if addr, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return g.Check(addr)
	}
	if g.allowsAll() {
		return nil
	}
	addrs, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(addrs) == 0 {
		err = &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	if err != nil {
		return fmt.Errorf("resolve %s to check it before handing the delivery to the proxy: %w", host, err)
	}
	for _, a := range addrs {
		if err := g.Check(a); err != nil {
			return err
		}
	}
	return nil
}

// DialContext returns a dial function, as net.Dialer.DialContext with this
// timeout, that connects only to addresses the guard lets through. It
// resolves a name with the guard's resolver, checks every address, and
// dials those allowed in turn as net.Dialer does: the time is shared
// between them, and over "tcp" the other address family starts after a
// short delay if the first has not connected (RFC 8305's Happy Eyeballs).
// A name with no allowed address fails with the refusal of the first; one
// whose allowed addresses all fail to connect, with the first failure, which
// may be worth a retry where the refusal is not. The address each connection
// is about to connect to is checked once more, at the socket, so that
// nothing but a checked address is ever connected to.
//
// A refusal comes back as a *BlockedError, not wrapped, so that the
// dispatch runtime sees it as permanent.
func (g *Guard) DialContext(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{KeepAlive: 30 * time.Second, Control: g.control}
	return g.dialContext(timeout, d.DialContext)
}

// control is the last check of a connection, on the address its socket is
// about to connect to: whatever resolved or chose it, nothing else is ever
// connected to.
func (g *Guard) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("guard: unexpected address %q: %w", address, err)
	}
	return g.Check(ap.Addr())
}

// dialContext is DialContext with dialOne to dial each address.
func (g *Guard) dialContext(timeout time.Duration, dialOne dialFunc) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel() // a connection outlives the context it was dialed with
		}
		conn, err := g.dial(ctx, dialOne, network, addr)
		var be *BlockedError
		if errors.As(err, &be) {
			return nil, be // unwrapped from net.OpError, so that it stays permanent
		}
		return conn, err
	}
}

// dialFunc dials one address, as net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// dial connects to addr (host:port) with dialOne, after checking the host's
// addresses.
func (g *Guard) dial(ctx context.Context, dialOne dialFunc, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	if host == "" { // the local system, as net.Dialer reads it
		if err := g.Check(netip.IPv4Unspecified()); err != nil {
			return nil, err
		}
		return dialOne(ctx, network, addr)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if err := g.Check(a); err != nil {
			return nil, err
		}
		return dialOne(ctx, network, addr)
	}
	family := "ip"
	switch {
	case strings.HasSuffix(network, "4"):
		family = "ip4"
	case strings.HasSuffix(network, "6"):
		family = "ip6"
	}
	found, err := g.resolver.LookupNetIP(ctx, family, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var allowed []netip.Addr
	var refused error
	for _, a := range found {
		a = a.Unmap() // Go's resolver may spell an A record as IPv4-mapped
		if (family == "ip4" && !a.Is4()) || (family == "ip6" && !a.Is6()) {
			continue
		}
		if err := g.Check(a); err != nil {
			if refused == nil {
				refused = err
			}
			continue
		}
		allowed = append(allowed, a)
	}
	switch {
	case len(allowed) > 0:
		return dialParallel(ctx, dialOne, network, port, allowed)
	case refused != nil:
		return nil, refused
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no suitable address found", Name: host, IsNotFound: true}}
}

// fallbackDelay is how long a dial over "tcp" waits for the first address
// family before it tries the other one too: net.Dialer's default.
const fallbackDelay = 300 * time.Millisecond

// dialParallel dials addrs as net.Dialer does: the addresses of the first
// one's family in turn, and over "tcp" those of the other family in turn
// too, from fallbackDelay on or as soon as the first family has failed.
// The first connection made wins; a later one is closed.
func dialParallel(ctx context.Context, dialOne dialFunc, network, port string, addrs []netip.Addr) (net.Conn, error) {
	var primaries, fallbacks []string
	for _, a := range addrs {
		hp := net.JoinHostPort(a.String(), port)
		if network != "tcp" || a.Is4() == addrs[0].Is4() {
			primaries = append(primaries, hp)
		} else {
			fallbacks = append(fallbacks, hp)
		}
	}
	if len(fallbacks) == 0 {
		return dialSerial(ctx, dialOne, network, primaries)
	}

	type result struct {
		conn    net.Conn
		err     error
		primary bool
	}
	results := make(chan result) // unbuffered: a racer that loses closes its connection
	returned := make(chan struct{})
	defer close(returned)
	race := func(ctx context.Context, addrs []string, primary bool) {
		c, err := dialSerial(ctx, dialOne, network, addrs)
		select {
		case results <- result{c, err, primary}:
		case <-returned:
			if c != nil {
				_ = c.Close()
			}
		}
	}
	primaryCtx, cancelPrimary := context.WithCancel(ctx)
	defer cancelPrimary()
	go race(primaryCtx, primaries, true)
	fallbackCtx, cancelFallback := context.WithCancel(ctx)
	defer cancelFallback()
	timer := time.NewTimer(fallbackDelay)
	defer timer.Stop()
	var primaryErr error
	var primaryDone, fallbackDone bool
	for {
		select {
		case <-timer.C:
			go race(fallbackCtx, fallbacks, false)
		case r := <-results:
			if r.err == nil {
				return r.conn, nil
			}
			if r.primary {
				primaryErr, primaryDone = r.err, true
				if timer.Stop() { // the fallback has not started: start it now
					timer.Reset(0)
				}
			} else {
				fallbackDone = true
			}
			if primaryDone && fallbackDone {
				return nil, primaryErr
			}
		}
	}
}

// dialSerial dials addrs in turn until one connects, giving each a share of
// the time left as net.Dialer does, and returns the first error if none
// does.
func dialSerial(ctx context.Context, dialOne dialFunc, network string, addrs []string) (net.Conn, error) {
	var first error
	for i, addr := range addrs {
		if err := ctx.Err(); err != nil {
			if first == nil {
				first = &net.OpError{Op: "dial", Net: network, Err: err}
			}
			break
		}
		c, err := dialPartial(ctx, dialOne, network, addr, len(addrs)-i)
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// dialPartial dials addr with a share of the time left, shared with the
// addresses left after it, but no less than a sane minimum (net.Dialer's)
// when there is that much time.
func dialPartial(ctx context.Context, dialOne dialFunc, network, addr string, left int) (net.Conn, error) {
	deadline, ok := ctx.Deadline()
	if ok && left > 1 {
		const saneMinimum = 2 * time.Second
		remaining := time.Until(deadline)
		share := max(remaining/time.Duration(left), min(remaining, saneMinimum))
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, share)
		defer cancel()
	}
	return dialOne(ctx, network, addr)
}
