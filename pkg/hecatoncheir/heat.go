package hecatoncheir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Heat classes on this node (pkg/phlegethon, docs/heat.md): every create
// is classified; one that opts in (heat_hint, resource_class,
// max_duration_s, or the server's EnforceAll) is sized by its class; one
// that sets any heat field is checked against the node's capacity, and
// with queue_timeout_s it waits in its heat's admission queue instead of
// being refused. A sandbox with a maximum duration is ended through
// Thanatos with reason timeout when it passes. What each sandbox did (run
// time, peak CPU and memory, sampled from its runtime's stats) is recorded
// when it ends, for the classifier to learn from.

// HeatConfig configures heat classes on the node (EnableHeat).
type HeatConfig struct {
	Router phlegethon.Config
	// Store keeps the queue, the pools and the observations; nil keeps
	// them in memory (lost with the process).
	Store interface {
		phlegethon.Journal
		phlegethon.PoolStore
		phlegethon.ObservationStore
	}
	Queue phlegethon.QueueConfig
	// SampleInterval is how often running sandboxes' stats are sampled for
	// their peaks (default 2s).
	SampleInterval time.Duration
}

// heatState is the agent's heat machinery.
type heatState struct {
	router    *phlegethon.Router
	queue     *phlegethon.Queue
	deadlines *phlegethon.Deadlines
	journal   phlegethon.Journal
	enforce   bool
	sample    time.Duration

	mu      sync.Mutex
	tracked map[string]*heatRun
}

// heatRun is what is known of one running sandbox for its observation.
type heatRun struct {
	template string
	started  time.Time
	cpus     int
	memoryMB int
	peakCPU  float64 // cores
	peakMem  int64   // bytes
}

// queuedCreate is a queue entry's payload: the create as it is to be made
// once admitted.
type queuedCreate struct {
	Tenant string                 `json:"tenant"`
	Req    tartarus.CreateRequest `json:"request"`
	Heat   *tartarus.SandboxHeat  `json:"heat"`
}

// EnableHeat turns on heat classes; call it after New and before Recover
// and Run.
func (a *Agent) EnableHeat(ctx context.Context, hc HeatConfig) error {
	store := hc.Store
	if store == nil {
		store = &phlegethon.MemJournal{}
	}
	rc := hc.Router
	if rc.Observations == nil {
		rc.Observations = store
	}
	router, err := phlegethon.NewRouter(ctx, rc, store, phlegethon.NodeListerFunc(a.heatNodes))
	if err != nil {
		return fmt.Errorf("heat router: %w", err)
	}
	qc := hc.Queue
	if qc.Logger == nil {
		qc.Logger = a.cfg.Log
	}
	q, err := phlegethon.NewQueue(qc, a.cfg.Clock, store, a.admitQueued)
	if err != nil {
		return fmt.Errorf("heat queue: %w", err)
	}
	router.AttachQueue(q)
	d, err := phlegethon.NewDeadlines(a.cfg.Clock, a.endAtMaxDuration, 0, a.cfg.Log)
	if err != nil {
		return err
	}
	if hc.SampleInterval <= 0 {
		hc.SampleInterval = 2 * time.Second
	}
	a.heat = &heatState{router: router, queue: q, deadlines: d, journal: store, enforce: rc.EnforceAll,
		sample: hc.SampleInterval, tracked: map[string]*heatRun{}}
	return nil
}

// HeatRouter returns the node's heat router (its Prometheus collector,
// template hints), or nil when heat classes are off.
func (a *Agent) HeatRouter() *phlegethon.Router {
	if a.heat == nil {
		return nil
	}
	return a.heat.router
}

// heatNodes is this node as routing sees it.
func (a *Agent) heatNodes(ctx context.Context) ([]tartarus.NodeInfo, error) {
	info, err := a.Info(ctx)
	if err != nil {
		return nil, err
	}
	info.State = "up"
	return []tartarus.NodeInfo{*info}, nil
}

// heatPlan is what classification decided for one create.
type heatPlan struct {
	info  *tartarus.SandboxHeat
	heat  phlegethon.HeatLevel
	check bool // check capacity (and queue) before creating
}

