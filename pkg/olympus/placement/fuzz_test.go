package placement

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// FuzzPlace checks, for node sets and requests drawn from the fuzzer's
// input (extreme values included), that Place never panics, that it refuses
// exactly when no node fits, and that the node it returns is the best by a
// separate, sort-based reading of the rules in the package doc.
func FuzzPlace(f *testing.F) {
	f.Add(uint64(1), uint8(10), 1, 512, uint8(0), uint8(0), 0)
	f.Add(uint64(2), uint8(0), 1, 512, uint8(1), uint8(1), 1)
	f.Add(uint64(3), uint8(200), 0, 0, uint8(2), uint8(2), 8)
	f.Add(uint64(4), uint8(30), math.MaxInt, math.MaxInt, uint8(3), uint8(3), -1)
	f.Add(uint64(5), uint8(30), -1, 100, uint8(0), uint8(4), 2)
	f.Fuzz(func(t *testing.T, seed uint64, count uint8, cpus, memMB int, strategy, shape uint8, overcommit int) {
		rng := rand.New(rand.NewPCG(seed, uint64(shape)))
		nodes := fuzzNodes(rng, int(count), shape)
		req := simulatedRequest(rng)
		req.CPUs, req.MemoryMB = cpus, memMB
		p := Placer{Strategy: []Strategy{Spread, Pack, "", "bogus"}[strategy%4], CPUOvercommit: overcommit}

		got, err := p.Place(nodes, req)

		invalid := p.Strategy == "bogus" || overcommit < 0 || cpus < 0 || memMB < 0
		switch {
		case invalid:
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("Place = %q, %v; want ErrInvalid", got, err)
			}
			return
		case len(nodes) == 0:
			if !errors.Is(err, tartarus.ErrUnavailable) {
				t.Fatalf("Place = %q, %v; want ErrUnavailable", got, err)
			}
			return
		}
		want, ok := referencePlace(nodes, req, p)
		if !ok {
			if !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.HasPrefix(err.Error(), "no node with ") {
				t.Fatalf("no node fits, but Place = %q, %v", got, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("node %s fits, but Place refused: %v", want, err)
		}
		if got != want {
			t.Fatalf("Place = %s, reference = %s", got, want)
		}
	})
}

// fuzzNodes is simulatedNodes with, for some shapes, values no sane agent
// reports: negative, zero and huge capacities and usage.
func fuzzNodes(rng *rand.Rand, n int, shape uint8) []Node {
	nodes := simulatedNodes(rng, n)
	if shape%2 == 0 {
		return nodes
	}
	odd := []int{math.MinInt, -1, 0, 1, 2, 1 << 53, math.MaxInt - 1, math.MaxInt}
	pick := func() int { return odd[rng.IntN(len(odd))] }
	for i := range nodes {
		nd := &nodes[i]
		switch rng.IntN(6) {
		case 0:
			nd.CPUs, nd.UsedCPUs = pick(), pick()
		case 1:
			nd.MemoryMB, nd.UsedMemoryMB = pick(), pick()
		case 2:
			nd.Sandboxes, nd.MaxSandboxes = pick(), pick()
		case 3:
			nd.Runtimes = nil
		case 4:
			nd.Name = fmt.Sprintf("node-%04d", rng.IntN(max(n/2, 1))) // duplicate names
		}
	}
	return nodes
}

// referencePlace is a slow, separate reading of the rules: filter with
// plain arithmetic on big integers, then sort with exact fractions.
func referencePlace(nodes []Node, req Request, p Placer) (string, bool) {
	oc := int64(p.CPUOvercommit)
	if oc == 0 {
		oc = DefaultCPUOvercommit
	}
	bigFree := func(total, used int) *big.Int {
		f := new(big.Int).Sub(big.NewInt(int64(total)), big.NewInt(int64(max(used, 0))))
		if f.Sign() < 0 {
			f.SetInt64(0)
		}
		return f
	}
	var fit []Node
	for _, n := range nodes {
		if slices.Contains(req.Avoid, n.Name) {
			continue
		}
		labelsOK := true
		for k, v := range req.Labels {
			if got, has := n.Labels[k]; !has || got != v {
				labelsOK = false
			}
		}
		if !labelsOK || len(n.Runtimes) == 0 {
			continue
		}
		rt := n.Runtimes[0]
		if req.Runtime != "" {
			i := slices.IndexFunc(n.Runtimes, func(r Runtime) bool { return r.Name == req.Runtime })
			if i < 0 {
				continue
			}
			rt = n.Runtimes[i]
		}
		if !rt.Available || (rt.MaxCPUs > 0 && req.CPUs > rt.MaxCPUs) || (rt.MaxMemoryMB > 0 && req.MemoryMB > rt.MaxMemoryMB) {
			continue
		}
		if bigFree(n.MemoryMB, n.UsedMemoryMB).Cmp(big.NewInt(int64(req.MemoryMB))) < 0 {
			continue
		}
		cpuCap := new(big.Int).Mul(big.NewInt(int64(max(n.CPUs, 0))), big.NewInt(oc))
		cpuFree := new(big.Int).Sub(cpuCap, big.NewInt(int64(max(n.UsedCPUs, 0))))
		if cpuFree.Sign() < 0 {
			cpuFree.SetInt64(0) // as with memory: an over-full node has none free
		}
		if cpuFree.Cmp(big.NewInt(int64(req.CPUs))) < 0 {
			continue
		}
		if n.MaxSandboxes > 0 && n.Sandboxes >= n.MaxSandboxes {
			continue
		}
		fit = append(fit, n)
	}
	if len(fit) == 0 {
		return "", false
	}
	freeAfter := func(n Node) *big.Int {
		return new(big.Int).Sub(bigFree(n.MemoryMB, n.UsedMemoryMB), big.NewInt(int64(req.MemoryMB)))
	}
	fraction := func(n Node) *big.Rat {
		if n.MemoryMB <= 0 {
			return new(big.Rat)
		}
		return new(big.Rat).SetFrac(freeAfter(n), big.NewInt(int64(n.MemoryMB)))
	}
	slices.SortStableFunc(fit, func(a, b Node) int {
		var c int
		if p.Strategy == Pack {
			c = freeAfter(a).Cmp(freeAfter(b)) // less free first
			if c == 0 {
				c = -cmpInt(a.Sandboxes, b.Sandboxes) // more sandboxes first
			}
		} else {
			c = -fraction(a).Cmp(fraction(b)) // larger fraction first
			if c == 0 {
				c = cmpInt(a.Sandboxes, b.Sandboxes) // fewer sandboxes first
			}
		}
		if c == 0 {
			c = strings.Compare(a.Name, b.Name)
		}
		return c
	})
	return fit[0].Name, true
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
