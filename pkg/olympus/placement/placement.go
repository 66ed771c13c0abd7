// Package placement chooses the node a new sandbox runs on: among the nodes
// whose labels, runtime and free capacity fit the request, it takes the least
// loaded (Spread) or the most loaded (Pack), and when none fits it says why in
// plain words.
//
// It is pure logic: no I/O, no clock, no state between calls. The control
// plane builds a []Node from the agents' latest reports and calls Place for
// every new sandbox.
//
// Rules. A node fits a request when
//   - it is not in Request.Avoid;
//   - every label of the request is on the node with the same value;
//   - the runtime asked for (or the node's default, its first) is offered and
//     available there;
//   - the request is within that runtime's per-sandbox maximum (0: no maximum);
//   - its free memory holds the request: memory is never overcommitted, and
//     a node that reports no memory takes only requests for none;
//   - its free CPUs hold the request, where a node's CPUs count
//     Placer.CPUOvercommit times (default 8, the same factor the node agent
//     checks itself, so placement neither sends work the agent will refuse nor
//     refuses work it would take);
//   - it holds fewer sandboxes than its MaxSandboxes (0: no limit).
//
// Ranking. Spread takes the node with the largest fraction of its memory
// still free after this sandbox, then the one with fewer sandboxes. Pack takes
// the node with the least memory free after this sandbox, then the one with
// more sandboxes. Remaining ties go to the smaller name, so the choice is
// deterministic whatever the order of the slice.
//
// Place makes one pass over the nodes, keeps the best and allocates nothing
// per node. Only a refusal does more work: a second pass that keeps the few
// closest candidates for the explanation.
package placement

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Strategy is how Place ranks the nodes that fit.
type Strategy string

const (
	Spread Strategy = "spread" // least loaded node first (default)
	Pack   Strategy = "pack"   // most loaded node that still fits first
)

// ParseStrategy reads a strategy setting: "" is Spread.
func ParseStrategy(s string) (Strategy, error) {
	switch Strategy(s) {
	case "", Spread:
		return Spread, nil
	case Pack:
		return Pack, nil
	}
	return "", tartarus.Errorf(tartarus.ErrInvalid, "placement strategy %q: want %q or %q", s, Spread, Pack)
}

// DefaultCPUOvercommit is how many sandbox CPUs one node CPU backs when
// Placer.CPUOvercommit is 0. It matches the node agent's own check.
const DefaultCPUOvercommit = 8

// maxExplained is how many nodes a refusal names before "and N more".
const maxExplained = 3

// Node is one node as placement sees it.
type Node struct {
	Name   string
	Labels map[string]string
	// Runtimes the node offers, default first.
	Runtimes []Runtime
	// Schedulable totals for sandboxes on this node, and what sandboxes already placed there hold.
	CPUs, MemoryMB         int
	UsedCPUs, UsedMemoryMB int
	Sandboxes              int
	MaxSandboxes           int // 0: no limit
}

// Runtime is one runtime a node offers.
type Runtime struct {
	Name        string
	Available   bool
	Reason      string // why not available
	MaxCPUs     int    // per sandbox; 0: no maximum
	MaxMemoryMB int    // per sandbox; 0: no maximum
}

// RuntimeOf is the Runtime placement sees in a runtime's fingerprint, as a
// node agent reports it.
func RuntimeOf(fp tartarus.Fingerprint) Runtime {
	return Runtime{Name: fp.Runtime, Available: fp.Available, Reason: fp.Reason, MaxCPUs: fp.MaxCPUs, MaxMemoryMB: fp.MaxMemoryMB}
}

// Request is what one sandbox needs.
type Request struct {
	Runtime  string // "" : the node's default runtime
	CPUs     int
	MemoryMB int
	Labels   map[string]string // every pair must match the node's labels exactly
	Avoid    []string          // node names not to use (e.g. just failed)
}

// Placer chooses nodes. Its zero value spreads with the default CPU
// overcommit.
type Placer struct {
	Strategy Strategy // "": Spread
	// CPUOvercommit is how many sandbox CPUs one node CPU backs; 0 means
	// DefaultCPUOvercommit and 1 means none. Memory is never overcommitted.
	CPUOvercommit int
}

