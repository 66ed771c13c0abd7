package cluster

import (
	"slices"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
)

func TestOffQuarantineNodes(t *testing.T) {
	nodes := []placement.Node{
		{Name: "a", Labels: map[string]string{"pool": "test"}},
		{Name: "q", Labels: map[string]string{"pool": "test", "quarantine": "yes"}},
		{Name: "b"},
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   []string
	}{
		{"an ordinary create", nil, []string{"a", "b"}},
		{"one that names other labels", map[string]string{"pool": "test"}, []string{"a", "b"}},
		{"one that names the quarantine label", map[string]string{"quarantine": "yes"}, []string{"a", "q", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, n := range offQuarantineNodes(slices.Clone(nodes), placement.Request{Labels: tc.labels}) {
				got = append(got, n.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
