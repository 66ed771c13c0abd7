package placement

import (
	"math/rand/v2"
	"testing"
)

// The benchmarks run against 1,000 simulated nodes (sim_test.go): reports
// such as agents send, with no agent or runtime behind them.

// BenchmarkPlace1000 measures one placement that succeeds.
func BenchmarkPlace1000(b *testing.B) {
	nodes := simulatedNodes(rand.New(rand.NewPCG(42, 42)), 1000)
	benches := []struct {
		name     string
		req      Request
		strategy Strategy
	}{
		{"spread", Request{CPUs: 1, MemoryMB: 512}, Spread},
		{"pack", Request{CPUs: 1, MemoryMB: 512}, Pack},
		{"spread-labels-runtime-avoid", Request{Runtime: "gvisor", CPUs: 2, MemoryMB: 2048,
			Labels: map[string]string{"pool": "general", "zone": "b"}, Avoid: []string{"node-0001", "node-0002"}}, Spread},
	}
	for _, bb := range benches {
		b.Run(bb.name, func(b *testing.B) {
			if _, err := Place(nodes, bb.req, bb.strategy); err != nil {
				b.Fatalf("Place: %v", err)
			}
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Place(nodes, bb.req, bb.strategy)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "placements/s")
		})
	}
}

// BenchmarkPlace1000Refused measures a refusal: no node fits, so Place
// also words the explanation.
func BenchmarkPlace1000Refused(b *testing.B) {
	nodes := simulatedNodes(rand.New(rand.NewPCG(42, 42)), 1000)
	req := Request{CPUs: 4, MemoryMB: 1 << 20, Labels: map[string]string{"pool": "gpu"}}
	if _, err := Place(nodes, req, Spread); err == nil {
		b.Fatal("Place succeeded, want a refusal")
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Place(nodes, req, Spread)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "refusals/s")
}
