package phlegethon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// GPULabel is the node label that reports how many GPUs a node has
// ("gpus=2"). Nodes report none today, so a create asking for a GPU is
// refused with that reason.
const GPULabel = "gpus"

// Limits on a pool's definition.
const (
	MaxPools         = 64
	MaxPoolSelectors = 16
)

// Pool is a set of nodes, chosen by their labels, that serves some heat
// levels (the seed's ResourcePool, extended to several heats).
type Pool struct {
	Name  string      `json:"name"`
	Heats []HeatLevel `json:"heats"`
	// NodeSelector: a node is in the pool when it carries every label.
	NodeSelector map[string]string `json:"node_selector"`
	// MinNodes is how many nodes the pool should have up; fewer is
	// reported (Status), not refused. MaxNodes caps the members (the first
	// by name); 0: no cap.
	MinNodes int `json:"min_nodes,omitempty"`
	MaxNodes int `json:"max_nodes,omitempty"`
	// CurrentNodes is how many up nodes the pool holds now; reports only.
	CurrentNodes int `json:"current_nodes"`
}

// Validate returns every problem of p.
func (p *Pool) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "pool %q: "+format, append([]any{p.Name}, args...)...))
	}
	if !tartarus.ValidName(p.Name) {
		bad("name: want 1-64 characters of a-z, 0-9, '-', '_', '.'")
	}
	if len(p.Heats) == 0 {
		bad("heats: name at least one of cold, warm, hot, inferno")
	}
	for i, h := range p.Heats {
		if !h.Valid() {
			bad("heats: %q: want cold, warm, hot or inferno", string(h))
		} else if slices.Contains(p.Heats[:i], h) {
			bad("heats: %s named twice", h)
		}
	}
	if len(p.NodeSelector) == 0 {
		bad("node_selector: at least one label")
	}
	if len(p.NodeSelector) > MaxPoolSelectors {
		bad("node_selector: at most %d labels", MaxPoolSelectors)
	}
	for _, k := range slices.Sorted(maps.Keys(p.NodeSelector)) {
		if !tartarus.ValidLabel(k) || !tartarus.ValidLabel(p.NodeSelector[k]) {
			bad("node_selector: %q=%q: want 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', '/'", k, p.NodeSelector[k])
		}
	}
	if p.MinNodes < 0 || p.MaxNodes < 0 {
		bad("min_nodes %d, max_nodes %d: must not be negative", p.MinNodes, p.MaxNodes)
	} else if p.MaxNodes > 0 && p.MinNodes > p.MaxNodes {
		bad("min_nodes %d is above max_nodes %d", p.MinNodes, p.MaxNodes)
	}
	return errors.Join(errs...)
}

// Serves reports whether p serves heat h.
func (p *Pool) Serves(h HeatLevel) bool { return slices.Contains(p.Heats, h) }

// Matches reports whether node n carries every label of p's selector.
func (p *Pool) Matches(n *tartarus.NodeInfo) bool {
	for k, v := range p.NodeSelector {
		if got, ok := n.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (p *Pool) clone() Pool {
	c := *p
	c.Heats = slices.Clone(p.Heats)
	c.NodeSelector = maps.Clone(p.NodeSelector)
	return c
}

func (p *Pool) selector() string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(p.NodeSelector)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%s", k, p.NodeSelector[k])
	}
	return b.String()
}

// nodeUp reports whether placement may use n: a single node reports no
// state and is up.
func nodeUp(n *tartarus.NodeInfo) bool { return n.State == "" || n.State == "up" }

// nodeGPUs is how many GPUs n reports through GPULabel.
func nodeGPUs(n *tartarus.NodeInfo) int {
	g, err := strconv.Atoi(n.Labels[GPULabel])
	if err != nil || g < 0 {
		return 0
	}
	return g
}

// Members returns the names of p's up nodes, by name, capped at MaxNodes.
func (p *Pool) Members(nodes []tartarus.NodeInfo) []string {
	var out []string
	for i := range nodes {
		if nodeUp(&nodes[i]) && p.Matches(&nodes[i]) {
			out = append(out, nodes[i].Name)
		}
	}
	slices.Sort(out)
	if p.MaxNodes > 0 && len(out) > p.MaxNodes {
		out = out[:p.MaxNodes]
	}
	return out
}

