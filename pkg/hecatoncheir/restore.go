package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Creation by restore: each template is booted once per shape (memory,
// CPUs) and snapshotted; creating a sandbox then restores that snapshot
// with a fresh id (and, by the Snapshotter's contract, its own copy of the
// disk) instead of booting. The snapshot is named after the template, its
// image digest and the shape, so a rebuilt template gets a new snapshot and
// the old one is deleted. A warm pool keeps PrewarmPoolSize sandboxes per
// template and shape already restored, unrecorded, to be claimed by a
// create; the pool refills in the background. Pooled sandboxes are not in
// the store, so after a restart Recover destroys them as orphans.

// poolKey names a template snapshot, and the warm pool of sandboxes
// restored from it. The image digest is part of it, so that a rebuilt
// template never hands out sandboxes of its previous build.
type poolKey struct {
	runtime, template, digest string
	memoryMB, cpus            int
}

// warmPools holds the already-restored sandboxes, by key.
type warmPools struct {
	mu    sync.Mutex
	size  int // every pool's size, until targets are set
	ready map[poolKey][]string
	// targeted is set once SetPoolTargets was called: from then on each
	// template's pool holds targets[template] (0 when absent) instead of
	// size.
	targeted bool
	targets  map[string]int
	wanted   map[poolKey]bool
	filling  map[poolKey]bool
	kick     chan struct{}
	// inflight counts the refills under way per key (they hold their
	// room already); parallel bounds them per pool; took keeps the last
	// refills' durations, newest last.
	inflight map[poolKey]int
	parallel int
	took     []time.Duration
}

// refillSamples is how many refill durations RefillRate looks at.
const refillSamples = 16

// maxRefillParallel bounds the refills of one pool under way at once,
// whatever the host's CPU count: each is a VM restore plus its first
// command, mostly CPU.
const maxRefillParallel = 8

func newWarmPools(size int) *warmPools {
	return &warmPools{size: size, ready: map[poolKey][]string{}, wanted: map[poolKey]bool{},
		targets: map[string]int{}, filling: map[poolKey]bool{}, kick: make(chan struct{}, 1),
		inflight: map[poolKey]int{}, parallel: min(max(1, runtime.NumCPU()), maxRefillParallel)}
}

// enabled says whether pools are kept at all (a fixed size or targets).
func (p *warmPools) enabled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size > 0 || p.targeted
}

// sizeOf is the size pool k should have; p.mu is held.
func (p *warmPools) sizeOf(k poolKey) int {
	if p.targeted {
		return p.targets[k.template]
	}
	return p.size
}

// wake runs the filler soon.
func (p *warmPools) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// maxPoolKeys bounds how many template shapes get a pool.
const maxPoolKeys = 8

// want asks for a pool of key and wakes the filler.
func (p *warmPools) want(k poolKey) {
	p.mu.Lock()
	if p.size <= 0 && !p.targeted {
		p.mu.Unlock()
		return
	}
	if !p.wanted[k] && len(p.wanted) < maxPoolKeys {
		p.wanted[k] = true
	}
	p.mu.Unlock()
	p.wake()
}

// claim takes one pooled sandbox id of key, or "".
func (p *warmPools) claim(k poolKey) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := p.ready[k]
	if len(ids) == 0 {
		return ""
	}
	id := ids[0]
	p.ready[k] = ids[1:]
	return id
}

// claimID takes pooled sandbox id of key; false if it is not in the pool.
func (p *warmPools) claimID(k poolKey, id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := p.ready[k]
	i := slices.Index(ids, id)
	if i < 0 {
		return false
	}
	p.ready[k] = slices.Delete(slices.Clone(ids), i, i+1)
	return true
}

// usage sums what runtime's pooled sandboxes hold, ready or being made.
func (p *warmPools) usage(runtime string) (memoryMB, cpus int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, ids := range p.ready {
		if k.runtime == runtime {
			memoryMB += k.memoryMB * len(ids)
			cpus += k.cpus * len(ids)
		}
	}
	for k, n := range p.inflight {
		if k.runtime == runtime {
			memoryMB += k.memoryMB * n
			cpus += k.cpus * n
		}
	}
	return memoryMB, cpus
}

