// Package hecatoncheir (named for the hundred-handed guards of Tartarus) is
// the node agent: it drives the enabled Runtimes of one host, records every
// sandbox's life in the store, recovers its sandboxes after a restart, and
// destroys sandboxes whose timeout has passed.
//
// For every runtime that implements tartarus.Snapshotter (and declares the
// capability) and when Config.Snapshots is set, it also hibernates and wakes
// sandboxes through Hypnos (idle detection from API activity and the
// guest's own, a per-sandbox "auto_hibernate_s"), wakes a hibernated
// sandbox transparently for exec and file calls, forks running sandboxes,
// and creates sandboxes by restoring a per-template snapshot, optionally
// from a warm pool of already-restored ones (see restore.go).
//
// On a single node it is embedded in `tartarus server`; the Olympus API calls
// it directly.
package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Catalog is the template catalog as the agent uses it (pkg/images
// implements it).
type Catalog interface {
	List(ctx context.Context) ([]*tartarus.Image, error)
	// Get returns a built template or an error wrapping tartarus.ErrNotFound.
	Get(ctx context.Context, name string) (*tartarus.Image, error)
}

// Config wires an Agent.
type Config struct {
	// Node is this host's name, recorded on each sandbox.
	Node  string
	Store store.Store
	// Runtimes are the enabled backends; the first is the default.
	Runtimes []tartarus.Runtime
	Images   Catalog
	Clock    clock.Clock
	Log      *slog.Logger
	// ExpiryInterval is how often Run looks for expired sandboxes
	// (default 5s).
	ExpiryInterval time.Duration

	// Snapshots is the blob store of snapshots (DATA/snapshots); nil turns
	// off hibernation, fork and creation by restore.
	Snapshots erebus.Store
	// SnapshotPrefix is put before every Erebus key this agent writes
	// ("nodes/NAME/"), so that agents sharing one store (S3) each keep
	// their own key space: Hypnos's and Recover's clean-up delete what no
	// local record refers to, which must never be another node's.
	SnapshotPrefix string
	// SnapshotTempDir holds snapshot files while they are packed or
	// unpacked (default os.TempDir()); best on the runtimes' file system.
	SnapshotTempDir string
	// Hypnos is the hibernation policy: DefaultIdleThreshold is the
	// server's --auto-hibernate (0: only sandboxes with their own
	// auto_hibernate_s sleep by themselves); PrewarmPoolSize is the warm
	// pool per template and shape (--warm-pool).
	Hypnos hypnos.HypnosConfig
	// CreateFromSnapshot creates sandboxes by restoring their template's
	// snapshot on runtimes that can.
	CreateFromSnapshot bool
	// TemplateCacheDir, if set, keeps template snapshots unpacked on local
	// disk so that a create copies files instead of fetching, verifying
	// and decompressing the stored snapshot (see tplcache.go). It must be
	// on the same file system as SnapshotTempDir and the runtimes' state.
	TemplateCacheDir string
}

// Validate reports every problem of cfg at once.
func (c *Config) Validate() error {
	var errs []error
	if !tartarus.ValidName(c.Node) {
		errs = append(errs, fmt.Errorf("node name %q is not a valid name", c.Node))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("no store"))
	}
	if len(c.Runtimes) == 0 {
		errs = append(errs, errors.New("no runtime enabled"))
	}
	if c.Images == nil {
		errs = append(errs, errors.New("no template catalog"))
	}
	seen := map[string]bool{}
	for _, rt := range c.Runtimes {
		if seen[rt.Name()] {
			errs = append(errs, fmt.Errorf("runtime %s enabled twice", rt.Name()))
		}
		seen[rt.Name()] = true
	}
	return errors.Join(errs...)
}

// Agent is the node agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	runtimes map[string]tartarus.Runtime

	snaps map[string]*snapRuntime // by runtime name: those that snapshot
	pools *warmPools

	mu    sync.Mutex
	locks map[string]*keyLock // per-sandbox lifecycle locks, while in use
}

// keyLock is one sandbox's lock; refs counts holders and waiters so the
// entry goes away when nobody needs it.
type keyLock struct {
	mu   sync.Mutex
	refs int
}