// planHeat classifies req (normalized), sizes it by its class when the
// class is enforced, and routes it. Without heat classes a create that
// asks for them is refused (501).
func (a *Agent) planHeat(ctx context.Context, req *tartarus.CreateRequest) (*heatPlan, error) {
	if a.heat == nil {
		if req.HeatRequested() {
			return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "heat classes are off on this server: heat_hint, resource_class, max_duration_s, queue_timeout_s and gpus need them")
		}
		return nil, nil
	}
	sr := phlegethon.RequestOf(req)
	if err := sr.Validate(); err != nil {
		return nil, err
	}
	d, err := a.heat.router.Decide(ctx, sr)
	if err != nil {
		return nil, err
	}
	// A single node has one candidate: it is in some tier, or Decide
	// refused already.
	p := &heatPlan{heat: d.Heat, check: req.HeatRequested() || a.heat.enforce, info: d.Apply(req)}
	// The sandbox's own expiry must not come before its class's end (the
	// node's deadlines end it then, with its own reason).
	if p.info.MaxDurationS > req.TimeoutS {
		req.TimeoutS = min(p.info.MaxDurationS, tartarus.MaxTimeoutS)
	}
	return p, nil
}

// queueWaiting says whether any heat's queue holds a create.
func (h *heatState) queueWaiting() bool {
	for _, st := range h.queue.Stats() {
		if st.Depth > 0 {
			return true
		}
	}
	return false
}

// enqueue puts a create that found no room into its heat's queue and
// returns it as a queued sandbox.
func (a *Agent) enqueue(ctx context.Context, tenant string, req *tartarus.CreateRequest, rt tartarus.Runtime, p *heatPlan) (*tartarus.Sandbox, error) {
	id := tartarus.NewID("sb-")
	payload, err := json.Marshal(queuedCreate{Tenant: tenant, Req: *req, Heat: p.info})
	if err != nil {
		return nil, fmt.Errorf("queue create: %w", err)
	}
	pos, err := a.heat.queue.Enqueue(ctx, phlegethon.Entry{ID: id, Tenant: tenant, Heat: p.heat, Payload: payload},
		time.Duration(req.QueueTimeoutS)*time.Second)
	if err != nil {
		return nil, err
	}
	sb := tartarus.NewSandbox(id, tenant, req, a.cfg.Clock.Now().UTC())
	sb.Runtime, sb.Node, sb.State, sb.Heat = rt.Name(), a.cfg.Node, tartarus.StateQueued, p.info
	sb.Queue = queuePosition(pos)
	a.log.Info("create queued", "sandbox", id, "heat", p.heat, "position", pos.InHeat, "timeout_s", req.QueueTimeoutS)
	return sb, nil
}

func queuePosition(p phlegethon.Position) *tartarus.QueuePosition {
	return &tartarus.QueuePosition{Heat: string(p.Heat), Position: p.InHeat, OverallPosition: p.Overall, Depth: p.Depth}
}

// admitQueued is the queue's AdmitFunc: it reserves room for a queued
// create by recording it (creating sandboxes count against capacity) and
// boots it in the background. It is idempotent on the entry's ID.
func (a *Agent) admitQueued(ctx context.Context, e *phlegethon.Entry) error {
	if _, err := a.cfg.Store.Get(ctx, e.ID); err == nil {
		return nil // admitted before a crash
	}
	var qc queuedCreate
	if err := json.Unmarshal(e.Payload, &qc); err != nil {
		return fmt.Errorf("queued create %s: bad payload: %w", e.ID, err)
	}
	req := qc.Req
	rt, img, err := a.checkCreate(ctx, qc.Tenant, &req)
	if err != nil {
		return err
	}
	if err := a.checkCapacity(ctx, rt, req.MemoryMB, req.CPUs); err != nil {
		return err
	}
	sb := tartarus.NewSandbox(e.ID, qc.Tenant, &req, a.cfg.Clock.Now().UTC())
	sb.Runtime, sb.Node, sb.Heat = rt.Name(), a.cfg.Node, qc.Heat
	if err := a.cfg.Store.Create(ctx, sb); err != nil {
		if errors.Is(err, tartarus.ErrAlreadyExists) {
			return nil
		}
		return fmt.Errorf("record queued create %s: %w", e.ID, err)
	}
	cfg := a.vmConfig(sb, img)
	bg := context.WithoutCancel(ctx)
	go func() {
		unlock := a.lock(sb.ID)
		defer unlock()
		how := ""
		_, _ = a.bringUp(bg, rt, sb, func() error {
			var err error
			how, err = a.restoreOrBoot(bg, rt, cfg)
			return err
		}, "how", &how, "queued", a.cfg.Clock.Now().Sub(e.EnqueuedAt))
	}()
	return nil
}