// Place is Placer{Strategy: s}.Place(nodes, req).
func Place(nodes []Node, req Request, s Strategy) (string, error) {
	return Placer{Strategy: s}.Place(nodes, req)
}

// Place returns the chosen node's name. With no node fitting it returns an
// error wrapping tartarus.ErrResourceExhausted whose message explains why for
// the closest candidates, e.g.
//
//	no node with 4096 MiB free in pool=gpu: node-a has 1024 MiB free, node-b is not in pool=gpu (2 nodes)
//
// With no node at all it returns tartarus.ErrUnavailable; with a bad request
// or setting, tartarus.ErrInvalid.
func (p Placer) Place(nodes []Node, req Request) (string, error) {
	strategy, err := ParseStrategy(string(p.Strategy))
	if err != nil {
		return "", err
	}
	overcommit := p.CPUOvercommit
	if overcommit == 0 {
		overcommit = DefaultCPUOvercommit
	}
	if overcommit < 0 {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "placement: CPU overcommit %d is negative", overcommit)
	}
	if req.CPUs < 0 || req.MemoryMB < 0 {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "placement: request for %d CPUs and %d MiB is negative", req.CPUs, req.MemoryMB)
	}
	if len(nodes) == 0 {
		return "", tartarus.Errorf(tartarus.ErrUnavailable, "no nodes registered")
	}

	// The request's labels go into a slice once, on the stack when few:
	// ranging over a map for every node costs more than the rest of check.
	var buf [8]label
	labels := buf[:0]
	for k, v := range req.Labels {
		labels = append(labels, label{k, v})
	}

	best := -1
	var bestKey rankKey
	for i := range nodes {
		n := &nodes[i]
		if check(n, &req, labels, overcommit).reason != fits {
			continue
		}
		key := rankOf(n, &req)
		if best < 0 || key.better(&bestKey, strategy, n.Name, nodes[best].Name) {
			best, bestKey = i, key
		}
	}
	if best >= 0 {
		return nodes[best].Name, nil
	}
	return "", explain(nodes, &req, labels, overcommit)
}

// label is one label a request asks for.
type label struct{ key, value string }

// rankKey is what orders the nodes that fit: the memory free after this
// sandbox, the node's total memory and its sandbox count. Fractions are
// compared exactly (128-bit cross products), so equal fractions tie and the
// tie is broken the same way on every machine.
type rankKey struct {
	free, total uint64
	sandboxes   int
}

func rankOf(n *Node, req *Request) rankKey {
	// Only nodes that fit are ranked: free >= req.MemoryMB >= 0.
	return rankKey{
		free:      uint64(free(n.MemoryMB, n.UsedMemoryMB) - req.MemoryMB),
		total:     uint64(max(n.MemoryMB, 0)),
		sandboxes: n.Sandboxes,
	}
}

// better reports whether k (on node name) ranks before o (on node oName).
func (k *rankKey) better(o *rankKey, s Strategy, name, oName string) bool {
	if s == Pack {
		if k.free != o.free {
			return k.free < o.free
		}
		if k.sandboxes != o.sandboxes {
			return k.sandboxes > o.sandboxes
		}
		return name < oName
	}
	// k.free/k.total > o.free/o.total, a node with no memory counting as 0.
	kHi, kLo := bits.Mul64(k.free, max(o.total, 1))
	oHi, oLo := bits.Mul64(o.free, max(k.total, 1))
	if kHi != oHi || kLo != oLo {
		return kHi > oHi || (kHi == oHi && kLo > oLo)
	}
	if k.sandboxes != o.sandboxes {
		return k.sandboxes < o.sandboxes
	}
	return name < oName
}

// reason is why a node does not fit, most decisive first: a node is
// explained by the first rule it breaks.
type reason int

const (
	avoided reason = iota
	labelMismatch
	noRuntime
	runtimeUnavailable
	overRuntimeMax
	notEnoughMemory
	notEnoughCPUs
	sandboxLimit
	fits
)

