package phlegethon

import (
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestApplyNetworkBurst(t *testing.T) {
	for _, tc := range []struct {
		name            string
		in              *tartarus.NetworkSpec
		mbps            int
		egress, ingress uint64
	}{
		{"no network", nil, 10, 0, 0},
		{"no limit in the class", &tartarus.NetworkSpec{Mode: "open"}, 0, 0, 0},
		{"the class's limit both ways", &tartarus.NetworkSpec{Mode: "open"}, 10, 10_000_000, 10_000_000},
		{"a lower asked limit is kept", &tartarus.NetworkSpec{Mode: "open", EgressBitsPerSec: 2_000_000}, 10, 2_000_000, 10_000_000},
		{"a higher asked limit is lowered", &tartarus.NetworkSpec{Mode: "open", IngressBitsPerSec: 50_000_000}, 10, 10_000_000, 10_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ApplyNetworkBurst(tc.in, tc.mbps)
			if tc.in == nil {
				return
			}
			if tc.in.EgressBitsPerSec != tc.egress || tc.in.IngressBitsPerSec != tc.ingress {
				t.Errorf("limits %d/%d, want %d/%d", tc.in.EgressBitsPerSec, tc.in.IngressBitsPerSec, tc.egress, tc.ingress)
			}
		})
	}
}
