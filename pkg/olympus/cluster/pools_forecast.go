package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// poolsLease is the advisory lock key of the replica that sizes the
// cluster's warm pools.
const poolsLease = 0x706f6f6c73 // "pools"

// ForecastPools are the warm pools of a cluster's agents as Persephone
// sizes them (persephonesrv.Pools with its Leader and PoolReader sides):
// one replica at a time, the one holding a Postgres advisory lock, takes
// each template's target for the whole cluster, splits it over the up
// agents that have the template (persephone.SplitPool: by free room,
// sticking to the previous split) and sends each agent its share as a
// pool_targets command when it differs from what the agent reports it
// fills to. Creates prefer an agent holding a warm sandbox of the
// template (placeWarmFirst).
type ForecastPools struct {
	c *Cluster

	mu      sync.Mutex
	lease   *store.Lease
	split   map[string]map[string]int // template → node → share, as sent last
	pending map[string]string         // node → its pool_targets command not yet done
	ready   map[string]int            // template → ready sandboxes, as read last
	refill  persephone.Refill         // the agents' refill rate, as read last
	// launched are the agents' launch counts (node → template → creates
	// since the agent started) at each sizing over the recent window,
	// oldest first.
	launched []launchCounts
}

type launchCounts struct {
	at     time.Time
	counts map[string]map[string]int
}

// recentWindow is how far back an agent's own launches count when its
// share of a shrinking pool is chosen (persephone.PoolConfig's default
// RecentWindow).
const recentWindow = 30 * time.Minute

