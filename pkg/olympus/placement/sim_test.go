package placement

import (
	"fmt"
	"math/rand/v2"
)

// simulatedNodes makes n simulated nodes: no agent or runtime behind them,
// only the reports an agent would send, with capacity, load, labels and
// runtimes drawn from rng.
func simulatedNodes(rng *rand.Rand, n int) []Node {
	pools := []string{"general", "general", "general", "highmem", "gpu", "edge"}
	zones := []string{"a", "b", "c"}
	nodes := make([]Node, n)
	for i := range nodes {
		cpus := []int{4, 8, 16, 32, 64}[rng.IntN(5)]
		mem := cpus * []int{2048, 4096, 8192}[rng.IntN(3)]
		usedFrac := rng.Float64()
		nd := Node{
			Name:         fmt.Sprintf("node-%04d", i),
			Labels:       map[string]string{"pool": pools[rng.IntN(len(pools))], "zone": zones[rng.IntN(len(zones))]},
			CPUs:         cpus,
			MemoryMB:     mem,
			UsedCPUs:     int(usedFrac * float64(cpus*DefaultCPUOvercommit)),
			UsedMemoryMB: int(usedFrac * float64(mem)),
			Sandboxes:    int(usedFrac * 40),
		}
		if rng.IntN(4) == 0 {
			nd.MaxSandboxes = 40
		}
		microvm := Runtime{Name: "microvm", Available: true, MaxCPUs: cpus, MaxMemoryMB: mem}
		if rng.IntN(10) == 0 {
			microvm = Runtime{Name: "microvm", Reason: "qemu-system-x86_64 not found"}
		}
		nd.Runtimes = []Runtime{microvm}
		if rng.IntN(2) == 0 {
			nd.Runtimes = append(nd.Runtimes, Runtime{Name: "gvisor", Available: rng.IntN(5) > 0, Reason: "runsc not found"})
		}
		if rng.IntN(3) == 0 {
			nd.Runtimes = append(nd.Runtimes, Runtime{Name: "docker", Available: true})
		}
		nodes[i] = nd
	}
	return nodes
}

// simulatedRequest draws a request of the sizes sandboxes usually ask for.
func simulatedRequest(rng *rand.Rand) Request {
	req := Request{
		CPUs:     []int{1, 1, 2, 4, 8}[rng.IntN(5)],
		MemoryMB: []int{256, 512, 1024, 4096, 16384, 65536}[rng.IntN(6)],
		Runtime:  []string{"", "", "microvm", "gvisor", "docker", "wasm"}[rng.IntN(6)],
	}
	switch rng.IntN(4) {
	case 0:
		req.Labels = map[string]string{"pool": "gpu"}
	case 1:
		req.Labels = map[string]string{"pool": "general", "zone": "b"}
	}
	if rng.IntN(3) == 0 {
		req.Avoid = []string{fmt.Sprintf("node-%04d", rng.IntN(50))}
	}
	return req
}
