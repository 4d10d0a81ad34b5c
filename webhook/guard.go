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

// Guard refuses connections to addresses a webhook has no business reaching
// from inside a server: loopback, private, link-local (cloud metadata lives
// at 169.254.169.254 and fd00:ec2::254), shared (CGNAT), multicast and
// unspecified addresses, unless an allowed network contains them. It checks
// the address the dialer is about to connect to, after DNS, so that a name
// that resolves to 10.0.0.5 is caught as surely as the literal, and a DNS
// answer that changes between a check and the dial (rebinding) changes
// nothing.
type Guard struct {
	allow []netip.Prefix
}

// NewGuard returns a guard that lets the allowed networks through.
func NewGuard(allow []netip.Prefix) *Guard { return &Guard{allow: allow} }

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
	Addr   netip.Addr
	Reason string
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("refused to connect to %s, a %s address: fanout does not deliver to internal networks "+
		"unless they are allowed (--allow-network %s)", e.Addr, e.Reason, netip.PrefixFrom(e.Addr, e.Addr.BitLen()))
}

// Status makes a refusal permanent: retrying reaches the same address.
func (e *BlockedError) Status() dispatch.Status { return dispatch.StatusPermanent }

var (
	cgnat    = netip.MustParsePrefix("100.64.0.0/10")
	metadata = netip.MustParseAddr("fd00:ec2::254")
	benchNet = netip.MustParsePrefix("198.18.0.0/15")
	reserved = netip.MustParsePrefix("240.0.0.0/4")
)

// Check returns a BlockedError if addr may not be reached.
func (g *Guard) Check(addr netip.Addr) error {
	addr = addr.Unmap()
	for _, p := range g.allow {
		if p.Contains(addr) {
			return nil
		}
	}
	reason := ""
	switch {
	case addr.IsLoopback():
		reason = "loopback"
	case addr.IsPrivate() || addr == metadata:
		reason = "private"
	case addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast():
		reason = "link-local"
	case addr.IsUnspecified():
		reason = "unspecified"
	case addr.IsMulticast() || addr.IsInterfaceLocalMulticast():
		reason = "multicast"
	case cgnat.Contains(addr):
		reason = "shared (CGNAT)"
	case benchNet.Contains(addr) || reserved.Contains(addr) || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		reason = "reserved"
	default:
		return nil
	}
	return &BlockedError{Addr: addr, Reason: reason}
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

// CheckHost resolves host (unless it is an address) and returns a
// BlockedError if any of its addresses may not be reached. It is the check
// of a destination whose request goes through a proxy: fanout then never
// dials the destination itself, so the dial-time check cannot see it. The
// proxy resolves the name again, so a DNS answer that changes in between
// (rebinding) can still reach a blocked address; an egress proxy that
// enforces the same rules closes that gap.
func (g *Guard) CheckHost(ctx context.Context, host string) error {
	if addr, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return g.Check(addr)
	}
	if g.allowsAll() {
		return nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
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

// DialContext dials like a net.Dialer with this timeout, refusing blocked
// addresses at connect time.
func (g *Guard) DialContext(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:   timeout,
		KeepAlive: 30 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("guard: unexpected address %q: %w", address, err)
			}
			return g.Check(ap.Addr())
		},
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		var be *BlockedError
		if errors.As(err, &be) {
			return nil, be // unwrapped from net.OpError, so that it stays permanent
		}
		return conn, err
	}
}
