package hecatoncheir

import (
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestClassBandwidth(t *testing.T) {
	for _, c := range []struct {
		name            string
		in              *tartarus.NetworkSpec
		mbps            int
		egress, ingress uint64
	}{
		{"no network", nil, 10, 0, 0},
		{"no class limit", &tartarus.NetworkSpec{Mode: "open"}, 0, 0, 0},
		{"unlimited network takes the class's", &tartarus.NetworkSpec{Mode: "open"}, 10, 10_000_000, 10_000_000},
		{"a lower asked limit is kept", &tartarus.NetworkSpec{Mode: "open", EgressBitsPerSec: 2_000_000}, 10, 2_000_000, 10_000_000},
		{"a higher asked limit is lowered", &tartarus.NetworkSpec{Mode: "open", IngressBitsPerSec: 50_000_000}, 10, 10_000_000, 10_000_000},
	} {
		t.Run(c.name, func(t *testing.T) {
			classBandwidth(c.in, c.mbps)
			if c.in == nil {
				return
			}
			if c.in.EgressBitsPerSec != c.egress || c.in.IngressBitsPerSec != c.ingress {
				t.Errorf("egress %d ingress %d, want %d %d", c.in.EgressBitsPerSec, c.in.IngressBitsPerSec, c.egress, c.ingress)
			}
		})
	}
}