// vmConfig is the runtime's configuration of sb.
func (a *Agent) vmConfig(sb *tartarus.Sandbox, img *tartarus.Image) *tartarus.VMConfig {
	cfg := &tartarus.VMConfig{ID: sb.ID, Template: sb.Template, Image: img, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Env: sb.Env,
		Network: sb.Network, StrictSeccomp: a.StrictSeccomp(sb.ID)}
	if sb.Heat != nil {
		cfg.DiskIOPS = sb.Heat.DiskIOPS
	}
	return cfg
}

// queuedSandbox shows a create the queue holds or held as a sandbox:
// queued with its position, failed with the reason its wait ended, or
// terminated when it was cancelled. It is nil when the queue never had id.
func (a *Agent) queuedSandbox(ctx context.Context, id string) *tartarus.Sandbox {
	if a.heat == nil {
		return nil
	}
	rec, err := a.heat.journal.Get(ctx, id)
	if err != nil {
		return nil
	}
	var qc queuedCreate
	if err := json.Unmarshal(rec.Payload, &qc); err != nil {
		return nil
	}
	sb := tartarus.NewSandbox(id, qc.Tenant, &qc.Req, rec.EnqueuedAt.UTC())
	sb.Runtime, sb.Node, sb.Heat = qc.Req.Runtime, a.cfg.Node, qc.Heat
	switch rec.Status {
	case phlegethon.StatusQueued:
		sb.State = tartarus.StateQueued
		if pos, err := a.heat.queue.Position(ctx, id); err == nil && pos.Status == phlegethon.StatusQueued {
			sb.Queue = queuePosition(pos)
		}
	case phlegethon.StatusCancelled:
		sb.State, sb.UpdatedAt = tartarus.StateTerminated, rec.FinishedAt.UTC()
	case phlegethon.StatusAdmitted:
		if got, err := a.cfg.Store.Get(ctx, id); err == nil {
			return got
		}
		sb.State = tartarus.StateCreating
	default:
		sb.State, sb.Error, sb.UpdatedAt = tartarus.StateFailed, string(rec.Status)+": "+rec.Reason, rec.FinishedAt.UTC()
	}
	return sb
}

// cancelQueued takes a queued create out of its queue (DELETE).
func (a *Agent) cancelQueued(ctx context.Context, id string) (*tartarus.Sandbox, bool) {
	if a.heat == nil {
		return nil, false
	}
	if err := a.heat.queue.Cancel(ctx, id, "deleted while queued"); err != nil {
		return nil, false
	}
	return a.queuedSandbox(ctx, id), true
}

// heatStarted counts a sandbox that now runs and watches its maximum
// duration from started.
func (a *Agent) heatStarted(sb *tartarus.Sandbox, started time.Time) {
	if a.heat == nil || sb.Heat == nil {
		return
	}
	h := a.heat
	h.router.Started(sb.ID, phlegethon.HeatLevel(sb.Heat.Heat))
	h.deadlines.Watch(sb.ID, started, time.Duration(sb.Heat.MaxDurationS)*time.Second)
	h.mu.Lock()
	h.tracked[sb.ID] = &heatRun{template: sb.Template, started: started, cpus: sb.CPUs, memoryMB: sb.MemoryMB}
	h.mu.Unlock()
}

// heatEnded records what sandbox id did and tells the queue that room
// was freed. It is safe to call more than once, and for any sandbox.
func (a *Agent) heatEnded(ctx context.Context, id string) {
	if a.heat == nil {
		return
	}
	h := a.heat
	h.mu.Lock()
	run := h.tracked[id]
	delete(h.tracked, id)
	h.mu.Unlock()
	h.deadlines.Forget(id)
	if run == nil {
		h.queue.CapacityFreed()
		return
	}
	now := a.cfg.Clock.Now()
	obs := &phlegethon.HeatObservation{TemplateID: run.template, ActualDuration: max(now.Sub(run.started), 0),
		PeakCPU: run.peakCPU, PeakMemory: run.peakMem, Timestamp: now.UTC()}
	if err := h.router.Ended(context.WithoutCancel(ctx), id, obs); err != nil {
		a.log.Warn("record heat observation", "sandbox", id, "err", err)
	}
}

