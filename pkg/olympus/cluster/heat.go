package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Heat classes on a cluster (docs/heat.md, docs/cluster.md): every replica
// classifies its creates with the same classes and the pools kept in
// Postgres, sizes those that opt in by their class, and places them on the
// tiers of nodes their heat routes to. A create that finds no room and may
// wait (queue_timeout_s) is written to the admission queue's table; the one
// replica holding the queue's lease (a Postgres session advisory lock)
// runs the queue — weighted fair share across heats — and admits entries
// by placing them as any create is placed, so two replicas never both
// admit. When that replica dies, the lock goes with its session and
// another replica takes the queue over from the table.
//
// The agents need no heat classes of their own: a create reaches its node
// sized by its class, with its maximum duration as its timeout, so the
// node's expiry ends it through its Thanatos with reason timeout, and with
// its class's bandwidth as its network's limits (tc on the node).

// HeatConfig turns on heat classes on a replica.
type HeatConfig struct {
	// Router holds the classes (default: ember, flame, blaze, inferno),
	// the learning settings and EnforceAll. Its PoolStore and observations
	// are the Postgres tables.
	Router phlegethon.Config
	// Queue configures the admission queue (DefaultTimeout is what a
	// create that may wait waits when it names no time).
	Queue phlegethon.QueueConfig
}

// queueLease is the advisory lock key of the cluster's admission queue.
const queueLease = 0x6865617471 // "heatq"

var _ olympus.HeatManager = (*Cluster)(nil)

// clusterHeat is a replica's heat machinery.
type clusterHeat struct {
	router  *phlegethon.Router
	journal *phlegethon.SQLJournal
	qcfg    phlegethon.QueueConfig
	enforce bool

	mu    sync.Mutex
	lease *store.Lease
	queue *phlegethon.Queue // while this replica holds the lease
	stop  context.CancelFunc
	kick  chan struct{}
}

// queuedCreate is a queue entry's payload: the create as it is to be
// placed once admitted (sized already).
type queuedCreate struct {
	Tenant string                 `json:"tenant"`
	Req    tartarus.CreateRequest `json:"request"`
	Heat   *tartarus.SandboxHeat  `json:"heat"`
}

// EnableHeat turns on heat classes; call it after New and before Run.
func (c *Cluster) EnableHeat(ctx context.Context, hc HeatConfig) error {
	j := c.st.Heat()
	rc := hc.Router
	if rc.Observations == nil {
		rc.Observations = j
	}
	router, err := phlegethon.NewRouter(ctx, rc, j, phlegethon.NodeListerFunc(c.heatNodes))
	if err != nil {
		return fmt.Errorf("heat router: %w", err)
	}
	qc := hc.Queue
	if qc.Logger == nil {
		qc.Logger = c.cfg.Log
	}
	// A queue built only to check the configuration and fill its defaults.
	if _, err := phlegethon.NewQueue(qc, c.cfg.Clock, &phlegethon.MemJournal{}, func(context.Context, *phlegethon.Entry) error { return nil }); err != nil {
		return fmt.Errorf("heat queue: %w", err)
	}
	if qc.DefaultTimeout <= 0 {
		qc.DefaultTimeout = phlegethon.DefaultQueueTimeout
	}
	if qc.MaxTimeout <= 0 {
		qc.MaxTimeout = phlegethon.MaxQueueTimeout
	}
	c.heat = &clusterHeat{router: router, journal: j, qcfg: qc, enforce: rc.EnforceAll, kick: make(chan struct{}, 1)}
	return nil
}

// HeatRouter returns the replica's heat router (its Prometheus collector),
// or nil when heat classes are off.
func (c *Cluster) HeatRouter() *phlegethon.Router {
	if c.heat == nil {
		return nil
	}
	return c.heat.router
}

// heatNodes is the cluster's nodes as routing sees them.
func (c *Cluster) heatNodes(ctx context.Context) ([]tartarus.NodeInfo, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]tartarus.NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, *n)
	}
	return out, nil
}

// heatPlan is what classification decided for one create.
type heatPlan struct {
	info  *tartarus.SandboxHeat
	heat  phlegethon.HeatLevel
	tiers []phlegethon.Tier
	wait  time.Duration // how long it may queue (0: not at all)
}

