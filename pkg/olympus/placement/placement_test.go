package placement

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// node is a node with one available microvm runtime and no per-sandbox max.
func node(name string, cpus, memMB, usedCPUs, usedMemMB int, labels ...string) Node {
	n := Node{
		Name: name, CPUs: cpus, MemoryMB: memMB, UsedCPUs: usedCPUs, UsedMemoryMB: usedMemMB,
		Runtimes: []Runtime{{Name: "microvm", Available: true}},
	}
	if len(labels) > 0 {
		n.Labels = map[string]string{}
		for i := 0; i+1 < len(labels); i += 2 {
			n.Labels[labels[i]] = labels[i+1]
		}
	}
	return n
}

func with(n Node, f func(*Node)) Node { f(&n); return n }

func TestParseStrategy(t *testing.T) {
	tests := []struct {
		in      string
		want    Strategy
		wantErr bool
	}{
		{"", Spread, false},
		{"spread", Spread, false},
		{"pack", Pack, false},
		{"Pack", "", true},
		{"binpack", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseStrategy(tt.in)
			if tt.wantErr {
				if !errors.Is(err, tartarus.ErrInvalid) {
					t.Fatalf("ParseStrategy(%q) error = %v, want ErrInvalid", tt.in, err)
				}
				if want := `placement strategy "` + tt.in + `": want "spread" or "pack": invalid argument`; err.Error() != want {
					t.Errorf("error = %q, want %q", err, want)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseStrategy(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestPlaceChooses covers which node is chosen: every rule that removes a
// node, and how spread and pack rank the rest.
func TestPlaceChooses(t *testing.T) {
	tests := []struct {
		name     string
		nodes    []Node
		req      Request
		strategy Strategy
		placer   *Placer // overrides strategy when set
		want     string
	}{
		{
			name:  "spread takes the largest free fraction",
			nodes: []Node{node("a", 8, 1000, 0, 600), node("b", 8, 10000, 0, 5000), node("c", 8, 4000, 0, 3000)},
			req:   Request{MemoryMB: 100},
			want:  "b",
		},
		{
			name: "spread ranks by the fraction after this sandbox, not before",
			// Before: a 50% free, b 40%. After 400 MiB: a 10%, b 36%.
			nodes: []Node{node("a", 8, 1000, 0, 500), node("b", 8, 10000, 0, 6000)},
			req:   Request{MemoryMB: 400},
			want:  "b",
		},
		{
			name:     "pack takes the least free memory that still fits",
			nodes:    []Node{node("a", 8, 1000, 0, 600), node("b", 8, 10000, 0, 5000), node("c", 8, 4000, 0, 3000)},
			req:      Request{MemoryMB: 500},
			strategy: Pack,
			want:     "c",
		},
		{
			name:  "spread breaks a tie by fewer sandboxes",
			nodes: []Node{with(node("a", 8, 1000, 0, 0), func(n *Node) { n.Sandboxes = 3 }), with(node("b", 8, 1000, 0, 0), func(n *Node) { n.Sandboxes = 2 })},
			req:   Request{MemoryMB: 100},
			want:  "b",
		},
		{
			name:     "pack breaks a tie by more sandboxes",
			nodes:    []Node{with(node("a", 8, 1000, 0, 0), func(n *Node) { n.Sandboxes = 3 }), with(node("b", 8, 1000, 0, 0), func(n *Node) { n.Sandboxes = 2 })},
			req:      Request{MemoryMB: 100},
			strategy: Pack,
			want:     "a",
		},
		{
			name:  "a full tie goes to the smaller name",
			nodes: []Node{node("c", 8, 1000, 0, 0), node("a", 8, 1000, 0, 0), node("b", 8, 1000, 0, 0)},
			req:   Request{MemoryMB: 100},
			want:  "a",
		},
		{
			name:     "a full tie goes to the smaller name when packing too",
			nodes:    []Node{node("c", 8, 1000, 0, 0), node("b", 8, 1000, 0, 0)},
			req:      Request{MemoryMB: 100},
			strategy: Pack,
			want:     "b",
		},
		{
			name:  "labels must all match",
			nodes: []Node{node("a", 8, 9000, 0, 0, "pool", "cpu", "zone", "1"), node("b", 8, 1000, 0, 0, "pool", "gpu", "zone", "2"), node("c", 8, 1000, 0, 500, "pool", "gpu", "zone", "1")},
			req:   Request{MemoryMB: 100, Labels: map[string]string{"pool": "gpu", "zone": "1"}},
			want:  "c",
		},
		{
			name:  "a node without the label key does not match",
			nodes: []Node{node("a", 8, 9000, 0, 0), node("b", 8, 1000, 0, 500, "pool", "gpu")},
			req:   Request{MemoryMB: 100, Labels: map[string]string{"pool": "gpu"}},
			want:  "b",
		},
		{
			name: "no runtime named: the node's default, which must be available",
			nodes: []Node{
				with(node("a", 8, 9000, 0, 0), func(n *Node) {
					n.Runtimes = []Runtime{{Name: "microvm", Reason: "no qemu"}, {Name: "docker", Available: true}}
				}),
				node("b", 8, 1000, 0, 500),
			},
			req:  Request{MemoryMB: 100},
			want: "b",
		},
		{
			name: "a named runtime must be offered and available",
			nodes: []Node{
				node("a", 8, 9000, 0, 0),
				with(node("b", 8, 9000, 0, 0), func(n *Node) { n.Runtimes = append(n.Runtimes, Runtime{Name: "gvisor", Reason: "no runsc"}) }),
				with(node("c", 8, 1000, 0, 500), func(n *Node) { n.Runtimes = append(n.Runtimes, Runtime{Name: "gvisor", Available: true}) }),
			},
			req:  Request{Runtime: "gvisor", MemoryMB: 100},
			want: "c",
		},
		{
			name: "the request must fit the runtime's per-sandbox maximum",
			nodes: []Node{
				with(node("a", 8, 9000, 0, 0), func(n *Node) { n.Runtimes[0].MaxMemoryMB = 512 }),
				with(node("b", 8, 9000, 0, 0), func(n *Node) { n.Runtimes[0].MaxCPUs = 1 }),
				with(node("c", 8, 2000, 0, 500), func(n *Node) { n.Runtimes[0].MaxCPUs, n.Runtimes[0].MaxMemoryMB = 2, 1024 }),
			},
			req:  Request{CPUs: 2, MemoryMB: 1024},
			want: "c",
		},
		{
			name:  "memory is hard: exactly full fits, one MiB over does not",
			nodes: []Node{node("a", 8, 1000, 0, 901), node("b", 8, 1000, 0, 900)},
			req:   Request{MemoryMB: 100},
			want:  "b",
		},
		{
			name:   "CPUs overcommit by the default factor",
			nodes:  []Node{node("a", 2, 1000, 16, 0), node("b", 2, 1000, 15, 900)},
			req:    Request{CPUs: 1, MemoryMB: 100},
			placer: &Placer{},
			want:   "b",
		},
		{
			name:   "CPU overcommit 1 means none",
			nodes:  []Node{node("a", 2, 9000, 2, 0), node("b", 2, 1000, 1, 900)},
			req:    Request{CPUs: 1, MemoryMB: 100},
			placer: &Placer{CPUOvercommit: 1},
			want:   "b",
		},
		{
			name:  "the sandbox limit counts; zero is no limit",
			nodes: []Node{with(node("a", 8, 9000, 0, 0), func(n *Node) { n.Sandboxes, n.MaxSandboxes = 4, 4 }), with(node("b", 8, 1000, 0, 500), func(n *Node) { n.Sandboxes = 100 })},
			req:   Request{MemoryMB: 100},
			want:  "b",
		},
		{
			name:  "avoided nodes are skipped",
			nodes: []Node{node("a", 8, 9000, 0, 0), node("b", 8, 9000, 0, 0), node("c", 8, 1000, 0, 500)},
			req:   Request{MemoryMB: 100, Avoid: []string{"b", "a"}},
			want:  "c",
		},
		{
			name:  "a node reporting more in use than it has is full, not broken",
			nodes: []Node{node("a", 8, 1000, 0, 5000), node("b", 8, 1000, 0, 900)},
			req:   Request{MemoryMB: 10},
			want:  "b",
		},
		{
			name:  "a request for nothing fits a node reporting nothing",
			nodes: []Node{node("a", 0, 0, 0, 0)},
			req:   Request{},
			want:  "a",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Placer{Strategy: tt.strategy}
			if tt.placer != nil {
				p = *tt.placer
			}
			got, err := p.Place(tt.nodes, tt.req)
			if err != nil {
				t.Fatalf("Place: %v", err)
			}
			if got != tt.want {
				t.Errorf("Place = %q, want %q", got, tt.want)
			}
			// The choice does not depend on the nodes' order.
			rev := make([]Node, len(tt.nodes))
			for i, n := range tt.nodes {
				rev[len(rev)-1-i] = n
			}
			if got, err := p.Place(rev, tt.req); err != nil || got != tt.want {
				t.Errorf("Place(reversed) = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestPlaceRefuses covers the wording of every refusal.
func TestPlaceRefuses(t *testing.T) {
	gpu := map[string]string{"pool": "gpu"}
	tests := []struct {
		name   string
		nodes  []Node
		req    Request
		placer Placer
		class  error
		want   string
	}{
		{
			name:  "no nodes",
			req:   Request{MemoryMB: 100},
			class: tartarus.ErrUnavailable,
			want:  "no nodes registered: unavailable",
		},
		{
			name:  "the brief's example",
			nodes: []Node{node("node-a", 8, 4096, 0, 3072, "pool", "gpu"), node("node-b", 8, 65536, 0, 0, "pool", "cpu")},
			req:   Request{MemoryMB: 4096, Labels: gpu},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with 4096 MiB free in pool=gpu: node-a has 1024 MiB free, node-b is not in pool=gpu (2 nodes): resource exhausted",
		},
		{
			name:  "closest first, capped at three, the rest counted",
			nodes: []Node{node("e", 8, 9000, 0, 0, "pool", "cpu"), node("d", 8, 4096, 0, 4000, "pool", "gpu"), node("c", 8, 4096, 0, 3000, "pool", "gpu"), node("b", 8, 4096, 0, 2000, "pool", "gpu"), node("a", 8, 9000, 0, 0)},
			req:   Request{MemoryMB: 4096, Labels: gpu},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with 4096 MiB free in pool=gpu: b has 2096 MiB free, c has 1096 MiB free, d has 96 MiB free, and 2 more (5 nodes): resource exhausted",
		},
		{
			name: "each node is explained by its most decisive reason",
			nodes: []Node{
				// Wrong label and short of memory: the label is named.
				node("a", 8, 100, 0, 100, "pool", "cpu"),
				// Right label, runtime missing and short of memory: the runtime is named.
				node("b", 8, 100, 0, 100, "pool", "gpu"),
			},
			req:   Request{Runtime: "gvisor", MemoryMB: 512, Labels: gpu},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with 512 MiB free in pool=gpu for runtime gvisor: b has no runtime gvisor, a is not in pool=gpu (2 nodes): resource exhausted",
		},
		{
			name: "runtime unavailable, with and without a reason",
			nodes: []Node{
				with(node("a", 8, 9000, 0, 0), func(n *Node) { n.Runtimes[0] = Runtime{Name: "microvm", Reason: "/dev/kvm missing and no qemu"} }),
				with(node("b", 8, 9000, 0, 0), func(n *Node) { n.Runtimes[0] = Runtime{Name: "microvm"} }),
				with(node("c", 8, 9000, 0, 0), func(n *Node) { n.Runtimes = nil }),
			},
			req:   Request{CPUs: 1, MemoryMB: 256},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with 1 CPU and 256 MiB free: a has microvm unavailable (/dev/kvm missing and no qemu), b has microvm unavailable, c offers no runtime (3 nodes): resource exhausted",
		},
		{
			name: "too big for the runtime's maximum: memory named first",
			nodes: []Node{
				with(node("a", 8, 9000, 0, 0), func(n *Node) { n.Runtimes[0].MaxMemoryMB, n.Runtimes[0].MaxCPUs = 2048, 1 }),
				with(node("b", 8, 9000, 0, 0), func(n *Node) { n.Runtimes[0].MaxCPUs = 1 }),
			},
			req:   Request{CPUs: 2, MemoryMB: 4096},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with 2 CPUs and 4096 MiB free: microvm allows at most 2048 MiB per sandbox on a, microvm allows at most 1 CPU per sandbox on b (2 nodes): resource exhausted",
		},
		{
			name:   "not enough CPUs, counting the overcommit",
			nodes:  []Node{node("a", 2, 9000, 3, 0), node("b", 2, 9000, 4, 0), node("c", 2, 9000, 9, 0)},
			req:    Request{CPUs: 2},
			placer: Placer{CPUOvercommit: 2},
			class:  tartarus.ErrResourceExhausted,
			want:   "no node with 2 CPUs free: a has 1 CPU free, b has 0 CPUs free, c has 0 CPUs free (3 nodes): resource exhausted",
		},
		{
			name: "sandbox limit is nearest, then CPUs, then memory",
			nodes: []Node{
				node("mem", 1, 100, 0, 0),
				node("cpu", 1, 9000, 8, 0),
				with(node("full", 8, 9000, 0, 0), func(n *Node) { n.Sandboxes, n.MaxSandboxes = 1, 1 }),
			},
			req:   Request{CPUs: 1, MemoryMB: 512},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with 1 CPU and 512 MiB free: full holds its maximum of 1 sandbox, cpu has 0 CPUs free, mem has 100 MiB free (3 nodes): resource exhausted",
		},
		{
			name:  "avoided nodes are named last",
			nodes: []Node{node("a", 8, 9000, 0, 0), node("b", 8, 9000, 0, 0, "pool", "cpu")},
			req:   Request{Avoid: []string{"a"}, Labels: gpu},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with room in pool=gpu: b is not in pool=gpu, a is avoided (2 nodes): resource exhausted",
		},
		{
			name:  "labels are listed in key order, and the first mismatch named",
			nodes: []Node{node("a", 8, 9000, 0, 0, "pool", "gpu", "zone", "2")},
			req:   Request{Labels: map[string]string{"zone": "1", "pool": "gpu", "arch": "amd64"}},
			class: tartarus.ErrResourceExhausted,
			want:  "no node with room in arch=amd64,pool=gpu,zone=1: a is not in arch=amd64 (1 node): resource exhausted",
		},
		{
			name:  "a negative request is invalid",
			nodes: []Node{node("a", 8, 9000, 0, 0)},
			req:   Request{CPUs: -1},
			class: tartarus.ErrInvalid,
			want:  "placement: request for -1 CPUs and 0 MiB is negative: invalid argument",
		},
		{
			name:   "an unknown strategy is invalid",
			nodes:  []Node{node("a", 8, 9000, 0, 0)},
			placer: Placer{Strategy: "random"},
			class:  tartarus.ErrInvalid,
			want:   `placement strategy "random": want "spread" or "pack": invalid argument`,
		},
		{
			name:   "a negative overcommit is invalid",
			nodes:  []Node{node("a", 8, 9000, 0, 0)},
			placer: Placer{CPUOvercommit: -2},
			class:  tartarus.ErrInvalid,
			want:   "placement: CPU overcommit -2 is negative: invalid argument",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.placer.Place(tt.nodes, tt.req)
			if err == nil {
				t.Fatalf("Place = %q, want an error", got)
			}
			if !errors.Is(err, tt.class) {
				t.Errorf("error %v is not %v", err, tt.class)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %q\nwant %q", err, tt.want)
			}
		})
	}
}

// TestPlaceDeterministic shuffles many random node sets and checks that the
// choice and the refusal's wording never depend on the order.
func TestPlaceDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		nodes := simulatedNodes(rng, 50)
		req := simulatedRequest(rng)
		for _, s := range []Strategy{Spread, Pack} {
			want, wantErr := Place(nodes, req, s)
			for range 5 {
				shuffled := append([]Node(nil), nodes...)
				rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
				got, err := Place(shuffled, req, s)
				if got != want || errString(err) != errString(wantErr) {
					t.Fatalf("set %d %s: shuffled gives %q, %v; first order gave %q, %v", i, s, got, err, want, wantErr)
				}
			}
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestPlaceAllocations checks the claim in the package doc: a successful
// placement allocates nothing, however many nodes.
func TestPlaceAllocations(t *testing.T) {
	nodes := simulatedNodes(rand.New(rand.NewPCG(3, 4)), 1000)
	req := Request{CPUs: 1, MemoryMB: 512, Labels: map[string]string{"pool": "general"}, Avoid: []string{"node-0001"}}
	if _, err := Place(nodes, req, Spread); err != nil {
		t.Fatalf("Place: %v", err)
	}
	if n := testing.AllocsPerRun(20, func() { _, _ = Place(nodes, req, Spread) }); n != 0 {
		t.Errorf("Place allocates %v times per call, want 0", n)
	}
}

func TestRuntimeOf(t *testing.T) {
	fp := tartarus.Fingerprint{Runtime: "gvisor", Available: false, Reason: "runsc not found", Accel: "systrap",
		HostCPUs: 2, HostMemoryMB: 4096, MaxCPUs: 2, MaxMemoryMB: 2048}
	want := Runtime{Name: "gvisor", Reason: "runsc not found", MaxCPUs: 2, MaxMemoryMB: 2048}
	if got := RuntimeOf(fp); got != want {
		t.Errorf("RuntimeOf = %+v, want %+v", got, want)
	}
}