// endAtMaxDuration is the deadlines' end function: Thanatos ends the
// sandbox with reason timeout.
func (a *Agent) endAtMaxDuration(ctx context.Context, id string) error {
	sb, err := a.cfg.Store.Get(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if sb.State.Final() || sb.State == tartarus.StateTerminating {
		return nil
	}
	a.log.Info("sandbox reached its max duration", "sandbox", id)
	_, err = a.Terminate(ctx, id, &tartarus.ShutdownOptions{Reason: tartarus.ReasonTimeout})
	return err
}

// runHeat restores the queue, watches the sandboxes that run again, and
// runs the queue, the deadlines and the stats sampler until ctx ends.
func (a *Agent) runHeat(ctx context.Context, wg *sync.WaitGroup) {
	h := a.heat
	if n, err := h.queue.Restore(ctx); err != nil {
		a.log.Error("restore admission queue", "err", err)
	} else if n > 0 {
		a.log.Info("restored queued creates", "count", n)
	}
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node, States: tartarus.LiveStates()})
	if err != nil {
		a.log.Error("watch sandboxes' max durations", "err", err)
	}
	for _, sb := range live {
		// After a restart the run is counted from its creation.
		a.heatStarted(sb, sb.CreatedAt)
	}
	wg.Go(func() { _ = h.queue.Run(ctx) })
	wg.Go(func() { _ = h.deadlines.Run(ctx) })
	wg.Go(func() {
		t := a.cfg.Clock.NewTicker(h.sample)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				a.sampleHeat(ctx)
			}
		}
	})
}

// sampleHeat keeps each tracked sandbox's peak CPU and memory from its
// runtime's stats, and ends the tracking of those that are gone. The
// stats come from the guest: out-of-range values are clamped to what the
// sandbox was given.
func (a *Agent) sampleHeat(ctx context.Context) {
	h := a.heat
	h.mu.Lock()
	ids := make([]string, 0, len(h.tracked))
	for id := range h.tracked {
		ids = append(ids, id)
	}
	h.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		sb, err := a.cfg.Store.Get(ctx, id)
		if errors.Is(err, tartarus.ErrNotFound) || err == nil && sb.State.Final() {
			a.heatEnded(ctx, id)
			continue
		}
		if err != nil || sb.State != tartarus.StateRunning {
			continue
		}
		rt, err := a.runtime(sb.Runtime)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := rt.Stats(sctx, id)
		cancel()
		if err != nil || st == nil {
			continue
		}
		h.mu.Lock()
		if run := h.tracked[id]; run != nil {
			cpu, mem := clampStats(st, run.cpus, run.memoryMB)
			run.peakCPU, run.peakMem = max(run.peakCPU, cpu), max(run.peakMem, mem)
		}
		h.mu.Unlock()
	}
}

// clampStats turns a guest's stats into cores and bytes within what the
// sandbox was given.
func clampStats(st *tartarus.Stats, cpus, memoryMB int) (cores float64, bytes int64) {
	pct := st.CPUPercent
	if math.IsNaN(pct) || pct < 0 {
		pct = 0
	}
	pct = min(pct, 100)
	mem := min(max(st.MemoryUsedMB, 0), memoryMB)
	return pct / 100 * float64(max(cpus, 1)), int64(mem) << 20
}

// HeatMetrics reports running sandboxes and admission queues by heat.
func (a *Agent) HeatMetrics(ctx context.Context) (*api.HeatMetrics, error) {
	if err := a.heatOn(); err != nil {
		return nil, err
	}
	m, err := a.heat.router.GetHeatMetrics(ctx)
	if err != nil {
		return nil, err
	}
	out := &api.HeatMetrics{TotalSandboxes: m.TotalSandboxes, ByHeat: map[string]int{}, QueueDepthByHeat: map[string]int{},
		AvgWaitSByHeat: map[string]float64{}, P99WaitSByHeat: map[string]float64{}}
	t, _ := a.heat.queue.Timeout(0)
	out.DefaultQueueWaitS = int(t / time.Second)
	for _, h := range phlegethon.Levels {
		out.ByHeat[string(h)] = m.ByHeat[h]
		out.QueueDepthByHeat[string(h)] = m.QueueDepthByHeat[h]
		out.AvgWaitSByHeat[string(h)] = m.AvgWaitByHeat[h].Seconds()
		out.P99WaitSByHeat[string(h)] = m.P99WaitByHeat[h].Seconds()
	}
	return out, nil
}