// planHeat classifies req (normalized), sizes it by its class when the
// class is enforced, and routes it. Without heat classes a create that
// asks for them is refused (501); with them, a create that asks for none
// that cannot be classified is placed as before.
func (c *Cluster) planHeat(ctx context.Context, req *tartarus.CreateRequest) (*heatPlan, error) {
	if c.heat == nil {
		if req.HeatRequested() {
			return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "heat classes are off on this replica: heat_hint, resource_class, max_duration_s, queue_timeout_s and gpus need them")
		}
		return nil, nil
	}
	opted := req.HeatRequested()
	var wait time.Duration
	if req.QueueTimeoutS != 0 {
		wait = time.Duration(req.QueueTimeoutS) * time.Second
		if req.QueueTimeoutS < 0 || wait > c.heat.qcfg.MaxTimeout {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "queue_timeout_s %d: must be between 0 (no waiting) and %d",
				req.QueueTimeoutS, int(c.heat.qcfg.MaxTimeout/time.Second))
		}
	}
	sr := phlegethon.RequestOf(req)
	if err := sr.Validate(); err != nil {
		return nil, err
	}
	if err := c.reloadPools(ctx); err != nil {
		return nil, err
	}
	d, err := c.heat.router.Decide(ctx, sr)
	if err != nil {
		if !opted && !c.heat.enforce {
			c.log.Debug("classify a create that asks for no heat; placing it as before", "err", err)
			return nil, nil
		}
		return nil, err
	}
	p := &heatPlan{heat: d.Heat, tiers: d.Tiers, wait: wait, info: d.Apply(req)}
	// The node ends it at its expiry, through its Thanatos with reason
	// timeout: the class's maximum duration is its timeout.
	if p.info.MaxDurationS > 0 {
		req.TimeoutS = min(p.info.MaxDurationS, tartarus.MaxTimeoutS)
	}
	return p, nil
}

// forNode is the create as its node makes it: sized already, without the
// heat fields (the node has no heat classes of its own to apply them).
func forNode(req *tartarus.CreateRequest, rt string) *tartarus.CreateRequest {
	out := *req
	out.Runtime, out.NodeLabels = rt, nil
	out.HeatHint, out.ResourceClass, out.MaxDurationS, out.QueueTimeoutS, out.GPUs = "", "", 0, 0, 0
	return &out
}

// placeTiers places a sandbox of req's shape on the first tier of plan
// that has room (every up node without a plan).
func (c *Cluster) placeTiers(nodes []*store.NodeRecord, req *tartarus.CreateRequest, plan *heatPlan, avoid ...string) (string, string, error) {
	pr := placementRequest(req)
	pr.Avoid = avoid
	if plan == nil || len(plan.tiers) == 0 {
		return c.place(nodes, req.Template, pr)
	}
	var errs []error
	for _, t := range plan.tiers {
		var in []*store.NodeRecord
		for _, n := range nodes {
			if slices.Contains(t.Nodes, n.Name) {
				in = append(in, n)
			}
		}
		if len(in) == 0 {
			continue
		}
		name, rt, err := c.place(in, req.Template, pr)
		if err == nil {
			return name, rt, nil
		}
		where := t.Rule
		if t.Pool != "" {
			where += " " + t.Pool
		}
		errs = append(errs, fmt.Errorf("%s: %w", where, err))
	}
	switch len(errs) {
	case 0:
		return c.place(nil, req.Template, pr)
	case 1:
		// One tier (no pools): placement's own refusal says it all.
		return "", "", errors.Unwrap(errs[0])
	}
	// No room anywhere is resource_exhausted (the queue waits for room);
	// any other refusal keeps its own class.
	for _, err := range errs {
		if !errors.Is(err, tartarus.ErrResourceExhausted) {
			return "", "", errors.Join(errs...)
		}
	}
	return "", "", tartarus.Errorf(tartarus.ErrResourceExhausted, "no room for %s work: %v", plan.heat, errors.Join(errs...))
}

