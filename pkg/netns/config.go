package netns

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Config is how a node's sandboxes reach the network.
type Config struct {
	// UplinkNetns names an existing network namespace (as `ip netns`
	// knows it) that holds the uplink ends of the sandboxes' veth pairs,
	// with its own route out. Empty means the host's own namespace and
	// default route. Tests point it at a stand-in internet.
	UplinkNetns string
	// Transit is the range sandbox veth pairs are numbered from, a /30
	// each (default 10.229.0.0/16: 16384 sandboxes).
	Transit netip.Prefix
	// DNSUpstream is where the sandbox resolvers forward allowed queries,
	// as host:port, reached from the uplink namespace. Default: the first
	// nameserver in /etc/resolv.conf.
	DNSUpstream string
	// OperatorAllow lifts the always-refused ranges for these prefixes
	// (a sandbox's own policy still applies to them).
	OperatorAllow []netip.Prefix
	// LogGroup is the NFLOG group of the connection log (default 7411);
	// one Manager per uplink namespace may use it.
	LogGroup uint16
	// LogSize is how many records each sandbox's connection log keeps
	// (default 1024).
	LogSize int
	// NetnsPrefix starts the name of every sandbox namespace of this
	// Manager (default "tt-"); Reconcile touches only namespaces with it.
	NetnsPrefix string
	// TapUser owns the TAP devices, so an unprivileged VMM can open them.
	TapUser string
	// Clock stamps log records and DNS admissions (default the system clock).
	Clock clock.Clock
	// Logger receives what the package has to say (default discarded).
	Logger *slog.Logger
	// Metrics, when set, receives the package's Prometheus counters.
	Metrics prometheus.Registerer
}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Transit.IsValid() {
		if !c.Transit.Addr().Is4() || c.Transit.Bits() < 8 || c.Transit.Bits() > 28 {
			errs = append(errs, fmt.Errorf("transit %s: want an IPv4 prefix between /8 and /28", c.Transit))
		}
		if c.Transit.Overlaps(GuestPrefix) {
			errs = append(errs, fmt.Errorf("transit %s overlaps the guest range %s", c.Transit, GuestPrefix))
		}
	}
	for _, p := range c.OperatorAllow {
		if !p.IsValid() || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("operator allow %s: want an IPv4 prefix", p))
		}
	}
	if c.UplinkNetns != "" && !validID.MatchString(c.UplinkNetns) {
		errs = append(errs, fmt.Errorf("uplink netns %q: bad name", c.UplinkNetns))
	}
	if c.NetnsPrefix != "" && (!validID.MatchString(c.NetnsPrefix) || len(c.NetnsPrefix) > 16) {
		errs = append(errs, fmt.Errorf("netns prefix %q: want up to 16 of A-Z a-z 0-9 _ . -", c.NetnsPrefix))
	}
	if c.LogSize < 0 || c.LogSize > 1<<20 {
		errs = append(errs, fmt.Errorf("log size %d: want 0 (default) to %d", c.LogSize, 1<<20))
	}
	return errors.Join(errs...)
}

// Spec is what a sandbox asks of its network.
type Spec struct {
	Policy Policy `json:"policy"`
	// EgressBitsPerSec and IngressBitsPerSec limit the sandbox's upload
	// and download (0 = unlimited).
	EgressBitsPerSec  uint64 `json:"egress_bits_per_sec,omitempty"`
	IngressBitsPerSec uint64 `json:"ingress_bits_per_sec,omitempty"`
	// TapOwner, when set, owns this sandbox's TAP device in place of
	// Config.TapUser: a jailed VMM runs under a uid of its own.
	TapOwner string `json:"-"`
	// GuestNetns gives the guest a network namespace of its own in place
	// of the TAP device: a veth pair joins it to the sandbox namespace,
	// and its eth0 has GuestAddr and a default route via GatewayAddr, as
	// a microVM guest's NIC. Container runtimes put their sandboxes in it
	// (Sandbox.GuestNetns); policy, log and limits apply unchanged.
	GuestNetns bool `json:"-"`
}

// Validate reports every problem of the spec.
func (s Spec) Validate() error {
	var errs []error
	if err := s.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range []uint64{s.EgressBitsPerSec, s.IngressBitsPerSec} {
		if r != 0 && r < 64_000 {
			errs = append(errs, fmt.Errorf("bandwidth %d bit/s: want 0 (unlimited) or at least 64000", r))
		}
	}
	return errors.Join(errs...)
}

// SpecOf turns the API's network spec into a Spec, checking every rule.
// Errors wrap tartarus.ErrInvalid.
func SpecOf(n *tartarus.NetworkSpec) (Spec, error) {
	if n == nil {
		return Spec{}, tartarus.Errorf(tartarus.ErrInvalid, "no network spec")
	}
	s := Spec{Policy: Policy{Mode: Mode(n.Mode)}, EgressBitsPerSec: n.EgressBitsPerSec, IngressBitsPerSec: n.IngressBitsPerSec}
	var errs []error
	for _, list := range []struct {
		in  []string
		out *[]Rule
	}{{n.Allow, &s.Policy.Allow}, {n.Deny, &s.Policy.Deny}} {
		for _, r := range list.in {
			rule, err := ParseRule(r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			*list.out = append(*list.out, rule)
		}
	}
	errs = append(errs, s.Validate())
	if err := errors.Join(errs...); err != nil {
		return Spec{}, tartarus.Errorf(tartarus.ErrInvalid, "network: %v", err)
	}
	return s, nil
}