// RefillRate says how fast this node makes warm sandboxes: the median
// time of its last refills (restore plus the warm-up command; 0 before the
// first) and how many one pool makes at once (the host's CPUs, at most
// 8). Persephone sizes pools ahead of a peak by it.
func (a *Agent) RefillRate() (typical time.Duration, parallel int) {
	a.pools.mu.Lock()
	defer a.pools.mu.Unlock()
	if len(a.pools.took) > 0 {
		d := slices.Clone(a.pools.took)
		slices.Sort(d)
		typical = d[len(d)/2]
	}
	return typical, a.pools.parallel
}

// PoolKey names the warm pool of a shape as PoolSizes and WarmIDs do:
// "runtime/template/memoryMB/cpus".
func PoolKey(runtime, template string, memoryMB, cpus int) string {
	return fmt.Sprintf("%s/%s/%d/%d", runtime, template, memoryMB, cpus)
}

// WarmIDs lists the ids of the sandboxes waiting in each warm pool, by
// PoolKey: a cluster's servers create a sandbox under one of them so that
// CreateAs claims it instead of restoring.
func (a *Agent) WarmIDs() map[string][]string {
	a.pools.mu.Lock()
	defer a.pools.mu.Unlock()
	out := map[string][]string{}
	for k, ids := range a.pools.ready {
		if len(ids) > 0 {
			key := PoolKey(k.runtime, k.template, k.memoryMB, k.cpus)
			out[key] = append(out[key], ids...)
		}
	}
	return out
}

// PoolUsage sums the memory the warm pools' sandboxes hold, on every
// runtime.
func (a *Agent) PoolUsage() (memoryMB int) {
	for _, rt := range a.cfg.Runtimes {
		m, _ := a.pools.usage(rt.Name())
		memoryMB += m
	}
	return memoryMB
}

// PoolSizes reports how many sandboxes wait in each warm pool, by
// "runtime/template/memoryMB/cpus".
func (a *Agent) PoolSizes() map[string]int {
	a.pools.mu.Lock()
	defer a.pools.mu.Unlock()
	out := map[string]int{}
	for k, ids := range a.pools.ready {
		out[PoolKey(k.runtime, k.template, k.memoryMB, k.cpus)] += len(ids)
	}
	return out
}

// templateSnapshotFormat is part of every template snapshot's name. A
// snapshot keeps the machine it was made on (CPU flags, the guest kernel's
// command line), so bump it when the drivers change those: existing data
// directories then build new template snapshots instead of restoring the
// old machine (format 2: tickless TCG guests with fixed address layout;
// format 3: the microvm driver's memory file, mapped by restores; format 4:
// taken after templateWarmup).
const templateSnapshotFormat = "f4"

// templateWarmup runs in a template's guest before its snapshot is taken,
// as the template's user, through the path users' commands take. What a
// first command reads from disk (the agent's exec path, the dynamic loader
// and libc, the shells, python where there is one) is then in the guest's
// page cache in the snapshot, whose memory every sandbox of the template
// maps and shares, instead of being read through emulated virtio by each
// sandbox's first command. A missing program is not an error.
var templateWarmup = [][]string{
	{"true"},
	{"/bin/sh", "-c", "command -v bash >/dev/null && bash -lc true; command -v python3 >/dev/null && python3 -c pass; true"},
}

// templateSnapshotID names the snapshot of img at a shape, with or without
// a network card (a snapshot restores only into the same devices). An
// image without a digest gets none: a rebuild could not be told apart.
func templateSnapshotID(img *tartarus.Image, memoryMB, cpus int, nic bool) (string, bool) {
	d := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' {
			return r
		}
		return -1
	}, strings.TrimPrefix(img.Digest, "sha256:"))
	if d == "" {
		return "", false
	}
	id := fmt.Sprintf("%s-%.16s-%s-%dm-%dc", img.Name, d, templateSnapshotFormat, memoryMB, cpus)
	if nic {
		id += "-net"
	}
	return id, true
}