// verdict is a node's reason with what the explanation needs to word it.
type verdict struct {
	reason  reason
	runtime *Runtime // the runtime the request would use, once known
}

// check applies the rules to one node. It allocates nothing.
func check(n *Node, req *Request, labels []label, overcommit int) verdict {
	if slices.Contains(req.Avoid, n.Name) {
		return verdict{reason: avoided}
	}
	for _, l := range labels {
		if got, ok := n.Labels[l.key]; !ok || got != l.value {
			return verdict{reason: labelMismatch}
		}
	}
	rt := runtimeOf(n, req.Runtime)
	if rt == nil {
		return verdict{reason: noRuntime}
	}
	if !rt.Available {
		return verdict{reason: runtimeUnavailable, runtime: rt}
	}
	if (rt.MaxCPUs > 0 && req.CPUs > rt.MaxCPUs) || (rt.MaxMemoryMB > 0 && req.MemoryMB > rt.MaxMemoryMB) {
		return verdict{reason: overRuntimeMax, runtime: rt}
	}
	if req.MemoryMB > free(n.MemoryMB, n.UsedMemoryMB) {
		return verdict{reason: notEnoughMemory, runtime: rt}
	}
	if req.CPUs > freeCPUs(n.CPUs, n.UsedCPUs, overcommit) {
		return verdict{reason: notEnoughCPUs, runtime: rt}
	}
	if n.MaxSandboxes > 0 && n.Sandboxes >= n.MaxSandboxes {
		return verdict{reason: sandboxLimit, runtime: rt}
	}
	return verdict{reason: fits, runtime: rt}
}

// runtimeOf finds the runtime named (or the node's default, for "").
func runtimeOf(n *Node, name string) *Runtime {
	if len(n.Runtimes) == 0 {
		return nil
	}
	if name == "" {
		return &n.Runtimes[0]
	}
	for i := range n.Runtimes {
		if n.Runtimes[i].Name == name {
			return &n.Runtimes[i]
		}
	}
	return nil
}

// free is total-used, never negative and never overflowing, whatever a node
// reported (an agent may briefly report more in use than it has).
func free(total, used int) int {
	used = max(used, 0)
	if total <= used {
		return 0
	}
	return total - used
}

// freeCPUs is cpus × overcommit − used, never negative, computed in 128
// bits and then capped at math.MaxInt, so that no report overflows it.
func freeCPUs(cpus, used, overcommit int) int {
	if cpus <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(cpus), uint64(overcommit))
	u := uint64(max(used, 0))
	switch {
	case hi > 0: // the product is at least 2^64, so its difference from used is above MaxInt
		return math.MaxInt
	case lo <= u:
		return 0
	case lo-u > math.MaxInt:
		return math.MaxInt
	}
	return int(lo - u)
}

// candidate is a node that does not fit, kept for the explanation.
type candidate struct {
	node    *Node
	verdict verdict
	short   int // how far from fitting within its reason (smaller is closer)
}

// closer reports whether c is nearer to fitting than o: a node breaking only
// a late rule (sandbox limit) is nearer than one breaking an early one
// (labels); within a rule, the smaller shortfall, then the smaller name.
func (c *candidate) closer(o *candidate) bool {
	if c.verdict.reason != o.verdict.reason {
		return c.verdict.reason > o.verdict.reason
	}
	if c.short != o.short {
		return c.short < o.short
	}
	return c.node.Name < o.node.Name
}

