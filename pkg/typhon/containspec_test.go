package typhon

import (
	"slices"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestContainSpec: containment keeps the sandbox's bandwidth limits,
// allows only the policy's egress when restricted, and hands back an
// unaliased copy of the owner's spec; no network, nothing to do.
func TestContainSpec(t *testing.T) {
	if spec, prev := ContainSpec(nil, NetworkModeNone, nil); spec != nil || prev != nil {
		t.Fatalf("no network: %+v %+v", spec, prev)
	}
	cur := &tartarus.NetworkSpec{Mode: "restricted", Allow: []string{"example.com"}, Deny: []string{"10.0.0.0/8"},
		EgressBitsPerSec: 1e6, IngressBitsPerSec: 2e6}
	for _, tc := range []struct {
		mode  NetworkMode
		allow []string
	}{
		{NetworkModeNone, nil},
		{NetworkModeRestricted, []string{"evidence.internal"}},
		{NetworkModeMonitored, nil},
	} {
		spec, prev := ContainSpec(cur, tc.mode, []string{"evidence.internal"})
		if spec.Mode != string(tc.mode) || !slices.Equal(spec.Allow, tc.allow) || len(spec.Deny) != 0 ||
			spec.EgressBitsPerSec != 1e6 || spec.IngressBitsPerSec != 2e6 {
			t.Errorf("%s: spec %+v", tc.mode, spec)
		}
		prev.Allow[0] = "changed"
		if cur.Allow[0] != "example.com" || prev.Mode != "restricted" || prev.Deny[0] != "10.0.0.0/8" {
			t.Errorf("%s: prev %+v aliases or differs from %+v", tc.mode, prev, cur)
		}
	}
}
