package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	"github.com/tartarus-sandbox/tartarus/pkg/kampe/runtimes"
	"github.com/tartarus-sandbox/tartarus/pkg/runtime/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/runtime/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// nodeOptions are the flags of a node that runs sandboxes: `tartarus
// server` on a single node and `tartarus agent` in a cluster.
type nodeOptions struct {
	node        string
	runtimes    []string
	accel       string
	jail        string
	consoleMax  int64
	bootTimeout time.Duration
	bootRetries int
	unsafeFake  bool

	autoHibernate      time.Duration
	warmPool           int
	createFromSnapshot bool
	prewarm            bool
	maxConcurrentWakes int

	// snapshotPrefix is hecatoncheir.Config.SnapshotPrefix: set by
	// `tartarus agent` when its snapshot store is shared with other nodes.
	snapshotPrefix string
}

func addNodeFlags(f *pflag.FlagSet, o *nodeOptions) {
	f.StringVar(&o.node, "node", defaultNodeName(), "this node's name")
	f.StringSliceVar(&o.runtimes, "runtimes", []string{"microvm"}, "runtimes to enable, default first")
	f.StringVar(&o.accel, "accel", "auto", "microvm acceleration: auto, kvm or tcg")
	f.Int64Var(&o.consoleMax, "console-log-max", microvm.DefaultConsoleMaxBytes, "bytes of a microVM's console log kept on the host (console.log, rotated once to console.log.1)")
	f.StringVar(&o.jail, "jail", "auto", "confine each microVM's QEMU (own uid, namespaces, cgroup, seccomp): on, off, or auto (on where the host can)")
	f.DurationVar(&o.bootTimeout, "boot-timeout", 0, "microvm boot timeout per attempt (0: the driver's default)")
	f.IntVar(&o.bootRetries, "boot-retries", 0, "microvm boot retries after a timeout (0: the driver's default)")
	f.DurationVar(&o.autoHibernate, "auto-hibernate", 0, "hibernate sandboxes idle this long (0: only those created with auto_hibernate_s)")
	f.IntVar(&o.warmPool, "warm-pool", 0, "already-restored sandboxes to keep per template and shape, claimed on create")
	f.BoolVar(&o.createFromSnapshot, "create-from-snapshot", true, "create sandboxes by restoring a per-template snapshot where the runtime can (else boot)")
	f.BoolVar(&o.prewarm, "prewarm", false, "build every template's snapshot (and warm pool) at start instead of on first create")
	f.IntVar(&o.maxConcurrentWakes, "max-concurrent-wakes", hypnos.DefaultMaxConcurrentWakes, "hibernated sandboxes restored at once")
	f.BoolVar(&o.unsafeFake, "unsafe-fake-runtime", false, "allow --runtimes fake: commands run on the HOST without isolation (tests only)")
	_ = f.MarkHidden("unsafe-fake-runtime")
}

// node is an opened node agent with the runtimes it drives.
type node struct {
	agent    *hecatoncheir.Agent
	runtimes []tartarus.Runtime
	log      *slog.Logger
}

