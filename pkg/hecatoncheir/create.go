package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Create validates req, records the sandbox as creating, creates and starts
// it in its runtime, and records it running. A failure after the record
// exists leaves the sandbox failed with the error stored, and its remains
// destroyed even when ctx is cancelled.
func (a *Agent) Create(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	if req.FromCheckpoint != "" {
		if req.HeatRequested() {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "from_checkpoint: the sandbox takes the checkpoint's shape; heat_hint, resource_class, max_duration_s, queue_timeout_s and gpus do not apply")
		}
		return a.createFromCheckpoint(ctx, tenant, req)
	}
	if err := req.Normalize(); err != nil {
		return nil, err
	}
	// Heat classification may size the create before the node checks it.
	plan, err := a.planHeat(ctx, req)
	if err != nil {
		return nil, err
	}
	rt, img, err := a.checkCreate(ctx, tenant, req)
	if err != nil {
		return nil, err
	}
	if plan != nil && plan.info.Enforced {
		// The network (the create's or the node's default) is known now:
		// the class's bandwidth caps it (tc on the node).
		phlegethon.ApplyNetworkBurst(req.Network, plan.info.NetworkMbps)
	}
	if len(img.Env) > 0 {
		// A built template's ENV, under the request's own.
		env := maps.Clone(img.Env)
		maps.Copy(env, req.Env)
		req.Env = env
	}
	if plan != nil && plan.check {
		// Queued creates come first: a new one that may wait joins them,
		// whatever their heat, so that room freed before the queue hands
		// it on goes in the queue's order (fair share, or FIFO), not to
		// whoever asks first.
		if req.QueueTimeoutS > 0 && a.heat.queueWaiting() {
			return a.enqueue(ctx, tenant, req, rt, plan)
		}
		if err := a.checkCapacity(ctx, rt, req.MemoryMB, req.CPUs); err != nil {
			if req.QueueTimeoutS == 0 || !errors.Is(err, tartarus.ErrResourceExhausted) {
				return nil, err
			}
			return a.enqueue(ctx, tenant, req, rt, plan)
		}
	}

	// A warm-pool sandbox, when one is ready, becomes this sandbox (not
	// when its class throttles the disk, nor with a network: pooled VMs
	// run unthrottled and without one).
	id := ""
	if (plan == nil || plan.info.DiskIOPS == 0) && req.Network == nil {
		id = a.claimWarm(ctx, rt, img, req.MemoryMB, req.CPUs, "")
	}
	claimed := id != ""
	if !claimed {
		// A new sandbox must fit the host beside those it holds (a warm
		// one was counted when the pool made it; a heat plan checked it).
		if plan == nil || !plan.check {
			if err := a.checkCapacity(ctx, rt, req.MemoryMB, req.CPUs); err != nil {
				return nil, err
			}
		}
		id = tartarus.NewID("sb-")
	}
	sb := tartarus.NewSandbox(id, tenant, req, a.cfg.Clock.Now().UTC())
	sb.Runtime, sb.Node = rt.Name(), a.cfg.Node
	if plan != nil {
		sb.Heat = plan.info
	}
	cfg := a.vmConfig(sb, img)
	how := "warm pool"
	out, err := a.createWith(ctx, sb, func() error {
		if claimed {
			return nil
		}
		var err error
		how, err = a.restoreOrBoot(ctx, rt, cfg)
		return err
	}, "how", &how)
	if err != nil {
		how = "failed"
	}
	a.creates.add(sb.Template, how)
	return out, err
}

// createCounts counts the creates of each template by how they were
// served: "warm pool" (claimed, no cold start), "restored", "booted" or
// "failed".
type createCounts struct {
	mu sync.Mutex
	n  map[string]map[string]int
}

func (c *createCounts) add(template, how string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]map[string]int{}
	}
	if c.n[template] == nil {
		c.n[template] = map[string]int{}
	}
	c.n[template][how]++
}