// templateSnapshot returns the id of img's snapshot at a shape, booting the
// template and snapshotting it first if there is none. Builds of one
// snapshot are serialized; a stale snapshot of the same template (another
// image digest) is deleted once the new one exists.
//
// With nic the template is booted with a network card (in a network of
// mode none, removed with the builder), for sandboxes that have a network.
func (a *Agent) templateSnapshot(ctx context.Context, sr *snapRuntime, img *tartarus.Image, memoryMB, cpus int, nic bool) (string, error) {
	id, ok := templateSnapshotID(img, memoryMB, cpus, nic)
	if !ok {
		return "", tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s has no image digest", img.Name)
	}
	unlock := a.lock("template/" + sr.rt.Name() + "/" + id)
	defer unlock()
	if _, err := sr.templates.Get(ctx, id); err == nil {
		return id, nil
	} else if !errors.Is(err, tartarus.ErrNotFound) {
		return "", err
	}
	// The build serves every later create: a cancelled request must not
	// cut it short.
	ctx = context.WithoutCancel(ctx)
	start := a.cfg.Clock.Now()
	build := tartarus.NewID("sb-")
	cfg := &tartarus.VMConfig{ID: build, Template: img.Name, Image: img, CPUs: cpus, MemoryMB: memoryMB}
	if nic {
		cfg.Network = &tartarus.NetworkSpec{Mode: tartarus.NetworkNone}
	}
	defer func() {
		if err := sr.rt.Destroy(ctx, build); err != nil {
			a.log.Warn("destroy template snapshot builder", "sandbox", build, "err", err)
		}
	}()
	if _, err := sr.rt.Create(ctx, cfg); err != nil {
		return "", fmt.Errorf("template snapshot %s: create: %w", id, err)
	}
	if err := sr.rt.Start(ctx, build); err != nil {
		return "", fmt.Errorf("template snapshot %s: boot: %w", id, err)
	}
	for _, cmd := range templateWarmup {
		res, err := sr.rt.Exec(ctx, build, &tartarus.ExecRequest{Cmd: cmd, Timeout: time.Minute})
		if err != nil || res.ExitCode != 0 {
			// Only slower first commands: the snapshot is still good.
			a.log.Warn("template snapshot warm-up", "snapshot", id, "cmd", cmd, "err", err, "result", res)
		}
	}
	snap, err := sr.templates.CreateFromRunning(ctx, build, &nyx.CreateOptions{ID: id,
		Labels: map[string]string{"purpose": "template", "template": img.Name, "digest": img.Digest, "format": templateSnapshotFormat}})
	if err != nil {
		return "", fmt.Errorf("template snapshot %s: %w", id, err)
	}
	a.log.Info("template snapshot built", "runtime", sr.rt.Name(), "snapshot", id, "took", a.cfg.Clock.Now().Sub(start),
		"compressed_size", snap.CompressedSize)
	a.deleteStaleTemplateSnapshots(ctx, sr, img)
	return id, nil
}

func (a *Agent) deleteStaleTemplateSnapshots(ctx context.Context, sr *snapRuntime, img *tartarus.Image) {
	list, err := sr.templates.List(ctx)
	if err != nil {
		a.log.Warn("list template snapshots", "err", err)
		return
	}
	for _, s := range list {
		if s.Labels["template"] == img.Name && (s.Labels["digest"] != img.Digest || s.Labels["format"] != templateSnapshotFormat) {
			if err := sr.templates.Delete(ctx, s.ID); err != nil {
				a.log.Warn("delete stale template snapshot", "snapshot", s.ID, "err", err)
				continue
			}
			a.dropTemplateFiles(sr, s.ID)
			a.log.Info("deleted the snapshot of an older build of the template", "snapshot", s.ID)
		}
	}
}

