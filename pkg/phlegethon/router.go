package phlegethon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// NodeLister gives the nodes placement sees now (the single node, or the
// cluster's nodes with their labels and state).
type NodeLister interface {
	Nodes(ctx context.Context) ([]tartarus.NodeInfo, error)
}

// NodeListerFunc adapts a function to NodeLister.
type NodeListerFunc func(ctx context.Context) ([]tartarus.NodeInfo, error)

// Nodes implements NodeLister.
func (f NodeListerFunc) Nodes(ctx context.Context) ([]tartarus.NodeInfo, error) { return f(ctx) }

// Config configures a Router.
type Config struct {
	// Classes: nil is DefaultClasses.
	Classes *Classes
	Learn   LearnConfig
	// EnforceAll applies classes to every create; otherwise only to those
	// that opted in (SandboxRequest.Opted), so a create that asks for no
	// heat keeps its own size and lifetime.
	EnforceAll bool
	// Observations keeps what the classifier learns across restarts; nil:
	// learning lives in memory only.
	Observations ObservationStore
}

// Validate returns every problem of c.
func (c *Config) Validate() error { return errors.Join(c.Learn.Validate()) }

// Router is the HeatRouter: it classifies, sizes and routes creates, keeps
// the pools, counts running sandboxes by heat and learns from their ends.
type Router struct {
	cfg        Config
	classes    *Classes
	classifier *Classifier
	pools      *Pools
	nodes      NodeLister
	metrics    *Collector

	mu      sync.Mutex
	queue   *Queue
	running map[string]HeatLevel
}

var _ HeatRouter = (*Router)(nil)

// NewRouter returns a router whose pools live in store; nodes may be nil
// (then routing lists no tiers and pools report no members).
func NewRouter(ctx context.Context, cfg Config, store PoolStore, nodes NodeLister) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Classes == nil {
		cfg.Classes = MustDefaultClasses()
	}
	cl, err := NewClassifier(cfg.Classes, cfg.Learn)
	if err != nil {
		return nil, err
	}
	pools, err := NewPools(ctx, store)
	if err != nil {
		return nil, err
	}
	if cfg.Observations != nil {
		obs, err := cfg.Observations.RecentObservations(ctx, cl.learn.Window)
		if err != nil {
			return nil, fmt.Errorf("load heat observations: %w", err)
		}
		for _, o := range obs {
			_ = cl.Observe(o) // a stored run that no longer checks out is skipped
		}
	}
	r := &Router{cfg: cfg, classes: cfg.Classes, classifier: cl, pools: pools, nodes: nodes, running: map[string]HeatLevel{}}
	r.metrics = newCollector(r.snapshot)
	return r, nil
}

// AttachQueue makes q's depths and waits part of the metrics, and q's
// outcomes part of the Prometheus counters.
func (r *Router) AttachQueue(q *Queue) {
	q.mu.Lock()
	q.metrics = r.metrics
	q.mu.Unlock()
	r.mu.Lock()
	r.queue = q
	r.mu.Unlock()
}

// Classifier returns the router's classifier (template hints, history).
func (r *Router) Classifier() *Classifier { return r.classifier }

// Classes returns the router's resource classes.
func (r *Router) Classes() *Classes { return r.classes }

// Collector returns the Prometheus collector of the heat metrics.
func (r *Router) Collector() prometheus.Collector { return r.metrics }

// ClassifyHeat implements HeatRouter.
func (r *Router) ClassifyHeat(_ context.Context, req *SandboxRequest) (HeatLevel, error) {
	e, err := r.classifier.Classify(req)
	if err != nil {
		return "", err
	}
	return e.Heat, nil
}

// Explain classifies req and says why.
func (r *Router) Explain(req *SandboxRequest) (Explanation, error) { return r.classifier.Classify(req) }

// GetResourceClass implements HeatRouter: heat's default class, or nil.
func (r *Router) GetResourceClass(h HeatLevel) *ResourceClass { return r.classes.ForHeat(h) }

// Decision is what the control plane does with one create.
type Decision struct {
	Explanation
	// Enforced reports whether Limits come from the class (the create
	// opted in, or Config.EnforceAll). When false, Limits carry only the
	// create's own CPUs and memory (0: the server's defaults) and no heat
	// limit.
	Enforced bool   `json:"enforced"`
	Limits   Limits `json:"limits"`
	// Tiers are the candidate nodes to try in order (Route).
	Tiers []Tier `json:"tiers,omitempty"`
}