// explain words a refusal: what was asked, then why the closest few
// nodes do not fit.
func explain(nodes []Node, req *Request, labels []label, overcommit int) error {
	var top [maxExplained]candidate
	kept := 0
	for i := range nodes {
		c := candidate{node: &nodes[i], verdict: check(&nodes[i], req, labels, overcommit)}
		switch c.verdict.reason {
		case notEnoughMemory:
			c.short = req.MemoryMB - free(c.node.MemoryMB, c.node.UsedMemoryMB)
		case notEnoughCPUs:
			c.short = req.CPUs - freeCPUs(c.node.CPUs, c.node.UsedCPUs, overcommit)
		}
		// Insert into the sorted top list, dropping the farthest.
		at := kept
		for at > 0 && c.closer(&top[at-1]) {
			at--
		}
		if at >= maxExplained {
			continue
		}
		if kept < maxExplained {
			kept++
		}
		copy(top[at+1:kept], top[at:kept-1])
		top[at] = c
	}

	var b strings.Builder
	b.WriteString("no node with ")
	b.WriteString(asked(req))
	for i, k := range sortedKeys(req.Labels) {
		if i == 0 {
			b.WriteString(" in ")
		} else {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%s=%s", k, req.Labels[k])
	}
	if req.Runtime != "" {
		fmt.Fprintf(&b, " for runtime %s", req.Runtime)
	}
	b.WriteString(": ")
	for i := range kept {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(why(&top[i], req, overcommit))
	}
	if more := len(nodes) - kept; more > 0 {
		fmt.Fprintf(&b, ", and %d more", more)
	}
	fmt.Fprintf(&b, " (%d %s)", len(nodes), plural(len(nodes), "node", "nodes"))
	return tartarus.Errorf(tartarus.ErrResourceExhausted, "%s", b.String())
}

// asked words the request's size: "2 CPUs and 4096 MiB free".
func asked(req *Request) string {
	switch {
	case req.CPUs > 0 && req.MemoryMB > 0:
		return fmt.Sprintf("%d %s and %d MiB free", req.CPUs, plural(req.CPUs, "CPU", "CPUs"), req.MemoryMB)
	case req.CPUs > 0:
		return fmt.Sprintf("%d %s free", req.CPUs, plural(req.CPUs, "CPU", "CPUs"))
	case req.MemoryMB > 0:
		return fmt.Sprintf("%d MiB free", req.MemoryMB)
	}
	return "room"
}

// why words one node's reason.
func why(c *candidate, req *Request, overcommit int) string {
	n, rt := c.node, c.verdict.runtime
	switch c.verdict.reason {
	case avoided:
		return fmt.Sprintf("%s is avoided", n.Name)
	case labelMismatch:
		for _, k := range sortedKeys(req.Labels) {
			if got, ok := n.Labels[k]; !ok || got != req.Labels[k] {
				return fmt.Sprintf("%s is not in %s=%s", n.Name, k, req.Labels[k])
			}
		}
	case noRuntime:
		if req.Runtime == "" {
			return fmt.Sprintf("%s offers no runtime", n.Name)
		}
		return fmt.Sprintf("%s has no runtime %s", n.Name, req.Runtime)
	case runtimeUnavailable:
		if rt.Reason == "" {
			return fmt.Sprintf("%s has %s unavailable", n.Name, rt.Name)
		}
		return fmt.Sprintf("%s has %s unavailable (%s)", n.Name, rt.Name, rt.Reason)
	case overRuntimeMax:
		if rt.MaxMemoryMB > 0 && req.MemoryMB > rt.MaxMemoryMB {
			return fmt.Sprintf("%s allows at most %d MiB per sandbox on %s", rt.Name, rt.MaxMemoryMB, n.Name)
		}
		return fmt.Sprintf("%s allows at most %d %s per sandbox on %s", rt.Name, rt.MaxCPUs, plural(rt.MaxCPUs, "CPU", "CPUs"), n.Name)
	case notEnoughMemory:
		return fmt.Sprintf("%s has %d MiB free", n.Name, free(n.MemoryMB, n.UsedMemoryMB))
	case notEnoughCPUs:
		f := freeCPUs(n.CPUs, n.UsedCPUs, overcommit)
		return fmt.Sprintf("%s has %d %s free", n.Name, f, plural(f, "CPU", "CPUs"))
	case sandboxLimit:
		return fmt.Sprintf("%s holds its maximum of %d %s", n.Name, n.MaxSandboxes, plural(n.MaxSandboxes, "sandbox", "sandboxes"))
	}
	return n.Name // unreachable: a node that fits is never explained
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