// Tier rules: which step of the fallback a tier comes from.
const (
	TierPool   = "pool"        // a pool of the heat
	TierShared = "shared"      // nodes in no pool
	TierHotter = "hotter_pool" // a pool of a hotter heat
)

// Tier is one step of the fallback: candidate nodes to try, in order.
type Tier struct {
	Rule  string   `json:"rule"`
	Pool  string   `json:"pool,omitempty"`
	Nodes []string `json:"nodes"`
}

// Route lists where a sandbox of heat h asking for gpus GPUs may run, as
// tiers to try in order (placement picks a node by capacity within the
// first tier that has room):
//
//  1. each pool that serves h, by name;
//  2. the shared nodes: up nodes no pool's selector matches (every up node
//     when there are no pools; a node matched by a pool but beyond its
//     MaxNodes is that pool's spare, not shared);
//  3. each pool of a hotter heat, coolest first. Work only borrows upward:
//     a small sandbox fits a big node and soon leaves, while hot work on a
//     cool pool would take the room cool work was promised.
//
// Down nodes, and nodes with fewer GPUs than asked, are left out. With no
// tier it returns an error that says in a sentence why: tartarus.ErrUnavailable
// when no node is registered, tartarus.ErrResourceExhausted otherwise.
// Route is pure: pools and nodes are only read.
func Route(pools []Pool, h HeatLevel, gpus int, nodes []tartarus.NodeInfo) ([]Tier, error) {
	if !h.Valid() {
		return nil, heatError(h)
	}
	if len(nodes) == 0 {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "no nodes registered")
	}
	ordered := slices.Clone(pools)
	slices.SortFunc(ordered, func(a, b Pool) int { return strings.Compare(a.Name, b.Name) })
	usable := func(n *tartarus.NodeInfo) bool { return nodeUp(n) && nodeGPUs(n) >= gpus }
	byName := make(map[string]*tartarus.NodeInfo, len(nodes))
	for i := range nodes {
		byName[nodes[i].Name] = &nodes[i]
	}
	pooled := map[string]bool{}
	members := make([][]string, len(ordered))
	for i := range ordered {
		members[i] = ordered[i].Members(nodes)
		// A node its selector matches belongs to the pool even beyond
		// MaxNodes (a spare), so it is never shared.
		for j := range nodes {
			if ordered[i].Matches(&nodes[j]) {
				pooled[nodes[j].Name] = true
			}
		}
	}
	keep := func(names []string) []string {
		var out []string
		for _, n := range names {
			if usable(byName[n]) {
				out = append(out, n)
			}
		}
		return out
	}
	var tiers []Tier
	listed := map[string]bool{}
	for i := range ordered {
		if ordered[i].Serves(h) {
			listed[ordered[i].Name] = true
			if ns := keep(members[i]); len(ns) > 0 {
				tiers = append(tiers, Tier{Rule: TierPool, Pool: ordered[i].Name, Nodes: ns})
			}
		}
	}
	var shared []string
	for i := range nodes {
		if !pooled[nodes[i].Name] && usable(&nodes[i]) {
			shared = append(shared, nodes[i].Name)
		}
	}
	slices.Sort(shared)
	if len(shared) > 0 {
		tiers = append(tiers, Tier{Rule: TierShared, Nodes: shared})
	}
	for r := h.rank() + 1; r < len(Levels); r++ {
		for i := range ordered {
			if !listed[ordered[i].Name] && ordered[i].Serves(Levels[r]) {
				listed[ordered[i].Name] = true
				if ns := keep(members[i]); len(ns) > 0 {
					tiers = append(tiers, Tier{Rule: TierHotter, Pool: ordered[i].Name, Nodes: ns})
				}
			}
		}
	}
	if len(tiers) > 0 {
		return tiers, nil
	}
	return nil, refuse(ordered, members, h, gpus, nodes)
}