// recentLaunches notes the agents' launch counts now and returns each
// agent's launches per template since the oldest note within
// recentWindow (a count that fell is an agent that restarted: all of it
// is recent).
func (p *ForecastPools) recentLaunches(statuses map[string]*wire.NodeStatus) map[string]map[string]int {
	now := p.c.cfg.Clock.Now()
	cur := map[string]map[string]int{}
	for node, st := range statuses {
		cur[node] = map[string]int{}
		for tpl, byHow := range st.Creates {
			for how, k := range byHow {
				if how != "failed" {
					cur[node][tpl] += k
				}
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The base is the newest note at least recentWindow old, or the
	// oldest there is.
	for len(p.launched) > 1 && now.Sub(p.launched[1].at) >= recentWindow {
		p.launched = p.launched[1:]
	}
	base := map[string]map[string]int{}
	if len(p.launched) > 0 {
		base = p.launched[0].counts
	}
	p.launched = append(p.launched, launchCounts{at: now, counts: cur})
	out := map[string]map[string]int{}
	for node, byTpl := range cur {
		out[node] = map[string]int{}
		for tpl, k := range byTpl {
			d := k - base[node][tpl]
			if d < 0 {
				d = k
			}
			out[node][tpl] = d
		}
	}
	return out
}

// ForecastPools returns the cluster's side of forecast-sized warm pools.
func (c *Cluster) ForecastPools() *ForecastPools {
	return &ForecastPools{c: c, split: map[string]map[string]int{}, pending: map[string]string{}}
}

// Lead reports whether this replica sizes the pools now: it holds the
// lease, or takes it because no replica does. A lease whose database
// session stopped answering is given up.
func (p *ForecastPools) Lead(ctx context.Context) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lease != nil {
		if err := p.lease.Check(ctx); err == nil {
			return true, nil
		}
		p.lease.Release(context.WithoutCancel(ctx))
		p.lease = nil
		p.c.log.Warn("this replica no longer sizes the warm pools: lost the database session holding the lease")
	}
	lease, err := p.c.st.TryLease(ctx, poolsLease)
	if err != nil {
		return false, dbErr(err)
	}
	if lease == nil {
		return false, nil
	}
	p.lease = lease
	p.c.log.Info("this replica sizes the agents' warm pools")
	return true, nil
}

// Close gives up the lead, if held.
func (p *ForecastPools) Close(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lease != nil {
		p.lease.Release(ctx)
		p.lease = nil
	}
}

// upNodes lists the nodes that take new sandboxes.
func (p *ForecastPools) upNodes(ctx context.Context) ([]*store.NodeRecord, error) {
	all, err := p.c.st.Nodes(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	return slices.DeleteFunc(all, func(n *store.NodeRecord) bool { return n.State != store.NodeUp || n.Draining }), nil
}

// warmKey is a wire.NodeStatus.Warm key taken apart (hecatoncheir.PoolKey).
type warmKey struct {
	runtime, template string
	memoryMB          int
}

func parseWarmKey(k string) (warmKey, bool) {
	parts := strings.Split(k, "/")
	if len(parts) != 4 {
		return warmKey{}, false
	}
	mem, err := strconv.Atoi(parts[2])
	if err != nil || mem < 0 {
		return warmKey{}, false
	}
	return warmKey{runtime: parts[0], template: parts[1], memoryMB: mem}, true
}

// readyOf counts a node's ready warm sandboxes by template, and the memory
// they hold.
func readyOf(st *wire.NodeStatus) (map[string]int, int) {
	out := map[string]int{}
	mem := 0
	for k, ids := range st.Warm {
		wk, ok := parseWarmKey(k)
		if !ok {
			continue
		}
		out[wk.template] += len(ids)
		mem += wk.memoryMB * len(ids)
	}
	return out, mem
}

// ReadyPools sums the ready warm sandboxes of each template over the up
// agents, as their last heartbeats say.
func (p *ForecastPools) ReadyPools(ctx context.Context) (map[string]int, error) {
	nodes, err := p.upNodes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	var times []time.Duration
	var refill persephone.Refill
	for _, n := range nodes {
		st := p.c.status(n)
		r, _ := readyOf(st)
		for tpl, k := range r {
			out[tpl] += k
		}
		if st.RefillTime > 0 {
			times = append(times, st.RefillTime)
		}
		refill.Parallel += max(1, st.RefillParallel)
	}
	if len(times) > 0 {
		slices.Sort(times)
		refill.Time = times[len(times)/2]
	}
	p.mu.Lock()
	p.ready, p.refill = out, refill
	p.mu.Unlock()
	return maps.Clone(out), nil
}

// RefillRate is the cluster's refill rate as ReadyPools read it last
// (persephonesrv.RefillMeter): the median of the agents' typical refill
// times (0 before any agent made one), and the sum of the refills they
// make at once, since a template's pool is spread over all of them.
func (p *ForecastPools) RefillRate() (time.Duration, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refill.Time, p.refill.Parallel
}

// TemplatePoolSizes is ReadyPools as read last (persephonesrv reads it
// through ReadyPools).
func (p *ForecastPools) TemplatePoolSizes() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.ready)
}

// SetPoolTargets splits each template's target for the cluster over the
// up agents that have the template and sends every agent whose share
// changed its new targets. Room is counted in sandboxes of the default
// shape (the shape pools are kept at): the memory the agent has free,
// its own ready warm sandboxes counted as free, and what earlier
// templates' shares (in name order) took of it.
func (p *ForecastPools) SetPoolTargets(ctx context.Context, targets map[string]int) error {
	return p.setPools(ctx, targets, nil)
}

// SetPoolPlan is SetPoolTargets with each target's node labels
// (persephonesrv.PoolPlanner): a template whose target names labels is
// split only over the agents carrying every one of them.
func (p *ForecastPools) SetPoolPlan(ctx context.Context, ts []persephone.PoolTarget) error {
	targets := make(map[string]int, len(ts))
	labels := map[string]map[string]string{}
	for _, t := range ts {
		targets[t.Template] = t.Size
		if len(t.NodeLabels) > 0 {
			labels[t.Template] = t.NodeLabels
		}
	}
	return p.setPools(ctx, targets, labels)
}

func (p *ForecastPools) setPools(ctx context.Context, targets map[string]int, labels map[string]map[string]string) error {
	for tpl, n := range targets {
		if n < 0 {
			return tartarus.Errorf(tartarus.ErrInvalid, "warm pool target of %s: %d is negative", tpl, n)
		}
	}
	nodes, err := p.upNodes(ctx)
	if err != nil {
		return err
	}
	room := map[string]int{}
	statuses := map[string]*wire.NodeStatus{}
	for _, n := range nodes {
		st := p.c.status(n)
		statuses[n.Name] = st
		_, poolMem := readyOf(st)
		room[n.Name] = max(0, (st.MemoryMB-n.UsedMemoryMB+poolMem)/tartarus.DefaultMemoryMB)
	}
	// The previous split is the one this replica sent last or, for a
	// template it has not split yet (it just took the lead), what the
	// agents report filling to: a new leader keeps the old one's split.
	p.mu.Lock()
	sent := p.split
	p.mu.Unlock()
	prev := maps.Clone(sent)
	for _, n := range nodes {
		for tpl, k := range statuses[n.Name].PoolTargets {
			if _, ok := sent[tpl]; ok {
				continue
			}
			if prev[tpl] == nil {
				prev[tpl] = map[string]int{}
			}
			prev[tpl][n.Name] = k
		}
	}
	recent := p.recentLaunches(statuses)
	split := map[string]map[string]int{}
	perNode := map[string]map[string]int{}
	for _, n := range nodes {
		perNode[n.Name] = map[string]int{}
	}
	for _, tpl := range slices.Sorted(maps.Keys(targets)) {
		var cands []persephone.NodeRoom
		for _, n := range nodes {
			st := statuses[n.Name]
			if slices.Contains(st.Templates, tpl) && hasLabels(st.Labels, labels[tpl]) {
				cands = append(cands, persephone.NodeRoom{Name: n.Name, Room: room[n.Name], Recent: recent[n.Name][tpl]})
			}
		}
		s := persephone.SplitPool(targets[tpl], prev[tpl], cands)
		split[tpl] = s
		for node, k := range s {
			perNode[node][tpl] = k
			room[node] -= k
		}
		if got := sum(s); got < targets[tpl] {
			p.c.log.Warn("warm pool target does not fit the agents", "template", tpl, "target", targets[tpl], "placed", got)
		}
	}
	p.mu.Lock()
	p.split = split
	p.mu.Unlock()
	var errs []error
	for _, n := range nodes {
		want := perNode[n.Name]
		if have := statuses[n.Name].PoolTargets; have != nil && maps.Equal(have, want) {
			continue
		}
		if err := p.send(ctx, n.Name, want); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// hasLabels says whether have carries every label of want.
func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func sum(m map[string]int) int {
	t := 0
	for _, v := range m {
		t += v
	}
	return t
}

// send queues a pool_targets command for node, unless its previous one is
// not done yet (the agent then reports those targets soon, and the next
// sizing compares again).
func (p *ForecastPools) send(ctx context.Context, node string, targets map[string]int) error {
	p.mu.Lock()
	id := p.pending[node]
	p.mu.Unlock()
	if id != "" {
		rec, err := p.c.st.Command(ctx, id)
		if err == nil && !rec.Done {
			return nil
		}
	}
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Node: node, Kind: wire.KindPoolTargets,
		CreatedAt: p.c.cfg.Clock.Now().UTC(), PoolTargets: targets}
	rec, err := commandRecord(cmd)
	if err != nil {
		return err
	}
	if err := p.c.st.AddNodeCommand(ctx, rec); err != nil {
		return fmt.Errorf("pool targets for node %s: %w", node, dbErr(err))
	}
	p.mu.Lock()
	p.pending[node] = cmd.ID
	p.mu.Unlock()
	p.c.publish(ctx, Event{Kind: EventCommand, Node: node})
	p.c.log.Info("warm pool targets sent", "node", node, "targets", targets)
	return nil
}

// NodePools lists each up agent's share of each template's pool: the
// target it reports filling to, the sandboxes ready, and its creates by
// whether they found a warm sandbox. Any replica answers it, from the
// agents' heartbeats.
func (p *ForecastPools) NodePools(ctx context.Context) ([]persephone.NodePool, error) {
	nodes, err := p.upNodes(ctx)
	if err != nil {
		return nil, err
	}
	var out []persephone.NodePool
	for _, n := range nodes {
		st := p.c.status(n)
		ready, _ := readyOf(st)
		tpls := map[string]bool{}
		for _, m := range []map[string]int{ready, st.PoolTargets} {
			for tpl := range m {
				tpls[tpl] = true
			}
		}
		for tpl := range st.Creates {
			tpls[tpl] = true
		}
		for _, tpl := range slices.Sorted(maps.Keys(tpls)) {
			np := persephone.NodePool{Node: n.Name, Template: tpl, Target: st.PoolTargets[tpl], Ready: ready[tpl]}
			for how, k := range st.Creates[tpl] {
				switch how {
				case "warm pool":
					np.WarmCreates += k
				case "failed":
				default:
					np.ColdCreates += k
				}
			}
			out = append(out, np)
		}
	}
	slices.SortFunc(out, func(a, b persephone.NodePool) int {
		if c := strings.Compare(a.Template, b.Template); c != 0 {
			return c
		}
		return strings.Compare(a.Node, b.Node)
	})
	return out, nil
}

// placeWarmFirst places a sandbox of req's shape on an agent holding a
// warm sandbox of its template when one has room (the sandbox then takes
// that warm one's id), else wherever placeTiers puts it. Classes that
// throttle disk never take a warm one (the pool's VMs are not throttled),
// nor do sandboxes with a network (pooled VMs have none; the agent would
// not claim it).
func (c *Cluster) placeWarmFirst(nodes []*store.NodeRecord, req *tartarus.CreateRequest, plan *heatPlan, taken func(string) bool) (node, rt, warmID string, err error) {
	if plan != nil && plan.info.DiskIOPS != 0 || req.Network != nil {
		node, rt, err = c.placeTiers(nodes, req, plan)
		return node, rt, "", err
	}
	var warm []*store.NodeRecord
	for _, n := range nodes {
		st := c.status(n)
		r := req.Runtime
		if r == "" && len(st.Runtimes) > 0 {
			r = st.Runtimes[0].Runtime
		}
		if c.warm([]*store.NodeRecord{n}, n.Name, hecatoncheir.PoolKey(r, req.Template, req.MemoryMB, req.CPUs), taken) != "" {
			warm = append(warm, n)
		}
	}
	if len(warm) > 0 && len(warm) < len(nodes) {
		if node, rt, err = c.placeTiers(warm, req, plan); err == nil {
			return node, rt, c.warm(warm, node, hecatoncheir.PoolKey(rt, req.Template, req.MemoryMB, req.CPUs), taken), nil
		}
	}
	if node, rt, err = c.placeTiers(nodes, req, plan); err != nil {
		return "", "", "", err
	}
	return node, rt, c.warm(nodes, node, hecatoncheir.PoolKey(rt, req.Template, req.MemoryMB, req.CPUs), taken), nil
}

// NodeCreateCounts returns each up agent's creates since it started, by
// template and by how they were served, as its last heartbeat says.
func (c *Cluster) NodeCreateCounts(ctx context.Context) (map[string]map[string]map[string]int, error) {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	out := map[string]map[string]map[string]int{}
	for _, n := range nodes {
		if n.State == store.NodeUp {
			out[n.Name] = c.status(n).Creates
		}
	}
	return out, nil
}
