package thanatos

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Resolver looks up a host's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// addressGuard decides which addresses callbacks and webhooks may reach:
// none that is loopback, link-local, private, shared (CGNAT), multicast,
// unspecified or one of the host's own, unless the operator allowlisted it
// (by host name, address or CIDR prefix). It resolves names itself and
// dials the address it checked, so a second DNS answer cannot move the
// request somewhere else (DNS rebinding).
type addressGuard struct {
	names    map[string]bool
	prefixes []netip.Prefix
	resolver Resolver
	own      func() ([]netip.Addr, error)
	dialer   net.Dialer
}

// newAddressGuard parses allow: each entry is a host name, an IP address
// or a CIDR prefix.
func newAddressGuard(allow []string, r Resolver) (*addressGuard, error) {
	g := &addressGuard{names: map[string]bool{}, resolver: r, own: ownAddrs, dialer: net.Dialer{Timeout: 10 * time.Second}}
	if g.resolver == nil {
		g.resolver = net.DefaultResolver
	}
	for _, a := range allow {
		a = strings.TrimSpace(a)
		switch {
		case a == "":
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "allow hosts: empty entry")
		case strings.Contains(a, "/"):
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, tartarus.Errorf(tartarus.ErrInvalid, "allow hosts: %v", err)
			}
			g.prefixes = append(g.prefixes, p.Masked())
		default:
			if ip, err := netip.ParseAddr(a); err == nil {
				g.prefixes = append(g.prefixes, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
				continue
			}
			g.names[strings.ToLower(strings.TrimSuffix(a, "."))] = true
		}
	}
	return g, nil
}

func ownAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

// sharedSpace is RFC 6598's carrier-grade NAT range, private in all but name.
var sharedSpace = netip.MustParsePrefix("100.64.0.0/10")

// allowed reports why ip may not be reached, or nil. An allowlisted host
// name allows every address it resolves to.
func (g *addressGuard) allowed(host string, ip netip.Addr) error {
	ip = ip.Unmap()
	if g.names[strings.ToLower(strings.TrimSuffix(host, "."))] {
		return nil
	}
	for _, p := range g.prefixes {
		if p.Contains(ip) {
			return nil
		}
	}
	switch {
	case ip.IsLoopback():
		return fmt.Errorf("%s is a loopback address", ip)
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return fmt.Errorf("%s is a link-local address", ip)
	case ip.IsPrivate(), sharedSpace.Contains(ip):
		return fmt.Errorf("%s is a private address", ip)
	case ip.IsUnspecified(), ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return fmt.Errorf("%s is not a unicast address", ip)
	}
	own, err := g.own()
	if err != nil {
		return fmt.Errorf("list the host's addresses: %w", err)
	}
	for _, o := range own {
		if o == ip {
			return fmt.Errorf("%s is one of this host's addresses", ip)
		}
	}
	return nil
}

// resolve returns host's addresses, every one of which must be allowed.
func (g *addressGuard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, tartarus.Errorf(tartarus.ErrUnavailable, "resolve %s: %v", host, err)
		}
		if len(ips) == 0 {
			return nil, tartarus.Errorf(tartarus.ErrUnavailable, "resolve %s: no addresses", host)
		}
	}
	for _, ip := range ips {
		if err := g.allowed(host, ip); err != nil {
			return nil, tartarus.Errorf(tartarus.ErrPermissionDenied, "host %s: %v (allowlist it with AllowHosts)", host, err)
		}
	}
	return ips, nil
}

// DialContext is an http.Transport's dialer that checks every address of
// the host and dials the checked ones.
func (g *addressGuard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := g.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var last error
	for _, ip := range ips {
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}