// queued reports whether creates of heat h wait in the queue now (a new
// one that may wait queues behind them rather than overtake them).
func (c *Cluster) queued(ctx context.Context, h phlegethon.HeatLevel) (bool, error) {
	recs, err := c.heat.journal.Queued(ctx)
	if err != nil {
		return false, dbErr(err)
	}
	for _, r := range recs {
		if r.Heat == h {
			return true, nil
		}
	}
	return false, nil
}

// enqueue writes a create that found no room to the queue's table and
// returns it as a queued sandbox (202).
func (c *Cluster) enqueue(ctx context.Context, tenant string, req *tartarus.CreateRequest, plan *heatPlan) (*tartarus.Sandbox, error) {
	id := tartarus.NewID("sb-")
	payload, err := json.Marshal(queuedCreate{Tenant: tenant, Req: *req, Heat: plan.info})
	if err != nil {
		return nil, fmt.Errorf("queue create: %w", err)
	}
	now := c.cfg.Clock.Now().UTC()
	rec := &phlegethon.Record{Entry: phlegethon.Entry{ID: id, Tenant: tenant, Heat: plan.heat, Payload: payload,
		EnqueuedAt: now, Deadline: now.Add(plan.wait), Seq: now.UnixNano()}, Status: phlegethon.StatusQueued}
	if err := c.heat.journal.Put(ctx, rec); err != nil {
		return nil, dbErr(fmt.Errorf("queue create: %w", err))
	}
	c.heat.mu.Lock()
	q := c.heat.queue
	c.heat.mu.Unlock()
	if q != nil {
		// The queue runs here: it takes the entry now, so its place is the
		// queue's own.
		if _, err := q.Restore(ctx); err != nil {
			c.log.Warn("load queued creates", "err", err)
		}
	}
	c.kickQueue()
	c.log.Info("create queued", "sandbox", id, "heat", plan.heat, "timeout_s", req.QueueTimeoutS)
	return c.queuedSandbox(ctx, id)
}

// kickQueue has the queue look at its table now when this replica runs it
// (others' entries are found at the next tick).
func (c *Cluster) kickQueue() {
	select {
	case c.heat.kick <- struct{}{}:
	default:
	}
}

// queuedSandbox shows a create the queue holds or held as a sandbox:
// queued with its position, failed with the reason its wait ended, or
// terminated when it was cancelled; ErrNotFound when the queue never had
// it.
func (c *Cluster) queuedSandbox(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	if c.heat == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	rec, err := c.heat.journal.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var qc queuedCreate
	if err := json.Unmarshal(rec.Payload, &qc); err != nil {
		return nil, fmt.Errorf("queued create %s: %w", id, err)
	}
	sb := tartarus.NewSandbox(id, qc.Tenant, &qc.Req, rec.EnqueuedAt.UTC())
	sb.Heat = qc.Heat
	switch rec.Status {
	case phlegethon.StatusQueued:
		sb.State = tartarus.StateQueued
		pos, err := c.position(ctx, rec)
		if err != nil {
			return nil, err
		}
		sb.Queue = pos
	case phlegethon.StatusCancelled:
		sb.State, sb.UpdatedAt = tartarus.StateTerminated, rec.FinishedAt.UTC()
	case phlegethon.StatusAdmitted:
		if got, err := c.st.Get(ctx, id); err == nil {
			return got, nil
		}
		sb.State = tartarus.StateCreating
	default:
		sb.State, sb.Error, sb.UpdatedAt = tartarus.StateFailed, string(rec.Status)+": "+rec.Reason, rec.FinishedAt.UTC()
	}
	return sb, nil
}