// New returns an agent. Call Recover before serving requests, and Run to
// expire sandboxes.
func New(cfg Config) (*Agent, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ExpiryInterval <= 0 {
		cfg.ExpiryInterval = 5 * time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("node agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Log.With("component", "hecatoncheir"),
		runtimes: map[string]tartarus.Runtime{}, locks: map[string]*keyLock{},
		snaps: map[string]*snapRuntime{}, pools: newWarmPools(cfg.Hypnos.PrewarmPoolSize)}
	for _, rt := range cfg.Runtimes {
		a.runtimes[rt.Name()] = rt
	}
	if err := a.setUpSnapshots(); err != nil {
		return nil, fmt.Errorf("node agent: %w", err)
	}
	return a, nil
}

// SnapshotRuntimes lists the runtimes whose sandboxes can hibernate, fork
// and be created by restore on this node.
func (a *Agent) SnapshotRuntimes() []string {
	var out []string
	for _, rt := range a.cfg.Runtimes {
		if _, ok := a.snaps[rt.Name()]; ok {
			out = append(out, rt.Name())
		}
	}
	return out
}

// Node is this agent's name.
func (a *Agent) Node() string { return a.cfg.Node }

// lock serializes lifecycle changes (create, pause, resume, destroy) of one
// sandbox within this agent; the store's compare-and-set guards the rest.
func (a *Agent) lock(id string) func() {
	a.mu.Lock()
	l, ok := a.locks[id]
	if !ok {
		l = &keyLock{}
		a.locks[id] = l
	}
	l.refs++
	a.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		a.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(a.locks, id)
		}
		a.mu.Unlock()
	}
}

// tryLock takes id's lock if nobody holds it.
func (a *Agent) tryLock(id string) (func(), bool) {
	a.mu.Lock()
	l, ok := a.locks[id]
	if !ok {
		l = &keyLock{}
		a.locks[id] = l
	}
	l.refs++
	a.mu.Unlock()
	release := func() {
		a.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(a.locks, id)
		}
		a.mu.Unlock()
	}
	if !l.mu.TryLock() {
		release()
		return nil, false
	}
	return func() { l.mu.Unlock(); release() }, true
}

func (a *Agent) runtime(name string) (tartarus.Runtime, error) {
	if name == "" {
		return a.cfg.Runtimes[0], nil
	}
	rt, ok := a.runtimes[name]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtime %q is not enabled on this node (enabled: %s)",
			name, strings.Join(a.RuntimeNames(), ", "))
	}
	return rt, nil
}

// RuntimeNames lists the enabled runtimes, default first.
func (a *Agent) RuntimeNames() []string {
	var out []string
	for _, rt := range a.cfg.Runtimes {
		out = append(out, rt.Name())
	}
	return out
}

// Create validates req, records the sandbox as creating, creates and starts
// it in its runtime, and records it running. A failure after the record
// exists leaves the sandbox failed with the error stored, and its remains
// destroyed even when ctx is cancelled.
func (a *Agent) Create(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	rt, img, err := a.checkCreate(ctx, req)
	if err != nil {
		return nil, err
	}

	// A warm-pool sandbox, when one is ready, becomes this sandbox.
	id := a.claimWarm(ctx, rt, img, req.MemoryMB, req.CPUs, "")
	claimed := id != ""
	if !claimed {
		id = tartarus.NewID("sb-")
	}
	sb := tartarus.NewSandbox(id, tenant, req, a.cfg.Clock.Now().UTC())
	sb.Runtime, sb.Node = rt.Name(), a.cfg.Node
	cfg := &tartarus.VMConfig{ID: sb.ID, Template: sb.Template, Image: img, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Env: sb.Env}
	how := "warm pool"
	return a.createWith(ctx, sb, func() error {
		if claimed {
			return nil
		}
		var err error
		how, err = a.restoreOrBoot(ctx, rt, cfg)
		return err
	}, "how", &how)
}