// restoreOrBoot brings sandbox cfg.ID up: from a warm-pool sandbox already
// claimed (nothing to do), from the template's snapshot when the runtime
// can, or by booting. A failed restore falls back to a boot: the snapshot
// is an optimisation, not a requirement. It reports how it did it.
func (a *Agent) restoreOrBoot(ctx context.Context, rt tartarus.Runtime, cfg *tartarus.VMConfig) (string, error) {
	if sr, ok := a.snaps[rt.Name()]; ok && a.cfg.CreateFromSnapshot {
		snapID, err := a.templateSnapshot(ctx, sr, cfg.Image, cfg.MemoryMB, cfg.CPUs, cfg.Network != nil)
		if err == nil {
			err = a.restoreTemplate(ctx, sr, snapID, cfg)
			if err == nil && cfg.Network == nil {
				a.pools.want(poolKey{rt.Name(), cfg.Template, cfg.Image.Digest, cfg.MemoryMB, cfg.CPUs})
			}
			if err == nil {
				return "restored", nil
			}
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		a.log.Warn("create by restore failed; booting instead", "sandbox", cfg.ID, "template", cfg.Template, "err", err)
		if derr := rt.Destroy(context.WithoutCancel(ctx), cfg.ID); derr != nil {
			return "", fmt.Errorf("clear a failed restore: %w", derr)
		}
	}
	if _, err := rt.Create(ctx, cfg); err != nil {
		return "", err
	}
	return "booted", rt.Start(ctx, cfg.ID)
}

// claimWarm takes a pooled sandbox for a create of this shape, or returns
// "" when none is ready; with want set, it takes that pooled sandbox or
// none. It does not ask the runtime whether the sandbox still runs (a List
// asks every guest; too slow for this path): the filler drops pooled
// sandboxes that vanished each time it runs.
func (a *Agent) claimWarm(ctx context.Context, rt tartarus.Runtime, img *tartarus.Image, memoryMB, cpus int, want string) string {
	sr, ok := a.snaps[rt.Name()]
	if !ok || !a.cfg.CreateFromSnapshot || !a.pools.enabled() {
		return ""
	}
	k := poolKey{rt.Name(), img.Name, img.Digest, memoryMB, cpus}
	defer a.pools.want(k) // refill
	id := want
	if want == "" {
		id = a.pools.claim(k)
	} else if !a.pools.claimID(k, want) {
		id = ""
	}
	if id == "" {
		return ""
	}
	// Pooled sandboxes were kept from idle sleep; this one now follows
	// the normal policy.
	if err := sr.hyp.Forget(ctx, id); err != nil {
		a.log.Warn("reset the idle policy of a pooled sandbox", "sandbox", id, "err", err)
	}
	return id
}

// pruneWarm drops pooled sandboxes that their runtime no longer runs.
func (a *Agent) pruneWarm(ctx context.Context) {
	for _, sr := range a.snaps {
		list, err := sr.rt.List(ctx)
		if err != nil {
			continue
		}
		running := map[string]bool{}
		for _, in := range list {
			running[in.ID] = in.State == tartarus.InstanceRunning
		}
		a.pools.mu.Lock()
		for k, ids := range a.pools.ready {
			if k.runtime != sr.rt.Name() {
				continue
			}
			kept := ids[:0]
			for _, id := range ids {
				if running[id] {
					kept = append(kept, id)
					continue
				}
				a.log.Warn("warm pool sandbox vanished", "sandbox", id)
				go sr.rt.Destroy(context.WithoutCancel(ctx), id)
			}
			a.pools.ready[k] = kept
		}
		a.pools.mu.Unlock()
	}
}

func (a *Agent) instance(ctx context.Context, rt tartarus.Runtime, id string) *tartarus.Instance {
	list, err := rt.List(ctx)
	if err != nil {
		return nil
	}
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	return nil
}

// FillWarmPools tops up every wanted warm pool to its size (its template's
// target once SetPoolTargets was called, else PrewarmPoolSize), as far as
// the node's capacity allows, and destroys what a pool holds beyond it. Run calls it in the background; tests
// call it directly.
func (a *Agent) FillWarmPools(ctx context.Context) {
	a.pruneWarm(ctx)
	a.pools.mu.Lock()
	var keys []poolKey
	for k := range a.pools.wanted {
		if !a.pools.filling[k] {
			a.pools.filling[k] = true
			keys = append(keys, k)
		}
	}
	a.pools.mu.Unlock()
	for _, k := range keys {
		a.fillPool(ctx, k)
		a.pools.mu.Lock()
		delete(a.pools.filling, k)
		a.pools.mu.Unlock()
	}
}

func (a *Agent) fillPool(ctx context.Context, k poolKey) {
	sr, ok := a.snaps[k.runtime]
	if !ok {
		return
	}
	img, err := a.cfg.Images.Get(ctx, k.template)
	if err != nil {
		a.log.Warn("warm pool: template", "template", k.template, "err", err)
		return
	}
	if img.Digest != k.digest {
		a.dropPool(ctx, sr, k, "the template was rebuilt")
		return
	}
	// Up to parallel refills run at once; each holds a slot of sem and
	// says on finished when it is done.
	sem := make(chan struct{}, a.pools.parallel)
	finished := make(chan struct{}, a.pools.parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	var failed atomic.Bool
	for ctx.Err() == nil && !failed.Load() {
		sem <- struct{}{}
		a.pools.mu.Lock()
		n, f, size := len(a.pools.ready[k]), a.pools.inflight[k], a.pools.sizeOf(k)
		var excess []string
		if n > size {
			// The newest go first: the oldest have run their warm-up
			// longest.
			excess = slices.Clone(a.pools.ready[k][size:])
			a.pools.ready[k] = a.pools.ready[k][:size]
		}
		a.pools.mu.Unlock()
		if len(excess) > 0 {
			<-sem
			for _, id := range excess {
				if err := sr.rt.Destroy(context.WithoutCancel(ctx), id); err != nil {
					a.log.Warn("destroy a warm-pool sandbox beyond the target", "sandbox", id, "err", err)
				}
			}
			a.log.Info("warm pool shrunk", "template", k.template, "from", n, "to", size)
			return
		}
		if n+f >= size {
			<-sem
			if f == 0 {
				return
			}
			// Claims while refills run: look again when one lands.
			select {
			case <-finished:
			case <-ctx.Done():
			}
			continue
		}
		// Capacity counts the refills under way too.
		if err := a.checkCapacity(ctx, sr.rt, k.memoryMB, k.cpus); err != nil {
			<-sem
			a.log.Debug("warm pool not refilled", "template", k.template, "err", err)
			return
		}
		snapID, err := a.templateSnapshot(ctx, sr, img, k.memoryMB, k.cpus, false)
		if err != nil {
			<-sem
			a.log.Warn("warm pool: template snapshot", "template", k.template, "err", err)
			return
		}
		a.pools.mu.Lock()
		a.pools.inflight[k]++
		a.pools.mu.Unlock()
		wg.Go(func() {
			id, err := a.refillOne(ctx, sr, img, k, snapID)
			if err != nil {
				failed.Store(true)
				a.log.Warn("warm pool: refill", "template", k.template, "err", err)
			}
			a.pools.mu.Lock()
			a.pools.inflight[k]--
			if id != "" {
				a.pools.ready[k] = append(a.pools.ready[k], id)
			}
			a.pools.mu.Unlock()
			<-sem
			select {
			case finished <- struct{}{}:
			default:
			}
		})
	}
}

// refillOne makes one warm sandbox of k from snapshot snapID and runs its
// first command, and records how long that took.
func (a *Agent) refillOne(ctx context.Context, sr *snapRuntime, img *tartarus.Image, k poolKey, snapID string) (string, error) {
	start := a.cfg.Clock.Now()
	id := tartarus.NewID("sb-")
	cfg := &tartarus.VMConfig{ID: id, Template: k.template, Image: img, CPUs: k.cpus, MemoryMB: k.memoryMB}
	if err := a.restoreTemplate(ctx, sr, snapID, cfg); err != nil {
		_ = sr.rt.Destroy(context.WithoutCancel(ctx), id)
		return "", fmt.Errorf("restore: %w", err)
	}
	// An unclaimed sandbox is idle by nature; it must not hibernate.
	_ = sr.hyp.CancelScheduledSleep(id)
	// A guest restored from a snapshot runs its first command slowly
	// (under TCG, every code path of the guest's kernel and agent is
	// translated anew); run one now, so its claimant's first is fast.
	if _, err := sr.rt.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"true"}, Timeout: 30 * time.Second}); err != nil {
		a.log.Warn("warm pool: warm-up command", "sandbox", id, "err", err)
	}
	took := a.cfg.Clock.Now().Sub(start)
	a.pools.mu.Lock()
	a.pools.took = append(a.pools.took, took)
	if len(a.pools.took) > refillSamples {
		a.pools.took = a.pools.took[len(a.pools.took)-refillSamples:]
	}
	a.pools.mu.Unlock()
	a.log.Debug("warm pool sandbox ready", "sandbox", id, "template", k.template, "took", took)
	return id, nil
}