// position is where a queued record stands: its place among the queued
// creates of its heat, by arrival. The overall place is the queue
// runner's to know; it is given only by the replica running the queue.
func (c *Cluster) position(ctx context.Context, rec *phlegethon.Record) (*tartarus.QueuePosition, error) {
	c.heat.mu.Lock()
	q := c.heat.queue
	c.heat.mu.Unlock()
	if q != nil {
		if p, err := q.Position(ctx, rec.ID); err == nil && p.Status == phlegethon.StatusQueued && p.InHeat > 0 {
			return &tartarus.QueuePosition{Heat: string(p.Heat), Position: p.InHeat, OverallPosition: p.Overall, Depth: p.Depth}, nil
		}
	}
	recs, err := c.heat.journal.Queued(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	p := &tartarus.QueuePosition{Heat: string(rec.Heat)}
	for _, r := range recs {
		if r.Heat != rec.Heat {
			continue
		}
		p.Depth++
		if r.Seq < rec.Seq || (r.Seq == rec.Seq && r.ID <= rec.ID) {
			p.Position++
		}
	}
	p.OverallPosition = p.Position
	return p, nil
}

// cancelQueued takes a queued create out of the queue (DELETE). Cancelled
// at a replica that does not run the queue, it is marked in the table, and
// the runner drops it when it next tries to admit it (as failed, "deleted
// while queued").
func (c *Cluster) cancelQueued(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	rec, err := c.heat.journal.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if rec.Status == phlegethon.StatusQueued {
		c.heat.mu.Lock()
		q := c.heat.queue
		c.heat.mu.Unlock()
		if q == nil || q.Cancel(ctx, id, "deleted while queued") != nil {
			rec.Status, rec.Reason, rec.FinishedAt = phlegethon.StatusCancelled, "deleted while queued", c.cfg.Clock.Now().UTC()
			if err := c.heat.journal.Put(ctx, rec); err != nil {
				return nil, dbErr(err)
			}
		}
		// The replica running the queue may have placed it between the
		// caller's look for a sandbox and this write (admitQueued looks
		// again after placing): then it exists, and ends as any does.
		if _, err := c.st.Get(ctx, id); err == nil {
			return c.destroy(ctx, id, nil)
		}
	}
	return c.queuedSandbox(ctx, id)
}

// runQueue takes the queue's lease whenever no replica holds it, and while
// it does, runs the queue: it loads what the table holds queued (other
// replicas' entries, or everything after a takeover) at every tick and
// admits in fair order.
func (c *Cluster) runQueue(ctx context.Context) {
	if c.heat == nil {
		return
	}
	h := c.heat
	t := c.cfg.Clock.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	defer c.dropQueue("replica stopping")
	for {
		h.mu.Lock()
		q, lease := h.queue, h.lease
		h.mu.Unlock()
		switch {
		case lease == nil:
			if err := c.takeQueue(ctx); err != nil {
				c.log.Warn("admission queue lease", "err", err)
			}
		case lease.Check(ctx) != nil:
			c.dropQueue("lost the database session holding the queue's lease")
		default:
			if _, err := q.Restore(ctx); err != nil {
				c.log.Warn("load queued creates", "err", err)
			}
			q.Dispatch(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-h.kick:
		}
	}
}

// takeQueue becomes the queue's runner if no replica is.
func (c *Cluster) takeQueue(ctx context.Context) error {
	h := c.heat
	lease, err := c.st.TryLease(ctx, queueLease)
	if err != nil || lease == nil {
		return err
	}
	q, err := phlegethon.NewQueue(h.qcfg, c.cfg.Clock, h.journal, c.admitQueued)
	if err != nil {
		lease.Release(ctx)
		return err
	}
	n, err := q.Restore(ctx)
	if err != nil {
		lease.Release(ctx)
		return err
	}
	qctx, stop := context.WithCancel(ctx)
	h.mu.Lock()
	h.lease, h.queue, h.stop = lease, q, stop
	h.mu.Unlock()
	h.router.AttachQueue(q)
	go func() { _ = q.Run(qctx) }()
	c.log.Info("this replica runs the admission queue", "queued", n)
	return nil
}

// dropQueue stops running the queue (its entries stay in the table for
// the next runner).
func (c *Cluster) dropQueue(why string) {
	h := c.heat
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lease == nil {
		return
	}
	h.stop()
	h.lease.Release(context.Background())
	h.lease, h.queue, h.stop = nil, nil, nil
	c.log.Warn("this replica no longer runs the admission queue", "why", why)
}

// admitQueued is the queue's AdmitFunc: it places a queued create as
// Create places any (a sandbox record and its create command, in one
// transaction) without waiting for its node. It is idempotent on the
// entry's ID.
func (c *Cluster) admitQueued(ctx context.Context, e *phlegethon.Entry) error {
	if _, err := c.st.Get(ctx, e.ID); err == nil {
		return nil // admitted before a crash
	}
	if rec, err := c.heat.journal.Get(ctx, e.ID); err == nil && rec.Status == phlegethon.StatusCancelled {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "deleted while queued")
	}
	var qc queuedCreate
	if err := json.Unmarshal(e.Payload, &qc); err != nil {
		return fmt.Errorf("queued create %s: bad payload: %w", e.ID, err)
	}
	req := qc.Req
	shared, err := c.sharedTemplate(ctx, qc.Tenant, &req)
	if err != nil {
		return err
	}
	now := c.cfg.Clock.Now().UTC()
	sb := tartarus.NewSandbox(e.ID, qc.Tenant, &req, now)
	sb.Heat = qc.Heat
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Kind: wire.KindCreate, SandboxID: sb.ID, CreatedAt: now, Sandbox: sb}
	plan := &heatPlan{heat: e.Heat, info: qc.Heat}
	_ = c.reloadPools(ctx) // the pools as they were are good enough
	if d, err := c.heat.router.Decide(ctx, &phlegethon.SandboxRequest{TemplateID: req.Template,
		HeatHint: e.Heat, CPUCores: req.CPUs, MemoryMB: req.MemoryMB}); err == nil {
		plan.tiers = d.Tiers
	}
	_, err = c.st.Place(ctx, store.IdempotencyKey{}, func(nodes []*store.NodeRecord, _ func(string) bool) (*tartarus.Sandbox, *store.CommandRecord, error) {
		name, rt, err := c.placeTiers(nodes, &req, plan)
		if err != nil && shared != nil {
			name, rt, err = c.placeShared(nodes, &req, plan)
		}
		if err != nil {
			return nil, nil, err
		}
		sb.Node, sb.Runtime, cmd.Node, cmd.Template = name, rt, name, shared
		cmd.Create = forNode(&req, rt)
		rec, err := commandRecord(cmd)
		return sb, rec, err
	})
	if err != nil {
		if errors.Is(err, tartarus.ErrResourceExhausted) {
			return err
		}
		if errors.Is(err, tartarus.ErrUnavailable) {
			// No node up right now: wait for one, as for room.
			return tartarus.Errorf(tartarus.ErrResourceExhausted, "%v", err)
		}
		return err
	}
	c.publish(ctx, Event{Kind: EventCommand, Node: cmd.Node})
	if rec, err := c.heat.journal.Get(ctx, e.ID); err == nil && rec.Status == phlegethon.StatusCancelled {
		// Deleted at another replica while this placed it (cancelQueued
		// looks for the sandbox after its write): end it. Not here, the
		// queue's lock is held while the node answers.
		go func() {
			if _, err := c.destroy(context.WithoutCancel(ctx), e.ID, nil); err != nil {
				c.log.Warn("end a create deleted while it was admitted", "sandbox", e.ID, "err", err)
			}
		}()
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "deleted while queued")
	}
	c.log.Info("queued create admitted", "sandbox", e.ID, "node", cmd.Node, "heat", e.Heat,
		"waited", now.Sub(e.EnqueuedAt).Round(time.Millisecond))
	return nil
}