// checkCreate normalizes req and checks that this node can create it: the
// runtime is enabled and available, the shape fits its per-sandbox limits,
// and the template is built.
func (a *Agent) checkCreate(ctx context.Context, req *tartarus.CreateRequest) (tartarus.Runtime, *tartarus.Image, error) {
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
	img, err := a.cfg.Images.Get(ctx, req.Template)
	if err != nil {
		return nil, nil, fmt.Errorf("template %s: %w", req.Template, err)
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
	log := a.log.With("sandbox", sb.ID, "runtime", rt.Name(), "template", sb.Template)
	start := a.cfg.Clock.Now()
	err = up()
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
	if !classified(err) {
		// A boot that fails for no known reason is the node's trouble.
		err = fmt.Errorf("%w (%w)", err, tartarus.ErrUnavailable)
	}
	return nil, fmt.Errorf("create sandbox %s (recorded as failed): %w", sb.ID, err)
}

// classified reports whether err wraps one of the tartarus error classes.
func classified(err error) bool {
	for _, c := range []error{tartarus.ErrNotFound, tartarus.ErrAlreadyExists, tartarus.ErrInvalid,
		tartarus.ErrFailedPrecondition, tartarus.ErrResourceExhausted, tartarus.ErrUnavailable,
		tartarus.ErrNotImplemented, tartarus.ErrUnauthenticated, tartarus.ErrPermissionDenied, tartarus.ErrTimeout} {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

// Get returns one sandbox.
func (a *Agent) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return a.cfg.Store.Get(ctx, id)
}

// List returns the sandboxes matching f.
func (a *Agent) List(ctx context.Context, f store.Filter) ([]*tartarus.Sandbox, error) {
	return a.cfg.Store.List(ctx, f)
}

// Destroy moves a sandbox to terminating, destroys it in its runtime and
// records it terminated. Destroying a terminated or failed sandbox returns
// it unchanged. The runtime's Destroy runs even if ctx is cancelled.
func (a *Agent) Destroy(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	ctx = context.WithoutCancel(ctx)
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.State.Final() {
		return sb, nil
	}
	return a.destroy(ctx, sb, "")
}

// destroy does the work of Destroy; the caller holds the sandbox's lock.
func (a *Agent) destroy(ctx context.Context, sb *tartarus.Sandbox, reason string) (*tartarus.Sandbox, error) {
	log := a.log.With("sandbox", sb.ID)
	sb, err := a.cfg.Store.Move(ctx, sb.ID, sb.State, tartarus.StateTerminating, store.Change{At: a.cfg.Clock.Now().UTC()})
	if err != nil {
		return nil, err
	}
	rt, err := a.runtime(sb.Runtime)
	if err == nil {
		err = rt.Destroy(ctx, sb.ID)
	}
	if err == nil {
		a.forget(ctx, sb)
	}
	if err != nil {
		log.Error("destroy", "err", err)
		if _, merr := a.cfg.Store.Move(ctx, sb.ID, tartarus.StateTerminating, tartarus.StateFailed,
			store.Change{At: a.cfg.Clock.Now().UTC(), Error: "destroy: " + err.Error()}); merr != nil {
			log.Error("record failed destroy", "err", merr)
		}
		return nil, fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
	}
	sb, err = a.cfg.Store.Move(ctx, sb.ID, tartarus.StateTerminating, tartarus.StateTerminated,
		store.Change{At: a.cfg.Clock.Now().UTC()})
	if err != nil {
		return nil, err
	}
	log.Info("sandbox terminated", "reason", reason)
	return sb, nil
}

// running returns a sandbox that must be running, and its runtime.
func (a *Agent) running(ctx context.Context, id string) (*tartarus.Sandbox, tartarus.Runtime, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if sb.State != tartarus.StateRunning {
		return nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not running", id, sb.State)
	}
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, nil, err
	}
	a.touch(ctx, id)
	return sb, rt, nil
}

// touch records API activity; failing to record it is not worth failing the
// request for.
func (a *Agent) touch(ctx context.Context, id string) {
	for _, sr := range a.snaps {
		sr.hyp.Touch(id)
	}
	if err := a.cfg.Store.Touch(context.WithoutCancel(ctx), id, a.cfg.Clock.Now().UTC()); err != nil {
		a.log.Warn("record activity", "sandbox", id, "err", err)
	}
}

// Exec runs a command in a running sandbox, waking it first if it is
// hibernated. The sandbox's environment is applied under req.Env here too,
// so that it holds in sandboxes restored from a snapshot taken without it
// (a warm-pool sandbox).
func (a *Agent) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	sb, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	defer a.touch(ctx, id)
	if len(sb.Env) > 0 {
		r := *req
		r.Env = make(map[string]string, len(sb.Env)+len(req.Env))
		maps.Copy(r.Env, sb.Env)
		maps.Copy(r.Env, req.Env)
		req = &r
	}
	return rt.Exec(ctx, id, req)
}