// Decide classifies req, sizes it by its class and routes it. Errors wrap
// tartarus.ErrInvalid (a request no class holds), or Route's errors (no
// node could take this heat at all, e.g. a GPU no node reports).
func (r *Router) Decide(ctx context.Context, req *SandboxRequest) (*Decision, error) {
	e, err := r.classifier.Classify(req)
	if err != nil {
		return nil, err
	}
	r.metrics.classified(e)
	cl, err := r.classes.Named(e.Class)
	if err != nil {
		return nil, err
	}
	d := &Decision{Explanation: e, Enforced: r.cfg.EnforceAll || req.Opted()}
	if d.Enforced {
		if d.Limits, err = Apply(cl, req); err != nil {
			return nil, err
		}
	} else {
		d.Limits = Limits{Class: cl.Name, CPUs: req.CPUCores, MemoryMB: req.MemoryMB, GPUs: req.GPUCount}
	}
	if r.nodes == nil {
		return d, nil
	}
	nodes, err := r.nodes.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("route %s create: %w", e.Heat, err)
	}
	if d.Tiers, err = Route(r.pools.List(), e.Heat, d.Limits.GPUs, nodes); err != nil {
		return nil, err
	}
	return d, nil
}

// PoolAssignment is where work of one heat may go: its class, the pools
// that serve it and the candidate tiers (the seed's PoolAssignment names one
// node; choosing it by capacity stays with placement).
type PoolAssignment struct {
	Heat          HeatLevel      `json:"heat"`
	ResourceClass *ResourceClass `json:"resource_class"`
	Pools         []Pool         `json:"pools"`
	Tiers         []Tier         `json:"tiers"`
}

// RouteToPool implements HeatRouter.
func (r *Router) RouteToPool(ctx context.Context, h HeatLevel) (*PoolAssignment, error) {
	if !h.Valid() {
		return nil, heatError(h)
	}
	pools, err := r.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	a := &PoolAssignment{Heat: h, ResourceClass: r.classes.ForHeat(h)}
	for _, p := range pools {
		if p.Serves(h) {
			a.Pools = append(a.Pools, p)
		}
	}
	if r.nodes == nil {
		return a, nil
	}
	nodes, err := r.nodes.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", h, err)
	}
	if a.Tiers, err = Route(pools, h, 0, nodes); err != nil {
		return nil, err
	}
	return a, nil
}

// DefinePool implements HeatRouter.
func (r *Router) DefinePool(ctx context.Context, p *Pool) error { return r.pools.Define(ctx, p) }

// RemovePool deletes the pool called name.
func (r *Router) RemovePool(ctx context.Context, name string) error { return r.pools.Remove(ctx, name) }

// ReloadPools reads the pools again from the store (see Pools.Reload).
func (r *Router) ReloadPools(ctx context.Context) error { return r.pools.Reload(ctx) }

// ListPools returns the pools by name with their CurrentNodes counted.
func (r *Router) ListPools(ctx context.Context) ([]Pool, error) {
	pools := r.pools.List()
	if r.nodes == nil {
		return pools, nil
	}
	nodes, err := r.nodes.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	for i := range pools {
		pools[i].CurrentNodes = len(pools[i].Members(nodes))
	}
	return pools, nil
}

// Started counts sandbox id as running at heat h.
func (r *Router) Started(id string, h HeatLevel) {
	if !h.Valid() {
		return
	}
	r.mu.Lock()
	r.running[id] = h
	r.mu.Unlock()
}

// Ended forgets sandbox id and learns from what it did (obs may be nil when
// the guest reported nothing), keeping the run in Config.Observations. A bad
// observation is refused and changes nothing but the running count.
func (r *Router) Ended(ctx context.Context, id string, obs *HeatObservation) error {
	r.mu.Lock()
	delete(r.running, id)
	q := r.queue
	r.mu.Unlock()
	if q != nil {
		q.CapacityFreed()
	}
	if obs == nil {
		return nil
	}
	if err := r.classifier.Observe(*obs); err != nil {
		return err
	}
	if r.cfg.Observations != nil {
		if err := r.cfg.Observations.PutObservation(ctx, obs); err != nil {
			return fmt.Errorf("keep observation of %s: %w", obs.TemplateID, err)
		}
	}
	return nil
}

// GetHeatMetrics implements HeatRouter.
func (r *Router) GetHeatMetrics(context.Context) (*HeatMetrics, error) { return r.snapshot(), nil }

func (r *Router) snapshot() *HeatMetrics {
	m := &HeatMetrics{ByHeat: map[HeatLevel]int{}, QueueDepthByHeat: map[HeatLevel]int{},
		AvgWaitByHeat: map[HeatLevel]time.Duration{}, P99WaitByHeat: map[HeatLevel]time.Duration{}}
	r.mu.Lock()
	for _, h := range Levels {
		m.ByHeat[h] = 0
	}
	for _, h := range r.running {
		m.ByHeat[h]++
		m.TotalSandboxes++
	}
	q := r.queue
	r.mu.Unlock()
	for _, h := range Levels {
		m.QueueDepthByHeat[h], m.AvgWaitByHeat[h], m.P99WaitByHeat[h] = 0, 0, 0
	}
	if q != nil {
		for h, s := range q.Stats() {
			m.QueueDepthByHeat[h], m.AvgWaitByHeat[h], m.P99WaitByHeat[h] = s.Depth, s.AvgWait, s.P99Wait
		}
	}
	return m
}