// HeatMetrics implements olympus.HeatManager: the cluster's live
// sandboxes by heat (from their records), the queue's depth by heat (from
// its table), and waits as the replica running the queue measured them
// (zero elsewhere).
func (c *Cluster) HeatMetrics(ctx context.Context) (*api.HeatMetrics, error) {
	if err := c.heatOn(); err != nil {
		return nil, err
	}
	out := &api.HeatMetrics{ByHeat: map[string]int{}, QueueDepthByHeat: map[string]int{},
		AvgWaitSByHeat: map[string]float64{}, P99WaitSByHeat: map[string]float64{},
		DefaultQueueWaitS: int(c.heat.qcfg.DefaultTimeout / time.Second)}
	for _, h := range phlegethon.Levels {
		out.ByHeat[string(h)], out.QueueDepthByHeat[string(h)] = 0, 0
		out.AvgWaitSByHeat[string(h)], out.P99WaitSByHeat[string(h)] = 0, 0
	}
	live, err := c.st.List(ctx, tartarus.SandboxFilter{States: tartarus.LiveStates()})
	if err != nil {
		return nil, dbErr(err)
	}
	for _, sb := range live {
		if sb.Heat != nil && sb.Heat.Heat != "" {
			out.ByHeat[sb.Heat.Heat]++
			out.TotalSandboxes++
		}
	}
	recs, err := c.heat.journal.Queued(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	for _, r := range recs {
		out.QueueDepthByHeat[string(r.Heat)]++
	}
	c.heat.mu.Lock()
	q := c.heat.queue
	c.heat.mu.Unlock()
	if q != nil {
		for h, s := range q.Stats() {
			out.AvgWaitSByHeat[string(h)] = s.AvgWait.Seconds()
			out.P99WaitSByHeat[string(h)] = s.P99Wait.Seconds()
		}
	}
	return out, nil
}

// ExplainHeat implements olympus.HeatManager.
func (c *Cluster) ExplainHeat(ctx context.Context, template string) (*tartarus.SandboxHeat, error) {
	if err := c.heatOn(); err != nil {
		return nil, err
	}
	if !tartarus.ValidName(template) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template %q: want 1-64 characters of a-z, 0-9, '-', '_', '.'", template)
	}
	e, err := c.heat.router.Classifier().ExplainTemplate(template)
	if err != nil {
		return nil, err
	}
	return hecatoncheir.SandboxHeatOf(e), nil
}