// ReadFile streams a file out of a running sandbox, waking it if hibernated.
func (a *Agent) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	return rt.ReadFile(ctx, id, path)
}

// WriteFile streams r into a file of a running sandbox, waking it if hibernated.
func (a *Agent) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return err
	}
	defer a.touch(ctx, id)
	return rt.WriteFile(ctx, id, path, mode, r)
}

// ListFiles lists a directory of a running sandbox, waking it if hibernated.
func (a *Agent) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	return rt.ListFiles(ctx, id, path)
}

// Pause freezes a running sandbox. Pausing a paused sandbox is a no-op.
func (a *Agent) Pause(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return a.pauseResume(ctx, id, tartarus.StateRunning, tartarus.StatePaused, tartarus.Runtime.Pause)
}

// Resume continues a paused sandbox. Resuming a running sandbox is a no-op.
func (a *Agent) Resume(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return a.pauseResume(ctx, id, tartarus.StatePaused, tartarus.StateRunning, tartarus.Runtime.Resume)
}

func (a *Agent) pauseResume(ctx context.Context, id string, from, to tartarus.State,
	do func(tartarus.Runtime, context.Context, string) error) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.State == to {
		return sb, nil
	}
	if sb.State != from {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not %s", id, sb.State, from)
	}
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, err
	}
	// The VM's state must not be left behind the record's: finish the
	// change even when the caller goes away.
	ctx = context.WithoutCancel(ctx)
	if err := do(rt, ctx, id); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	a.touch(ctx, id)
	return a.cfg.Store.Move(ctx, id, from, to, store.Change{At: a.cfg.Clock.Now().UTC()})
}

// Counts counts the sandboxes in each state.
func (a *Agent) Counts(ctx context.Context) (map[tartarus.State]int, error) {
	return a.cfg.Store.CountByState(ctx)
}

// Templates lists the built templates.
func (a *Agent) Templates(ctx context.Context) ([]*tartarus.Image, error) {
	return a.cfg.Images.List(ctx)
}

