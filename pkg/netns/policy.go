package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Mode is how a sandbox may reach out.
type Mode string

// The egress modes.
const (
	// ModeNone refuses every outbound connection (the sandbox still has a
	// namespace, so a later update can open it).
	ModeNone Mode = "none"
	// ModeOpen allows everything not always refused and not denied; only
	// denied attempts are logged.
	ModeOpen Mode = "open"
	// ModeRestricted allows only what an allow rule names; DNS goes only to
	// the sandbox's resolver.
	ModeRestricted Mode = "restricted"
	// ModeMonitored is open with every connection attempt logged.
	ModeMonitored Mode = "monitored"
)

// Limits on a policy, so a hostile or careless request cannot make the
// host build an unbounded ruleset.
const (
	MaxRules     = 2048
	maxDomainLen = 253
)

// Policy is a sandbox's egress policy. Deny rules are checked before allow
// rules; what neither names gets the mode's default (allow in open and
// monitored, refuse in restricted and none).
type Policy struct {
	Mode  Mode   `json:"mode"`
	Allow []Rule `json:"allow,omitempty"`
	Deny  []Rule `json:"deny,omitempty"`
}

// Rule matches destinations by address (CIDR or single IP) or by domain
// name, optionally narrowed to a protocol and ports. A domain rule matches
// the name itself; "*.example.com" matches every name under example.com
// (not example.com itself). Domain rules carry no ports. In JSON a rule is
// a string in ParseRule's syntax.
type Rule struct {
	CIDR   netip.Prefix
	Domain string
	Proto  string // "", "tcp" or "udp"
	Ports  []PortRange
}

// MarshalText writes the rule in ParseRule's syntax.
func (r Rule) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a rule in ParseRule's syntax.
func (r *Rule) UnmarshalText(b []byte) error {
	parsed, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = parsed
	return nil
}

// PortRange is an inclusive range of ports; From == To for one port.
type PortRange struct {
	From uint16 `json:"from"`
	To   uint16 `json:"to"`
}

// ParseRule reads the rule syntax of the CLI and API shorthand:
//
//	203.0.113.0/24            a CIDR
//	203.0.113.7               one address
//	203.0.113.7:443           one address, one port (TCP and UDP)
//	tcp:203.0.113.0/24:80-90  protocol, CIDR, port range
//	tcp:*:443                 any address, TCP port 443
//	example.com, *.example.com  a domain
func ParseRule(s string) (Rule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Rule{}, errors.New("empty rule")
	}
	var r Rule
	// A bare address or prefix first: IPv6 ones contain colons.
	if p, err := netip.ParsePrefix(s); err == nil {
		r.CIDR = p
		return r.checked()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		r.CIDR = netip.PrefixFrom(a, a.BitLen())
		return r.checked()
	}
	rest := s
	if p, after, ok := strings.Cut(s, ":"); ok && (p == "tcp" || p == "udp") {
		r.Proto, rest = p, after
	}
	addr, ports, hasPorts := strings.Cut(rest, ":")
	switch {
	case addr == "*" || addr == "0.0.0.0/0":
		r.CIDR = netip.MustParsePrefix("0.0.0.0/0")
	case strings.Contains(addr, "/"):
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", s, err)
		}
		r.CIDR = p
	default:
		if a, err := netip.ParseAddr(addr); err == nil {
			r.CIDR = netip.PrefixFrom(a, a.BitLen())
		} else {
			if r.Proto != "" || hasPorts {
				return Rule{}, fmt.Errorf("rule %q: a domain rule takes no protocol or ports", s)
			}
			r.Domain = strings.ToLower(strings.TrimSuffix(addr, "."))
		}
	}
	if hasPorts {
		for _, part := range strings.Split(ports, ",") {
			pr, err := parsePortRange(part)
			if err != nil {
				return Rule{}, fmt.Errorf("rule %q: %w", s, err)
			}
			r.Ports = append(r.Ports, pr)
		}
	}
	return r.checked()
}

// checked returns r if it is valid.
func (r Rule) checked() (Rule, error) {
	if err := r.Validate(); err != nil {
		return Rule{}, err
	}
	return r, nil
}

func parsePortRange(s string) (PortRange, error) {
	from, to, isRange := strings.Cut(s, "-")
	f, err := strconv.ParseUint(from, 10, 16)
	if err != nil || f == 0 {
		return PortRange{}, fmt.Errorf("bad port %q", from)
	}
	t := f
	if isRange {
		if t, err = strconv.ParseUint(to, 10, 16); err != nil || t == 0 {
			return PortRange{}, fmt.Errorf("bad port %q", to)
		}
	}
	return PortRange{From: uint16(f), To: uint16(t)}, nil
}