// HeatPools implements olympus.HeatManager: the pools (kept in Postgres,
// shared by every replica) with the nodes they hold now.
func (c *Cluster) HeatPools(ctx context.Context) ([]api.Pool, error) {
	if err := c.heatOn(); err != nil {
		return nil, err
	}
	if err := c.reloadPools(ctx); err != nil {
		return nil, err
	}
	pools, err := c.heat.router.ListPools(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	out := make([]api.Pool, 0, len(pools))
	for _, p := range pools {
		out = append(out, hecatoncheir.APIPool(&p))
	}
	return out, nil
}

// DefineHeatPool implements olympus.HeatManager.
func (c *Cluster) DefineHeatPool(ctx context.Context, in *api.Pool) (*api.Pool, error) {
	if err := c.heatOn(); err != nil {
		return nil, err
	}
	p := &phlegethon.Pool{Name: in.Name, NodeSelector: in.NodeSelector, MinNodes: in.MinNodes, MaxNodes: in.MaxNodes}
	for _, h := range in.Heats {
		p.Heats = append(p.Heats, phlegethon.HeatLevel(h))
	}
	if err := c.reloadPools(ctx); err != nil {
		return nil, err
	}
	if err := c.heat.router.DefinePool(ctx, p); err != nil {
		return nil, err
	}
	pools, err := c.HeatPools(ctx)
	if err != nil {
		return nil, err
	}
	for i := range pools {
		if pools[i].Name == in.Name {
			return &pools[i], nil
		}
	}
	out := hecatoncheir.APIPool(p)
	return &out, nil
}

// RemoveHeatPool implements olympus.HeatManager.
func (c *Cluster) RemoveHeatPool(ctx context.Context, name string) error {
	if err := c.heatOn(); err != nil {
		return err
	}
	if err := c.reloadPools(ctx); err != nil {
		return err
	}
	return c.heat.router.RemovePool(ctx, name)
}

// reloadPools reads the pools from the database: another replica may have
// changed them.
func (c *Cluster) reloadPools(ctx context.Context) error {
	return dbErr(c.heat.router.ReloadPools(ctx))
}

// HeatClasses implements olympus.HeatManager.
func (c *Cluster) HeatClasses(ctx context.Context) ([]api.ResourceClass, error) {
	if err := c.heatOn(); err != nil {
		return nil, err
	}
	return hecatoncheir.APIClasses(c.heat.router.Classes()), nil
}

func (c *Cluster) heatOn() error {
	if c.heat == nil {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "heat classes are off on this replica")
	}
	return nil
}