// openNode opens the runtimes and the node agent keeping its sandboxes in
// st, its templates in DATA/images, its VMs in DATA/vms, and its snapshots
// in snaps (DATA/snapshots when nil).
func openNode(ctx context.Context, o *nodeOptions, dataDir string, st store.Store, snaps erebus.Store, log *slog.Logger) (*node, error) {
	if o.warmPool < 0 || o.autoHibernate < 0 || o.maxConcurrentWakes < 1 {
		return nil, errors.New("--warm-pool and --auto-hibernate must not be negative, --max-concurrent-wakes at least 1")
	}
	cat, err := images.Open(images.Options{DataDir: dataDir, Log: log})
	if err != nil {
		return nil, err
	}
	n := &node{log: log}
	for _, name := range o.runtimes {
		rt, err := openRuntime(ctx, name, o, dataDir, cat, log)
		if err != nil {
			n.Close()
			return nil, err
		}
		fp, _ := rt.Fingerprint(ctx)
		if fp != nil {
			log.Info("runtime", "name", name, "available", fp.Available, "accel", fp.Accel, "reason", fp.Reason,
				"max_cpus", fp.MaxCPUs, "max_memory_mb", fp.MaxMemoryMB)
		}
		n.runtimes = append(n.runtimes, rt)
	}
	if snaps == nil {
		if snaps, err = erebus.NewLocal(filepath.Join(dataDir, "snapshots")); err != nil {
			n.Close()
			return nil, err
		}
	}
	snapTmp := filepath.Join(dataDir, "tmp")
	if err := os.MkdirAll(snapTmp, 0o700); err != nil {
		n.Close()
		return nil, fmt.Errorf("data dir: %w", err)
	}
	n.agent, err = hecatoncheir.New(hecatoncheir.Config{Node: o.node, Store: st, Runtimes: n.runtimes, Images: cat, Log: log,
		Snapshots: snaps, SnapshotPrefix: o.snapshotPrefix, SnapshotTempDir: snapTmp, CreateFromSnapshot: o.createFromSnapshot,
		TemplateCacheDir: filepath.Join(dataDir, "template-cache"),
		Hypnos: hypnos.HypnosConfig{DefaultIdleThreshold: o.autoHibernate, PrewarmPoolSize: o.warmPool,
			MaxConcurrentWakes: o.maxConcurrentWakes}})
	if err != nil {
		n.Close()
		return nil, err
	}
	log.Info("snapshots", "runtimes", n.agent.SnapshotRuntimes(), "auto_hibernate", o.autoHibernate,
		"create_from_snapshot", o.createFromSnapshot, "warm_pool", o.warmPool)
	rep, err := n.agent.Recover(ctx)
	if err != nil {
		// Partial recovery still leaves a usable node; say what failed.
		log.Error("recover", "err", err)
	}
	if rep != nil {
		log.Info("recovered sandboxes", "adopted", len(rep.Adopted), "lost", len(rep.Lost),
			"finished", len(rep.Finished), "orphans_destroyed", len(rep.Orphans), "hibernated", len(rep.Hibernated))
	}
	return n, nil
}

// Close lets go of the VMs without stopping them; the next start adopts
// them.
func (n *node) Close() {
	for _, rt := range n.runtimes {
		if c, ok := rt.(interface{ Close() error }); ok {
			if err := c.Close(); err != nil {
				n.log.Warn("close runtime", "runtime", rt.Name(), "err", err)
			}
		}
	}
}

func openRuntime(ctx context.Context, name string, o *nodeOptions, dataDir string, cat *images.Catalog, log *slog.Logger) (tartarus.Runtime, error) {
	switch name {
	case "microvm":
		probe, _ := cat.Get(ctx, "base") // without a built image the driver uses TCG unprobed
		stateDir := filepath.Join(dataDir, "vms")
		j, err := openJail(o.jail, filepath.Join(dataDir, "jail"), log)
		if err != nil {
			return nil, err
		}
		return microvm.New(ctx, microvm.Config{StateDir: stateDir, Log: log, Accel: o.accel,
			BootTimeout: o.bootTimeout, BootRetries: o.bootRetries, ProbeImage: probe, Jail: j, ConsoleMaxBytes: o.consoleMax})
	case "gvisor", "docker", "containerd":
		return runtimes.Open(ctx, name, runtimes.Config{DataDir: dataDir, Log: log})
	case "fake":
		if !o.unsafeFake {
			return nil, errors.New("runtime fake runs commands on the host without isolation; it needs --unsafe-fake-runtime and is for tests only")
		}
		log.Warn("UNSAFE: the fake runtime runs sandbox commands as host processes with no isolation (tests only)")
		// The fake can snapshot (files only), so the hibernation paths of
		// the server can be driven end to end without a VM.
		return fake.New(fake.Config{StateDir: filepath.Join(dataDir, "fake-vms"), Log: log,
			Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true}})
	}
	return nil, fmt.Errorf("--runtimes: %q is not a runtime this build offers (microvm, gvisor, docker, containerd)", name)
}

// openJail opens the microVM jail as --jail asks; nil means unconfined,
// which is warned about at every start.
func openJail(mode, jailDir string, log *slog.Logger) (*jail.Jail, error) {
	const unconfined = "UNCONFINED: each microVM's QEMU runs as root with no jail; a QEMU escape is root on this host"
	switch mode {
	case "off":
		log.Warn(unconfined + " (--jail=off)")
		return nil, nil
	case "on", "auto", "":
	default:
		return nil, fmt.Errorf("--jail %q: want on, off or auto", mode)
	}
	j, err := jail.New(jail.Config{StateDir: jailDir})
	if err != nil {
		if mode == "on" {
			return nil, fmt.Errorf("--jail=on: %w", err)
		}
		log.Warn(unconfined+" (this host cannot jail)", "err", err)
		return nil, nil
	}
	info := j.Info()
	log.Info("microvm jail", "uids", info.UIDRange, "cgroup", info.CgroupVersion, "cgroup_parent", info.CgroupParent)
	return j, nil
}