// dropPool destroys a pool's sandboxes and stops refilling it.
func (a *Agent) dropPool(ctx context.Context, sr *snapRuntime, k poolKey, why string) {
	a.pools.mu.Lock()
	ids := a.pools.ready[k]
	delete(a.pools.ready, k)
	delete(a.pools.wanted, k)
	a.pools.mu.Unlock()
	for _, id := range ids {
		if err := sr.rt.Destroy(context.WithoutCancel(ctx), id); err != nil {
			a.log.Warn("destroy a dropped warm-pool sandbox", "sandbox", id, "err", err)
		}
	}
	a.log.Info("warm pool dropped", "template", k.template, "sandboxes", len(ids), "why", why)
}

// Prewarm builds the snapshot of every template at the default shape on
// every runtime that can restore, and asks for their warm pools; errors
// are logged. The server calls it at start when asked to.
func (a *Agent) Prewarm(ctx context.Context) {
	if !a.cfg.CreateFromSnapshot {
		return
	}
	imgs, err := a.cfg.Images.List(ctx)
	if err != nil {
		a.log.Warn("prewarm: list templates", "err", err)
		return
	}
	for _, sr := range a.snaps {
		for _, img := range imgs {
			if _, err := a.templateSnapshot(ctx, sr, img, tartarus.DefaultMemoryMB, tartarus.DefaultCPUs, false); err != nil {
				a.log.Warn("prewarm: template snapshot", "runtime", sr.rt.Name(), "template", img.Name, "err", err)
				continue
			}
			a.pools.want(poolKey{sr.rt.Name(), img.Name, img.Digest, tartarus.DefaultMemoryMB, tartarus.DefaultCPUs})
		}
	}
}

