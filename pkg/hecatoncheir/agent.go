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
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/thanatos"

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
	Node string
	// Store holds the sandboxes. When it is also a store.SleepRecordKeeper,
	// Hypnos keeps its sleep records there; otherwise in Snapshots.
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
	// Termination configures how sandboxes end (pkg/thanatos): its journal
	// (nil keeps terminations in memory, lost with the process), webhooks,
	// callback keys, grace and checkpoint limits. Target, Clock and Logger
	// are the agent's own and need not be set.
	Termination thanatos.Config
	// CapacityMemoryMB caps the memory the node's capacity check counts
	// as its own (0: the host's); the rest is left to other work.
	CapacityMemoryMB int
	// CPUOvercommit is how many sandbox CPUs one host CPU backs in the
	// node's capacity check (0: DefaultCPUOvercommit). Idle sandboxes
	// cost a host CPU next to nothing, so a host meant to hold many of
	// them raises it.
	CPUOvercommit int
	// Networks, when set, is the node's sandbox network manager (the
	// same one the microvm runtime builds networks with): updates, the
	// connection log, exposed ports, clean-up on recovery.
	Networks Networks
	// DefaultNetwork is the network a sandbox gets when its create asks
	// for none, on runtimes that can give one; nil: no network (only
	// loopback), as before networking existed.
	DefaultNetwork *tartarus.NetworkSpec
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
	if c.CapacityMemoryMB < 0 {
		errs = append(errs, fmt.Errorf("capacity memory %d MiB is negative", c.CapacityMemoryMB))
	}
	if c.CPUOvercommit < 0 {
		errs = append(errs, fmt.Errorf("cpu overcommit %d is negative", c.CPUOvercommit))
	}
	if c.DefaultNetwork != nil {
		if err := c.DefaultNetwork.Check(); err != nil {
			errs = append(errs, fmt.Errorf("default network: %w", err))
		} else if c.Networks == nil && c.DefaultNetwork.Mode != tartarus.NetworkNone {
			errs = append(errs, fmt.Errorf("default network mode %s needs a network manager", c.DefaultNetwork.Mode))
		}
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

	creates createCounts // by template and how, for cold-create metrics

	term  *thanatos.Manager // every ending goes through it
	heat  *heatState        // heat classes and admission queues; nil when off
	work  workCounter       // exec and file calls under way, per sandbox
	execs execLog           // the API's last commands per sandbox (quarantine evidence)
	dflts execDefaults      // each template's working directory and user, for execs
	// strict are the sandboxes every restore of which runs under the
	// strict seccomp filter (quarantine.go).
	strict strictSet

	mu    sync.Mutex
	locks map[string]*keyLock // per-sandbox lifecycle locks, while in use
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
	if err := a.setUpTermination(); err != nil {
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

// Run destroys expired sandboxes every ExpiryInterval, runs each
// runtime's Hypnos (idle sleep), and refills the warm pools, until ctx is
// done.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, sr := range a.snaps {
		wg.Go(func() { _ = sr.hyp.Run(ctx) })
	}
	// The filler also runs without a fixed pool size: Persephone may set
	// targets later (SetPoolTargets).
	if len(a.snaps) > 0 {
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
	if a.heat != nil {
		a.runHeat(ctx, &wg)
	}
	// Terminations a crash interrupted finish first (Recover left their
	// sandboxes to them).
	if n, err := a.term.Resume(ctx); err != nil {
		a.log.Error("resume terminations", "err", err)
	} else if n > 0 {
		a.log.Info("resumed terminations", "count", n)
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
			if _, err := a.term.CollectCheckpoints(ctx); err != nil {
				a.log.Error("collect expired checkpoints", "err", err)
			}
		}
	}
}
