package netns

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// table is the one nftables table of ours in the uplink namespace.
const table = "inet tartarus"

// alwaysRefused are the destinations no sandbox reaches unless the operator
// allows them (Config.OperatorAllow): this-network, the private ranges,
// shared address space, loopback, link-local (and with it the 169.254.169.254
// metadata service), IETF protocol assignments, benchmarking, multicast and
// reserved. The transit range (other sandboxes) and the uplink namespace's
// own addresses are refused besides.
var alwaysRefused = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// Log rate per rule: a guest hammering a refused port must not turn into
// an NFLOG flood. Attempts above it are still refused, just not logged.
const logLimit = "limit rate 50/second burst 100 packets"

func chainName(slot int) string  { return fmt.Sprintf("sb%d", slot) }
func policyName(slot int) string { return fmt.Sprintf("sb%dp", slot) }
func domSetName(slot int) string { return fmt.Sprintf("sb%dd", slot) }

// hostVeth is the uplink end of a sandbox's veth pair.
func hostVeth(slot int) string { return fmt.Sprintf("ttv%d", slot) }

// baseScript creates (or refreshes) our table in the uplink namespace. It
// keeps every sandbox chain, so it is safe to run when the agent restarts
// with sandboxes alive.
func baseScript(transit netip.Prefix, operator []netip.Prefix) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	w("add table %s", table)
	w("add set %s refused { type ipv4_addr; flags interval; auto-merge; }", table)
	w("flush set %s refused", table)
	refused := append(append([]netip.Prefix{}, alwaysRefused...), transit)
	w("add element %s refused { %s }", table, joinPrefixes(refused))
	w("add set %s operator { type ipv4_addr; flags interval; auto-merge; }", table)
	w("flush set %s operator", table)
	if len(operator) > 0 {
		w("add element %s operator { %s }", table, joinPrefixes(operator))
	}
	w("add map %s sandboxes { type ifname : verdict; }", table)
	// Refuse with a TCP reset where possible: ICMP errors are rate limited
	// per peer, so a guest would otherwise wait out a connect timeout.
	w("add chain %s refuse", table)
	w("flush chain %s refuse", table)
	w("add rule %s refuse meta l4proto tcp reject with tcp reset", table)
	w("add rule %s refuse reject with icmpx type admin-prohibited", table)
	w("add chain %s forward { type filter hook forward priority filter; policy accept; }", table)
	w("flush chain %s forward", table)
	w(`add rule %s forward iifname "ttv*" meta nfproto ipv6 drop`, table)
	w(`add rule %s forward iifname "ttv*" iifname vmap @sandboxes`, table)
	w(`add rule %s forward iifname "ttv*" drop`, table)
	// Nothing outside opens connections into a sandbox (exposed ports come
	// through the agent, not through the uplink).
	w(`add rule %s forward oifname "ttv*" ct state established,related accept`, table)
	w(`add rule %s forward oifname "ttv*" drop`, table)
	// The uplink (the host, by default) is not reachable from sandboxes at
	// any of its addresses: API server, Redis, Postgres, the agent's API.
	w("add chain %s input { type filter hook input priority filter; policy accept; }", table)
	w("flush chain %s input", table)
	w(`add rule %s input iifname "ttv*" goto refuse`, table)
	w("add chain %s postrouting { type nat hook postrouting priority srcnat; policy accept; }", table)
	w("flush chain %s postrouting", table)
	w(`add rule %s postrouting ip saddr %s oifname != "ttv*" masquerade`, table, transit)
	return b.String()
}

// sandboxScript adds a sandbox's chains, its domain set and its entry in the
// dispatch map, then its policy.
func sandboxScript(slot int, sbAddr netip.Addr, group uint16, p Policy, admitted map[netip.Addr]time.Time, now time.Time) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	c, pc, ds := chainName(slot), policyName(slot), domSetName(slot)
	w("add set %s %s { type ipv4_addr; flags timeout; }", table, ds)
	w("add chain %s %s", table, pc)
	w("add chain %s %s", table, c)
	w("flush chain %s %s", table, c)
	// The sandbox namespace masquerades the guest to sbAddr; anything else
	// arriving on this veth is spoofed.
	w("add rule %s %s ip saddr != %s drop", table, c, sbAddr)
	w("add rule %s %s ct state established,related accept", table, c)
	w("add rule %s %s ip daddr @operator goto %s", table, c, pc)
	w(`add rule %s %s ip daddr @refused ct state new %s log prefix "%s" group %d`, table, c, logLimit, logPrefix(slot, "refused"), group)
	w("add rule %s %s ip daddr @refused counter goto refuse", table, c)
	w("add rule %s %s goto %s", table, c, pc)
	w(`add element %s sandboxes { "%s" : jump %s }`, table, hostVeth(slot), c)
	b.WriteString(policyScript(slot, group, p, admitted, now))
	return b.String()
}