// String is the rule in ParseRule's syntax.
func (r Rule) String() string {
	if r.Domain != "" {
		return r.Domain
	}
	var b strings.Builder
	if r.Proto != "" {
		b.WriteString(r.Proto + ":")
	}
	if r.CIDR.Bits() == 0 {
		b.WriteString("*")
	} else if r.CIDR.IsSingleIP() {
		b.WriteString(r.CIDR.Addr().String())
	} else {
		b.WriteString(r.CIDR.String())
	}
	for i, p := range r.Ports {
		if i == 0 {
			b.WriteString(":")
		} else {
			b.WriteString(",")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// String is "80" or "80-90".
func (p PortRange) String() string {
	if p.From == p.To {
		return strconv.Itoa(int(p.From))
	}
	return fmt.Sprintf("%d-%d", p.From, p.To)
}

// Validate reports every problem of the rule.
func (r Rule) Validate() error {
	var errs []error
	switch {
	case r.Domain != "" && r.CIDR.IsValid():
		errs = append(errs, errors.New("a rule has a domain or a CIDR, not both"))
	case r.Domain == "" && !r.CIDR.IsValid():
		errs = append(errs, errors.New("a rule needs a domain or a CIDR"))
	case r.CIDR.IsValid() && !r.CIDR.Addr().Is4():
		errs = append(errs, fmt.Errorf("cidr %s: only IPv4 is routed to sandboxes", r.CIDR))
	case r.CIDR.IsValid() && r.CIDR != r.CIDR.Masked():
		errs = append(errs, fmt.Errorf("cidr %s has host bits set (want %s)", r.CIDR, r.CIDR.Masked()))
	}
	if r.Domain != "" {
		if err := checkDomain(r.Domain); err != nil {
			errs = append(errs, err)
		}
		if r.Proto != "" || len(r.Ports) > 0 {
			errs = append(errs, fmt.Errorf("domain %s: a domain rule takes no protocol or ports", r.Domain))
		}
	}
	if r.Proto != "" && r.Proto != "tcp" && r.Proto != "udp" {
		errs = append(errs, fmt.Errorf("proto %q: want tcp, udp or empty", r.Proto))
	}
	if len(r.Ports) > 64 {
		errs = append(errs, fmt.Errorf("%d port ranges in one rule (at most 64)", len(r.Ports)))
	}
	for _, p := range r.Ports {
		if p.From == 0 || p.To < p.From {
			errs = append(errs, fmt.Errorf("port range %d-%d is empty or starts at 0", p.From, p.To))
		}
	}
	return errors.Join(errs...)
}

// checkDomain accepts lower-case LDH names, optionally starting with "*.".
func checkDomain(d string) error {
	name := strings.TrimPrefix(d, "*.")
	if len(d) > maxDomainLen || name == "" {
		return fmt.Errorf("domain %q: empty or longer than %d", d, maxDomainLen)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("domain %q: empty label or label longer than 63", d)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("domain %q: character %q (want a-z 0-9 - _ and a leading *.)", d, c)
			}
		}
	}
	return nil
}

// Validate reports every problem of the policy.
func (p Policy) Validate() error {
	var errs []error
	switch p.Mode {
	case ModeNone, ModeOpen, ModeRestricted, ModeMonitored:
	default:
		errs = append(errs, fmt.Errorf("mode %q: want none, open, restricted or monitored", p.Mode))
	}
	if n := len(p.Allow) + len(p.Deny); n > MaxRules {
		errs = append(errs, fmt.Errorf("%d rules (at most %d)", n, MaxRules))
	}
	for i, r := range p.Allow {
		if err := r.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("allow[%d]: %w", i, err))
		}
	}
	for i, r := range p.Deny {
		if err := r.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("deny[%d]: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// domainMatches reports whether name (lower case, no trailing dot) is
// matched by pattern ("example.com" or "*.example.com").
func domainMatches(pattern, name string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(name, "."+suffix)
	}
	return name == pattern
}

// domainVerdict says whether the sandbox's resolver answers name: denied
// names never, and in restricted mode only names an allow rule matches.
func (p Policy) domainVerdict(name string) (allowed bool, rule string) {
	if p.Mode == ModeNone {
		return false, "mode-none"
	}
	for i, r := range p.Deny {
		if r.Domain != "" && domainMatches(r.Domain, name) {
			return false, fmt.Sprintf("deny[%d]", i)
		}
	}
	if p.Mode != ModeRestricted {
		return true, "default"
	}
	for i, r := range p.Allow {
		if r.Domain != "" && domainMatches(r.Domain, name) {
			return true, fmt.Sprintf("allow[%d]", i)
		}
	}
	return false, "default"
}