// refuse words why Route found no tier.
func refuse(pools []Pool, members [][]string, h HeatLevel, gpus int, nodes []tartarus.NodeInfo) error {
	up, withGPUs := 0, 0
	for i := range nodes {
		if nodeUp(&nodes[i]) {
			up++
			if nodeGPUs(&nodes[i]) >= max(gpus, 1) {
				withGPUs++
			}
		}
	}
	total := plural(len(nodes), "node", "nodes")
	switch {
	case up == 0:
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "no node is up for %s work (%s, all down)", h, total)
	case gpus > 0 && withGPUs == 0:
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "%s work asks for %s and no node reports GPUs (label %s) (%s)", h, plural(gpus, "GPU", "GPUs"), GPULabel, total)
	}
	var why []string
	for i := range pools {
		if pools[i].Serves(h) {
			why = append(why, fmt.Sprintf("pool %s (%s) has no usable node up", pools[i].Name, pools[i].selector()))
		}
	}
	if len(why) == 0 {
		why = append(why, fmt.Sprintf("no pool serves %s", h))
	}
	why = append(why, "every up node is in a pool of a cooler heat")
	if gpus > 0 {
		why = append(why, fmt.Sprintf("only %s with %s", plural(withGPUs, "node reports", "nodes report"), plural(gpus, "GPU", "GPUs")))
	}
	return tartarus.Errorf(tartarus.ErrResourceExhausted, "no node for %s work: %s (%s)", h, strings.Join(why, ", "), total)
}

// PoolStore keeps pool definitions durable.
type PoolStore interface {
	PutPool(ctx context.Context, p *Pool) error
	DeletePool(ctx context.Context, name string) error
	ListPools(ctx context.Context) ([]Pool, error)
}

// Pools is the set of defined pools, kept in a PoolStore. It is safe for
// concurrent use.
type Pools struct {
	store PoolStore
	mu    sync.Mutex
	pools map[string]Pool
}

// NewPools loads the pools in store.
func NewPools(ctx context.Context, store PoolStore) (*Pools, error) {
	list, err := store.ListPools(ctx)
	if err != nil {
		return nil, fmt.Errorf("load pools: %w", err)
	}
	p := &Pools{store: store, pools: make(map[string]Pool, len(list))}
	for _, pool := range list {
		p.pools[pool.Name] = pool
	}
	return p, nil
}

// Reload replaces the pools with those the store holds now: servers that
// share a store (the replicas of a cluster) see each other's changes.
func (p *Pools) Reload(ctx context.Context) error {
	list, err := p.store.ListPools(ctx)
	if err != nil {
		return fmt.Errorf("load pools: %w", err)
	}
	pools := make(map[string]Pool, len(list))
	for _, pool := range list {
		pools[pool.Name] = pool
	}
	p.mu.Lock()
	p.pools = pools
	p.mu.Unlock()
	return nil
}

// Define adds pool; a pool of that name already defined is
// tartarus.ErrAlreadyExists.
func (p *Pools) Define(ctx context.Context, pool *Pool) error {
	if pool == nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "define pool: no pool")
	}
	if err := pool.Validate(); err != nil {
		return err
	}
	c := pool.clone()
	c.CurrentNodes = 0
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pools[c.Name]; ok {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "pool %s", c.Name)
	}
	if len(p.pools) >= MaxPools {
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "pool %s: at most %d pools", c.Name, MaxPools)
	}
	if err := p.store.PutPool(ctx, &c); err != nil {
		return fmt.Errorf("define pool %s: %w", c.Name, err)
	}
	p.pools[c.Name] = c
	return nil
}

// Remove deletes the pool called name.
func (p *Pools) Remove(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pools[name]; !ok {
		return tartarus.Errorf(tartarus.ErrNotFound, "pool %s", name)
	}
	if err := p.store.DeletePool(ctx, name); err != nil {
		return fmt.Errorf("remove pool %s: %w", name, err)
	}
	delete(p.pools, name)
	return nil
}

// List returns copies of the pools by name.
func (p *Pools) List() []Pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Pool, 0, len(p.pools))
	for _, pool := range p.pools {
		out = append(out, pool.clone())
	}
	slices.SortFunc(out, func(a, b Pool) int { return strings.Compare(a.Name, b.Name) })
	return out
}