// NodeInfo describes this node and what its runtimes can do.
type NodeInfo struct {
	Name     string                  `json:"name"`
	Runtimes []*tartarus.Fingerprint `json:"runtimes"`
	// DefaultRuntime is used when a create request names none.
	DefaultRuntime string `json:"default_runtime"`
	// Sandboxes counts this node's sandboxes that are not final.
	Sandboxes int `json:"sandboxes"`
	// SnapshotRuntimes can hibernate, fork and create by restore here.
	SnapshotRuntimes []string `json:"snapshot_runtimes,omitempty"`
	// WarmPools counts the ready sandboxes of each warm pool, by
	// "runtime/template/memory_mb/cpus".
	WarmPools map[string]int `json:"warm_pools,omitempty"`

	// In a cluster: whether the node is "up" or "down" (and why), where
	// its agent listens, its labels and last heartbeat, and what its
	// sandboxes hold of its CPUs and memory.
	State        string            `json:"state,omitempty"`
	DownReason   string            `json:"down_reason,omitempty"`
	Address      string            `json:"address,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	LastSeen     time.Time         `json:"last_seen,omitzero"`
	CPUs         int               `json:"cpus,omitempty"`
	MemoryMB     int               `json:"memory_mb,omitempty"`
	UsedCPUs     int               `json:"used_cpus,omitempty"`
	UsedMemoryMB int               `json:"used_memory_mb,omitempty"`
}

// ForgetNode refuses: a single node has only itself.
func (a *Agent) ForgetNode(ctx context.Context, name string) error {
	return tartarus.Errorf(tartarus.ErrFailedPrecondition, "node %s: a single-node server cannot forget its only node", name)
}

// Nodes reports this node, the only one.
func (a *Agent) Nodes(ctx context.Context) ([]*NodeInfo, error) {
	info, err := a.Info(ctx)
	if err != nil {
		return nil, err
	}
	return []*NodeInfo{info}, nil
}

// Info reports this node.
func (a *Agent) Info(ctx context.Context) (*NodeInfo, error) {
	info := &NodeInfo{Name: a.cfg.Node, DefaultRuntime: a.cfg.Runtimes[0].Name(),
		SnapshotRuntimes: a.SnapshotRuntimes(), WarmPools: a.PoolSizes()}
	for _, rt := range a.cfg.Runtimes {
		fp, err := rt.Fingerprint(ctx)
		if err != nil {
			fp = &tartarus.Fingerprint{Runtime: rt.Name(), Reason: err.Error()}
		}
		info.Runtimes = append(info.Runtimes, fp)
	}
	live, err := a.cfg.Store.List(ctx, store.Filter{Node: a.cfg.Node, States: liveStates})
	if err != nil {
		return nil, err
	}
	info.Sandboxes = len(live)
	return info, nil
}

// liveStates are the states that are not final.
var liveStates = slices.DeleteFunc(slices.Clone(tartarus.States), tartarus.State.Final)

// Ready returns nil when the node can create sandboxes: a runtime is
// available and at least one template is built.
func (a *Agent) Ready(ctx context.Context) error {
	var reasons []string
	avail := false
	for _, rt := range a.cfg.Runtimes {
		fp, err := rt.Fingerprint(ctx)
		switch {
		case err != nil:
			reasons = append(reasons, fmt.Sprintf("runtime %s: %v", rt.Name(), err))
		case !fp.Available:
			reasons = append(reasons, fmt.Sprintf("runtime %s: %s", rt.Name(), fp.Reason))
		default:
			avail = true
		}
	}
	if !avail {
		return tartarus.Errorf(tartarus.ErrUnavailable, "no runtime available (%s)", strings.Join(reasons, "; "))
	}
	imgs, err := a.cfg.Images.List(ctx)
	if err != nil {
		return tartarus.Errorf(tartarus.ErrUnavailable, "templates: %v", err)
	}
	if len(imgs) == 0 {
		return tartarus.Errorf(tartarus.ErrUnavailable, "no template is built (run `tartarus template build base`)")
	}
	return nil
}

// Run destroys expired sandboxes every ExpiryInterval, runs each
// runtime's Hypnos (idle sleep), and refills the warm pools, until ctx is
// done.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, sr := range a.snaps {
		wg.Go(func() { _ = sr.hyp.Run(ctx) })
	}
	if a.pools.size > 0 {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-a.pools.kick:
					a.FillWarmPools(ctx)
				}
			}
		})
	}
	t := a.cfg.Clock.NewTicker(a.cfg.ExpiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			if _, err := a.Expire(ctx); err != nil {
				a.log.Error("expire sandboxes", "err", err)
			}
		}
	}
}

// Expire destroys this node's sandboxes whose expiry time has passed and
// returns their ids.
func (a *Agent) Expire(ctx context.Context) ([]string, error) {
	live, err := a.cfg.Store.List(ctx, store.Filter{Node: a.cfg.Node, States: liveStates})
	if err != nil {
		return nil, err
	}
	now := a.cfg.Clock.Now()
	var done []string
	var errs []error
	for _, sb := range live {
		if sb.ExpiresAt.IsZero() || now.Before(sb.ExpiresAt) || sb.State == tartarus.StateTerminating {
			continue
		}
		if err := a.expire(ctx, sb.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, sb.ID)
	}
	sort.Strings(done)
	return done, errors.Join(errs...)
}

func (a *Agent) expire(ctx context.Context, id string) error {
	unlock := a.lock(id)
	defer unlock()
	ctx = context.WithoutCancel(ctx)
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State.Final() {
		return nil
	}
	a.log.Info("sandbox expired", "sandbox", id, "expires_at", sb.ExpiresAt)
	_, err = a.destroy(ctx, sb, "expired: timeout_s reached")
	return err
}
