package tartarus

import (
	"fmt"
	"time"
)

// NetworkSpec is a sandbox's network as the API carries it: its egress
// policy, bandwidth limits and how its ports are exposed. A sandbox without
// one has no network at all (only loopback). pkg/netns holds the rule
// syntax and checks it fully on the node; here only the shape is checked.
type NetworkSpec struct {
	// Mode is none, open, restricted or monitored (docs/network.md).
	Mode string `json:"mode"`
	// Allow and Deny are rules such as "203.0.113.0/24",
	// "tcp:*:443" or "*.example.com".
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
	// EgressBitsPerSec and IngressBitsPerSec limit upload and download
	// (0: unlimited).
	EgressBitsPerSec  uint64 `json:"egress_bits_per_sec,omitempty"`
	IngressBitsPerSec uint64 `json:"ingress_bits_per_sec,omitempty"`
	// PublicPorts lets anyone reach the sandbox's exposed ports without
	// credentials (the creator's choice).
	PublicPorts bool `json:"public_ports,omitempty"`
}

// The network modes.
const (
	NetworkNone       = "none"
	NetworkOpen       = "open"
	NetworkRestricted = "restricted"
	NetworkMonitored  = "monitored"
)

// MaxNetworkRules bounds allow plus deny rules (pkg/netns enforces the same).
const MaxNetworkRules = 2048

// Check reports the first problem of the spec's shape; errors wrap
// ErrInvalid.
func (n *NetworkSpec) Check() error {
	switch n.Mode {
	case NetworkNone, NetworkOpen, NetworkRestricted, NetworkMonitored:
	default:
		return Errorf(ErrInvalid, "network mode %q: want none, open, restricted or monitored", n.Mode)
	}
	if len(n.Allow)+len(n.Deny) > MaxNetworkRules {
		return Errorf(ErrInvalid, "network: at most %d rules", MaxNetworkRules)
	}
	for _, r := range append(append([]string(nil), n.Allow...), n.Deny...) {
		if r == "" || len(r) > 300 {
			return Errorf(ErrInvalid, "network rule %q: want 1-300 characters", r)
		}
	}
	for _, b := range []uint64{n.EgressBitsPerSec, n.IngressBitsPerSec} {
		if b != 0 && b < 64_000 {
			return Errorf(ErrInvalid, "network bandwidth %d bit/s: want 0 (unlimited) or at least 64000", b)
		}
	}
	return nil
}

// String is a short description for logs.
func (n *NetworkSpec) String() string {
	if n == nil {
		return "no network"
	}
	return fmt.Sprintf("%s (%d allow, %d deny)", n.Mode, len(n.Allow), len(n.Deny))
}

// ConnectionRecord is one connection attempt of a sandbox, as its
// connection log keeps it (pkg/netns fills it; docs/network.md).
type ConnectionRecord struct {
	Time    time.Time `json:"time"`
	Dst     string    `json:"dst"`
	Port    uint16    `json:"port,omitempty"`
	Proto   string    `json:"proto"`
	Allowed bool      `json:"allowed"`
	// Rule is what decided: allow<i>, deny<i>, domain, dns, refused,
	// default, or dns-query:<rule> for lookups (with Name).
	Rule     string `json:"rule"`
	Name     string `json:"name,omitempty"`
	SrcPort  uint16 `json:"src_port,omitempty"`
	BytesOut uint64 `json:"bytes_out,omitempty"`
	BytesIn  uint64 `json:"bytes_in,omitempty"`
}

// NetworkLog is a sandbox's connection log: the newest records, oldest
// first, and how many were ever written (the log keeps a bounded number).
type NetworkLog struct {
	Records []ConnectionRecord `json:"records"`
	Total   uint64             `json:"total"`
}