// policyScript replaces a sandbox's policy chain and domain set in one
// transaction (nft -f applies a file atomically), so an update never
// leaves a moment with no policy.
func policyScript(slot int, group uint16, p Policy, admitted map[netip.Addr]time.Time, now time.Time) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	pc, ds := policyName(slot), domSetName(slot)
	logRule := func(match, tag string) {
		w(`add rule %s %s %s ct state new %s log prefix "%s" group %d`, table, pc, match, logLimit, logPrefix(slot, tag), group)
	}
	w("flush chain %s %s", table, pc)
	w("flush set %s %s", table, ds)
	logAllowed := p.Mode == ModeMonitored || p.Mode == ModeRestricted
	switch p.Mode {
	case ModeNone:
		logRule("", "default")
		w("add rule %s %s counter goto refuse", table, pc)
		return b.String()
	case ModeRestricted:
		// DNS goes only to the sandbox's resolver, which is inside its
		// namespace and so never forwarded here.
		dns := "meta l4proto { tcp, udp } th dport { 53, 853 }"
		logRule(dns, "dns")
		w("add rule %s %s %s counter goto refuse", table, pc, dns)
	}
	for i, r := range p.Deny {
		if r.Domain != "" {
			continue // the resolver refuses these names
		}
		m := ruleMatch(r)
		logRule(m, fmt.Sprintf("deny%d", i))
		w("add rule %s %s %s counter goto refuse", table, pc, m)
	}
	for i, r := range p.Allow {
		if r.Domain != "" {
			continue // admitted through the domain set
		}
		m := ruleMatch(r)
		if logAllowed {
			logRule(m, fmt.Sprintf("allow%d", i))
		}
		w("add rule %s %s %s counter accept", table, pc, m)
	}
	if p.Mode == ModeRestricted {
		m := "ip daddr @" + ds
		logRule(m, "domain")
		w("add rule %s %s %s counter accept", table, pc, m)
		logRule("", "default")
		w("add rule %s %s counter goto refuse", table, pc)
	} else {
		if logAllowed {
			logRule("", "default")
		}
		w("add rule %s %s counter accept", table, pc)
	}
	for a, exp := range admitted {
		if left := exp.Sub(now); left >= time.Second {
			w("add element %s %s { %s timeout %ds }", table, ds, a, int(left.Seconds()))
		}
	}
	return b.String()
}

// admitScript puts addresses into a sandbox's domain set for ttl; an
// address already there gets its timeout reset (delete and add in one
// transaction: add alone keeps the old timeout).
func admitScript(slot int, addrs []netip.Addr, ttl time.Duration) string {
	var b strings.Builder
	ds := domSetName(slot)
	for _, a := range addrs {
		fmt.Fprintf(&b, "add element %s %s { %s }\n", table, ds, a)
		fmt.Fprintf(&b, "delete element %s %s { %s }\n", table, ds, a)
		fmt.Fprintf(&b, "add element %s %s { %s timeout %ds }\n", table, ds, a, int(ttl.Seconds()))
	}
	return b.String()
}

// removeScript deletes everything a sandbox owns in our table.
func removeScript(slot int) string {
	c, pc, ds := chainName(slot), policyName(slot), domSetName(slot)
	return fmt.Sprintf(`delete element %[1]s sandboxes { "%[2]s" }
flush chain %[1]s %[3]s
delete chain %[1]s %[3]s
flush chain %[1]s %[4]s
delete chain %[1]s %[4]s
delete set %[1]s %[5]s
`, table, hostVeth(slot), c, pc, ds)
}

// ruleMatch renders a CIDR rule's match expression ("" matches all).
func ruleMatch(r Rule) string {
	var parts []string
	if r.CIDR.Bits() > 0 {
		parts = append(parts, "ip daddr "+r.CIDR.String())
	}
	var ports []string
	for _, p := range r.Ports {
		ports = append(ports, p.String())
	}
	switch {
	case len(ports) > 0 && r.Proto == "":
		parts = append(parts, "meta l4proto { tcp, udp } th dport { "+strings.Join(ports, ", ")+" }")
	case len(ports) > 0:
		parts = append(parts, r.Proto+" dport { "+strings.Join(ports, ", ")+" }")
	case r.Proto != "":
		parts = append(parts, "meta l4proto "+r.Proto)
	}
	return strings.Join(parts, " ")
}

// sandboxNSScript is the small table inside a sandbox's own namespace: the
// guest may reach its resolver and be forwarded out (masqueraded to the
// sandbox's veth address); nothing else enters.
//
// IPv6 has no path through the namespace: it is disabled on every
// interface (sysctl, in build) and, should that ever be undone, an ip6
// table drops everything; the uplink's forward chain drops IPv6 from any
// sandbox veth as a third wall. The policy (ip family only) never has to
// reason about IPv6.
func sandboxNSScript(sbAddr netip.Addr) string {
	return fmt.Sprintf(`add table ip tartarus
add chain ip tartarus input { type filter hook input priority filter; policy drop; }
add rule ip tartarus input iif lo accept
add rule ip tartarus input ct state established,related accept
add rule ip tartarus input iifname "%[1]s" ip daddr %[2]s meta l4proto { tcp, udp } th dport 53 accept
add rule ip tartarus input iifname "%[1]s" ip daddr %[2]s icmp type echo-request accept
add chain ip tartarus forward { type filter hook forward priority filter; policy drop; }
add rule ip tartarus forward iifname "%[1]s" oifname "%[3]s" ip saddr %[4]s accept
add rule ip tartarus forward iifname "%[3]s" oifname "%[1]s" ct state established,related accept
add chain ip tartarus postrouting { type nat hook postrouting priority srcnat; policy accept; }
add rule ip tartarus postrouting oifname "%[3]s" ip saddr %[4]s snat to %[5]s
add table ip6 tartarus
add chain ip6 tartarus input { type filter hook input priority filter; policy drop; }
add chain ip6 tartarus forward { type filter hook forward priority filter; policy drop; }
add chain ip6 tartarus output { type filter hook output priority filter; policy drop; }
`, TapName, GatewayAddr, sandboxVeth, GuestAddr, sbAddr)
}

// nft applies a script inside the namespace at path (atomically: nft -f is
// one transaction).
func nft(ctx context.Context, path, script string) error {
	return Do(path, func() error {
		_, err := run(ctx, script, "nft", "-f", "-")
		return err
	})
}

// logPrefix tags an NFLOG record with the sandbox slot and the rule.
func logPrefix(slot int, tag string) string { return fmt.Sprintf("tt%d %s", slot, tag) }

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