// CreateCounts returns, per template, how many creates since the agent
// started were served from a warm pool ("warm pool"), by restoring the
// template's snapshot ("restored"), by booting ("booted"), or failed
// ("failed"). A create that found no warm sandbox is a cold create.
func (a *Agent) CreateCounts() map[string]map[string]int {
	a.creates.mu.Lock()
	defer a.creates.mu.Unlock()
	out := make(map[string]map[string]int, len(a.creates.n))
	for tpl, m := range a.creates.n {
		out[tpl] = maps.Clone(m)
	}
	return out
}

// checkCreate normalizes req and checks that this node can create it: the
// runtime is enabled and available, the shape fits its per-sandbox limits,
// and the template is built and tenant's to use (another tenant's template
// is not found, like another tenant's sandbox).
func (a *Agent) checkCreate(ctx context.Context, tenant string, req *tartarus.CreateRequest) (tartarus.Runtime, *tartarus.Image, error) {
	if err := req.Normalize(); err != nil {
		return nil, nil, err
	}
	if len(req.NodeLabels) > 0 {
		return nil, nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "node_labels: this server is a single node without labels (labels choose among the nodes of a cluster)")
	}
	rt, err := a.runtime(req.Runtime)
	if err != nil {
		return nil, nil, err
	}
	fp, err := rt.Fingerprint(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("fingerprint %s: %w", rt.Name(), err)
	}
	switch {
	case !fp.Available:
		return nil, nil, tartarus.Errorf(tartarus.ErrUnavailable, "runtime %s is not available on this node: %s", rt.Name(), fp.Reason)
	case req.CPUs > fp.MaxCPUs:
		return nil, nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "cpus %d exceeds this node's limit of %d per sandbox (max_cpus)", req.CPUs, fp.MaxCPUs)
	case req.MemoryMB > fp.MaxMemoryMB:
		return nil, nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "memory_mb %d exceeds this node's limit of %d per sandbox (max_memory_mb)", req.MemoryMB, fp.MaxMemoryMB)
	}
	if err := a.chooseNetwork(rt, fp, req); err != nil {
		return nil, nil, err
	}
	img, err := a.cfg.Images.Get(ctx, req.Template)
	if err != nil {
		return nil, nil, fmt.Errorf("template %s: %w", req.Template, err)
	}
	if !img.VisibleTo(tenant) {
		return nil, nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", req.Template)
	}
	// A tag names a version: the sandbox keeps the version it started
	// from when the tag moves.
	if base, _, _ := strings.Cut(req.Template, ":"); strings.HasPrefix(img.Name, base+"..") {
		req.Template = img.Name
	}
	return rt, img, nil
}

// createWith records sb as creating, brings it up with up, and records it
// running. A failure after the record exists leaves the sandbox failed with
// the error stored, and its remains destroyed even when ctx is cancelled.
// logKV are logged when the sandbox runs (a *string is read then).
func (a *Agent) createWith(ctx context.Context, sb *tartarus.Sandbox, up func() error, logKV ...any) (*tartarus.Sandbox, error) {
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, err
	}
	unlock := a.lock(sb.ID)
	defer unlock()
	if err := a.cfg.Store.Create(ctx, sb); err != nil {
		if a.instance(ctx, rt, sb.ID) != nil {
			_ = rt.Destroy(context.WithoutCancel(ctx), sb.ID) // a claimed warm sandbox
		}
		return nil, fmt.Errorf("record sandbox: %w", err)
	}
	return a.bringUp(ctx, rt, sb, up, logKV...)
}