// SetPoolTargets sets each template's warm-pool size, replacing the fixed
// PrewarmPoolSize from now on: a template not in targets keeps no pool.
// Pools of templates with a target are kept at the default shape on every
// runtime that can restore (besides the shapes creates asked for); the
// filler grows them and destroys what is beyond the target. Persephone's
// server loop calls it every few minutes. Bad targets are refused whole.
func (a *Agent) SetPoolTargets(ctx context.Context, targets map[string]int) error {
	for tpl, n := range targets {
		if n < 0 || n > maxPoolTarget {
			return tartarus.Errorf(tartarus.ErrInvalid, "warm pool target of %s: %d is outside 0..%d", tpl, n, maxPoolTarget)
		}
	}
	var keys []poolKey
	if a.cfg.CreateFromSnapshot {
		for tpl, n := range targets {
			if n == 0 {
				continue
			}
			img, err := a.cfg.Images.Get(ctx, tpl)
			if err != nil {
				a.log.Warn("warm pool target for a template this node lacks", "template", tpl, "err", err)
				continue
			}
			for _, sr := range a.snaps {
				keys = append(keys, poolKey{sr.rt.Name(), img.Name, img.Digest, tartarus.DefaultMemoryMB, tartarus.DefaultCPUs})
			}
		}
	}
	a.pools.mu.Lock()
	a.pools.targeted = true
	a.pools.targets = maps.Clone(targets)
	// Pools without a target and without sandboxes free their slot.
	for k := range a.pools.wanted {
		if a.pools.targets[k.template] == 0 && len(a.pools.ready[k]) == 0 {
			delete(a.pools.wanted, k)
		}
	}
	for _, k := range keys {
		if !a.pools.wanted[k] && len(a.pools.wanted) < maxPoolKeys {
			a.pools.wanted[k] = true
		}
	}
	a.pools.mu.Unlock()
	a.pools.wake()
	return nil
}

// maxPoolTarget bounds one template's warm-pool target.
const maxPoolTarget = 10000

// PoolTargets returns the targets set by SetPoolTargets, or nil while the
// pools keep the fixed PrewarmPoolSize.
func (a *Agent) PoolTargets() map[string]int {
	a.pools.mu.Lock()
	defer a.pools.mu.Unlock()
	if !a.pools.targeted {
		return nil
	}
	return maps.Clone(a.pools.targets)
}

// TemplatePoolSizes sums the ready sandboxes of each template's pools
// (every runtime and shape): what Persephone sizes.
func (a *Agent) TemplatePoolSizes() map[string]int {
	a.pools.mu.Lock()
	defer a.pools.mu.Unlock()
	out := map[string]int{}
	for k, ids := range a.pools.ready {
		out[k.template] += len(ids)
	}
	return out
}