// ExplainHeat says how a create of template would be classified now.
func (a *Agent) ExplainHeat(ctx context.Context, template string) (*tartarus.SandboxHeat, error) {
	if err := a.heatOn(); err != nil {
		return nil, err
	}
	if !tartarus.ValidName(template) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template %q: want 1-64 characters of a-z, 0-9, '-', '_', '.'", template)
	}
	e, err := a.heat.router.Classifier().ExplainTemplate(template)
	if err != nil {
		return nil, err
	}
	return SandboxHeatOf(e), nil
}

// HeatPools lists the pools with the nodes they hold now.
func (a *Agent) HeatPools(ctx context.Context) ([]api.Pool, error) {
	if err := a.heatOn(); err != nil {
		return nil, err
	}
	pools, err := a.heat.router.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Pool, 0, len(pools))
	for _, p := range pools {
		out = append(out, APIPool(&p))
	}
	return out, nil
}

// DefineHeatPool creates or replaces a pool.
func (a *Agent) DefineHeatPool(ctx context.Context, in *api.Pool) (*api.Pool, error) {
	if err := a.heatOn(); err != nil {
		return nil, err
	}
	p := &phlegethon.Pool{Name: in.Name, NodeSelector: in.NodeSelector, MinNodes: in.MinNodes, MaxNodes: in.MaxNodes}
	for _, h := range in.Heats {
		p.Heats = append(p.Heats, phlegethon.HeatLevel(h))
	}
	if err := a.heat.router.DefinePool(ctx, p); err != nil {
		return nil, err
	}
	pools, err := a.HeatPools(ctx)
	if err != nil {
		return nil, err
	}
	for i := range pools {
		if pools[i].Name == in.Name {
			return &pools[i], nil
		}
	}
	out := APIPool(p)
	return &out, nil
}

// RemoveHeatPool deletes a pool.
func (a *Agent) RemoveHeatPool(ctx context.Context, name string) error {
	if err := a.heatOn(); err != nil {
		return err
	}
	return a.heat.router.RemovePool(ctx, name)
}

// HeatClasses lists the resource classes.
func (a *Agent) HeatClasses(ctx context.Context) ([]api.ResourceClass, error) {
	if err := a.heatOn(); err != nil {
		return nil, err
	}
	return APIClasses(a.heat.router.Classes()), nil
}

// APIClasses are the resource classes as the API shows them (a cluster
// replica's too).
func APIClasses(cs *phlegethon.Classes) []api.ResourceClass {
	var out []api.ResourceClass
	for _, c := range cs.List() {
		def := cs.ForHeat(c.Heat)
		out = append(out, api.ResourceClass{Name: c.Name, Heat: string(c.Heat), CPUCores: c.CPUCores, MemoryMB: c.MemoryMB,
			GPUCount: c.GPUCount, MaxDurationS: int(c.MaxDuration / time.Second), NetworkMbps: c.NetworkBurst,
			DiskIOPS: c.DiskIOPS, Default: def != nil && def.Name == c.Name})
	}
	return out
}

// SandboxHeatOf is a classification's explanation as a sandbox shows it.
func SandboxHeatOf(e phlegethon.Explanation) *tartarus.SandboxHeat {
	return &tartarus.SandboxHeat{Heat: string(e.Heat), Class: e.Class, Rule: string(e.Rule), RaisedFrom: string(e.RaisedFrom), Reason: e.Reason}
}

// APIPool is a pool as the API shows it (a cluster replica's too).
func APIPool(p *phlegethon.Pool) api.Pool {
	out := api.Pool{Name: p.Name, NodeSelector: p.NodeSelector, MinNodes: p.MinNodes, MaxNodes: p.MaxNodes, CurrentNodes: p.CurrentNodes}
	for _, h := range p.Heats {
		out.Heats = append(out.Heats, string(h))
	}
	if out.NodeSelector == nil {
		out.NodeSelector = map[string]string{}
	}
	return out
}

func (a *Agent) heatOn() error {
	if a.heat == nil {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "heat classes are off on this server")
	}
	return nil
}