// bringUp brings up sb, recorded as creating, with up and records it
// running; on failure it destroys what exists and records sb failed. The
// caller holds sb's lock.
func (a *Agent) bringUp(ctx context.Context, rt tartarus.Runtime, sb *tartarus.Sandbox, up func() error, logKV ...any) (*tartarus.Sandbox, error) {
	log := a.log.With("sandbox", sb.ID, "runtime", rt.Name(), "template", sb.Template)
	start := a.cfg.Clock.Now()
	err := up()
	if err == nil {
		var running *tartarus.Sandbox
		running, err = a.cfg.Store.Move(ctx, sb.ID, tartarus.StateCreating, tartarus.StateRunning, store.Change{At: a.cfg.Clock.Now().UTC()})
		if err == nil {
			for i := 1; i < len(logKV); i += 2 {
				if p, ok := logKV[i].(*string); ok {
					logKV[i] = *p
				}
			}
			log.Info("sandbox running", append(logKV, "took", a.cfg.Clock.Now().Sub(start))...)
			a.schedule(running)
			a.heatStarted(running, a.cfg.Clock.Now())
			if sr, ok := a.snaps[rt.Name()]; ok {
				sr.hyp.Touch(sb.ID)
			}
			return running, nil
		}
	}
	// Clean up whatever exists, whatever happened to the caller.
	cleanup := context.WithoutCancel(ctx)
	log.Warn("create failed", "err", err)
	if derr := rt.Destroy(cleanup, sb.ID); derr != nil {
		log.Error("destroy after failed create", "err", derr)
	}
	if _, merr := a.cfg.Store.Move(cleanup, sb.ID, tartarus.StateCreating, tartarus.StateFailed,
		store.Change{At: a.cfg.Clock.Now().UTC(), Error: err.Error()}); merr != nil {
		log.Error("record failed create", "err", merr)
	}
	a.heatEnded(cleanup, sb.ID) // its room is free again
	if tartarus.ClassOf(err).Err == nil {
		// A boot that fails for no known reason is the node's trouble.
		err = fmt.Errorf("%w (%w)", err, tartarus.ErrUnavailable)
	}
	return nil, fmt.Errorf("create sandbox %s (recorded as failed): %w", sb.ID, err)
}

// checkCapacity refuses (ErrResourceExhausted) work that would take this
// node's sandboxes of runtime rt past the host's memory or CPUs. Hibernated
// sandboxes hold neither.
func (a *Agent) checkCapacity(ctx context.Context, rt tartarus.Runtime, memoryMB, cpus int) error {
	fp, err := rt.Fingerprint(ctx)
	if err != nil {
		return fmt.Errorf("fingerprint %s: %w", rt.Name(), err)
	}
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node,
		States: []tartarus.State{tartarus.StateCreating, tartarus.StateRunning, tartarus.StatePaused, tartarus.StateQuarantined}})
	if err != nil {
		return err
	}
	usedMem, usedCPUs := a.pools.usage(rt.Name())
	for _, sb := range live {
		if sb.Runtime == rt.Name() {
			usedMem += sb.MemoryMB
			usedCPUs += sb.CPUs
		}
	}
	hostMem := fp.HostMemoryMB
	if c := a.cfg.CapacityMemoryMB; c > 0 && (hostMem == 0 || c < hostMem) {
		hostMem = c
	}
	var why []string
	if hostMem > 0 && usedMem+memoryMB > hostMem {
		why = append(why, fmt.Sprintf("memory: %d MiB in use + %d MiB asked > %d MiB on this node", usedMem, memoryMB, hostMem))
	}
	// CPUs are shared in time, but not beyond a sane overcommit.
	oc := a.cfg.CPUOvercommit
	if oc == 0 {
		oc = DefaultCPUOvercommit
	}
	if fp.HostCPUs > 0 && usedCPUs+cpus > fp.HostCPUs*oc {
		why = append(why, fmt.Sprintf("cpus: %d in use + %d asked > %d (%d host CPUs × %d)", usedCPUs, cpus, fp.HostCPUs*oc, fp.HostCPUs, oc))
	}
	if len(why) > 0 {
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "not enough capacity on node %s (%s)", a.cfg.Node, strings.Join(why, "; "))
	}
	return nil
}

// DefaultCPUOvercommit is how many virtual CPUs a host CPU may back
// unless Config.CPUOvercommit says otherwise.
const DefaultCPUOvercommit = 8
