package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/templates"
	"github.com/tartarus-sandbox/tartarus/pkg/thanatos"
)

// nodeOptions are the flags of a node that runs sandboxes: `tartarus
// server` on a single node and `tartarus agent` in a cluster.
type nodeOptions struct {
	node        string
	runtimes    []string
	accel       string
	jail        string
	consoleMax  int64
	mapMemory   bool
	bootTimeout time.Duration
	bootRetries int
	unsafeFake  bool

	autoHibernate      time.Duration
	warmPool           int
	createFromSnapshot bool
	prewarm            bool
	maxConcurrentWakes int

	// onShutdown is what SIGTERM does to the node's sandboxes (keep,
	// terminate or hibernate), each termination with shutdownGrace.
	onShutdown    string
	shutdownGrace time.Duration

	// callbackAllow lets termination callbacks and webhooks reach these
	// hosts although they are loopback, private or this host's own.
	callbackAllow []string

	// capacityMemoryMB is hecatoncheir.Config.CapacityMemoryMB.
	capacityMemoryMB int
	// cpuOvercommit is hecatoncheir.Config.CPUOvercommit.
	cpuOvercommit int

	// registries are the registries template imports and builds may pull
	// from (templates.RegistryPolicy).
	registries       []string
	registryInsecure bool

	// snapshotPrefix is hecatoncheir.Config.SnapshotPrefix: set by
	// `tartarus agent` when its snapshot store is shared with other nodes.
	snapshotPrefix string

	network networkOptions
}

func addNodeFlags(f *pflag.FlagSet, o *nodeOptions) {
	f.StringVar(&o.node, "node", defaultNodeName(), "this node's name")
	f.StringSliceVar(&o.runtimes, "runtimes", []string{"microvm"}, "runtimes to enable, default first")
	f.StringVar(&o.accel, "accel", "auto", "microvm acceleration: auto, kvm or tcg")
	f.Int64Var(&o.consoleMax, "console-log-max", microvm.DefaultConsoleMaxBytes, "bytes of a microVM's console log kept on the host (console.log, rotated once to console.log.1)")
	f.BoolVar(&o.mapMemory, "map-template-memory", true, "microvm: keep each template snapshot's memory as a file that creates map copy-on-write instead of reading it (faster creates, template pages shared between sandboxes)")
	f.StringSliceVar(&o.registries, "registry", nil, "a registry (host or host:port) template imports and Dockerfile FROM may pull images from; repeat for more (none: no pulls, since a pull fetches from whatever host a tenant names)")
	f.BoolVar(&o.registryInsecure, "registry-insecure", false, "let pulls that ask for it use plain HTTP to the --registry hosts (loopback ones always may)")
	f.StringVar(&o.jail, "jail", "auto", "confine each microVM's QEMU (own uid, namespaces, cgroup, seccomp): on, off, or auto (on where the host can)")
	f.DurationVar(&o.bootTimeout, "boot-timeout", 0, "microvm boot timeout per attempt (0: the driver's default)")
	f.IntVar(&o.bootRetries, "boot-retries", 0, "microvm boot retries after a timeout (0: the driver's default)")
	f.DurationVar(&o.autoHibernate, "auto-hibernate", 0, "hibernate sandboxes idle this long (0: only those created with auto_hibernate_s)")
	f.IntVar(&o.warmPool, "warm-pool", 0, "already-restored sandboxes to keep per template and shape, claimed on create")
	f.BoolVar(&o.createFromSnapshot, "create-from-snapshot", true, "create sandboxes by restoring a per-template snapshot where the runtime can (else boot)")
	f.BoolVar(&o.prewarm, "prewarm", false, "build every template's snapshot (and warm pool) at start instead of on first create")
	f.IntVar(&o.maxConcurrentWakes, "max-concurrent-wakes", hypnos.DefaultMaxConcurrentWakes, "hibernated sandboxes restored at once")
	f.StringVar(&o.onShutdown, "on-shutdown", hecatoncheir.ShutdownKeep, "what SIGTERM does to this node's sandboxes: keep (adopted at the next start), terminate, or hibernate")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 10*time.Second, "grace period of each sandbox's termination with --on-shutdown terminate|hibernate")
	f.StringSliceVar(&o.callbackAllow, "callback-allow-hosts", nil, "hosts, addresses or CIDR prefixes that termination callbacks may reach although loopback, private or this host's own")
	f.IntVar(&o.capacityMemoryMB, "capacity-memory-mb", 0, "memory the node's sandboxes may hold together, in MiB, checked on forks, warm pools and heat-managed creates (0: the host's)")
	f.IntVar(&o.cpuOvercommit, "cpu-overcommit", hecatoncheir.DefaultCPUOvercommit, "sandbox CPUs each host CPU may back, checked on every create (idle sandboxes cost next to no CPU; raise it to hold more of them)")
	addNetworkFlags(f, &o.network)
	f.BoolVar(&o.unsafeFake, "unsafe-fake-runtime", false, "allow --runtimes fake: commands run on the HOST without isolation (tests only)")
	_ = f.MarkHidden("unsafe-fake-runtime")
}

// node is an opened node agent with the runtimes it drives.
type node struct {
	agent    *hecatoncheir.Agent
	runtimes []tartarus.Runtime
	nets     *netns.Manager // nil without --network
	log      *slog.Logger
	catalog  *images.Catalog
}

// openNode opens the runtimes and the node agent keeping its sandboxes in
// st, its templates in DATA/images, its VMs in DATA/vms, and its snapshots
// in snaps (DATA/snapshots when nil).
func openNode(ctx context.Context, o *nodeOptions, dataDir string, st store.Store, snaps erebus.Store, clk clock.Clock, log *slog.Logger,
	onPhase func(context.Context, *tartarus.TerminationStatus)) (*node, error) {
	if o.warmPool < 0 || o.autoHibernate < 0 || o.maxConcurrentWakes < 1 {
		return nil, errors.New("--warm-pool and --auto-hibernate must not be negative, --max-concurrent-wakes at least 1")
	}
	cat, err := images.Open(images.Options{DataDir: dataDir, Clock: clk, Log: log})
	if err != nil {
		return nil, err
	}
	probe, _ := cat.Get(ctx, "base") // without a built image microvm uses TCG unprobed
	rcfg := runtimes.Config{DataDir: dataDir, Log: log, Accel: o.accel, BootTimeout: o.bootTimeout,
		BootRetries: o.bootRetries, ProbeImage: probe, AllowUnsafeFake: o.unsafeFake, ConsoleMaxBytes: o.consoleMax,
		CopyMemory: !o.mapMemory}
	if slices.Contains(o.runtimes, microvm.Name) {
		if rcfg.Jail, err = openJail(o.jail, filepath.Join(dataDir, "jail"), log); err != nil {
			return nil, err
		}
	}
	n := &node{log: log, catalog: cat}
	defaultNet, err := o.network.defaultSpec()
	if err != nil {
		return nil, err
	}
	if n.nets, err = o.network.open(ctx, log); err != nil {
		return nil, err
	}
	if n.nets != nil {
		rcfg.Networks = n.nets
	}
	for _, name := range o.runtimes {
		rt, err := runtimes.Open(ctx, name, rcfg)
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
	switch o.onShutdown {
	case hecatoncheir.ShutdownKeep, hecatoncheir.ShutdownTerminate, hecatoncheir.ShutdownHibernate:
	default:
		n.Close()
		return nil, fmt.Errorf("--on-shutdown %q: want keep, terminate or hibernate", o.onShutdown)
	}
	term, err := terminationConfig(st, dataDir, o.callbackAllow)
	term.OnPhase = onPhase
	if err != nil {
		n.Close()
		return nil, err
	}
	n.agent, err = hecatoncheir.New(hecatoncheir.Config{Node: o.node, Store: st, Runtimes: n.runtimes, Images: cat, Clock: clk, Log: log,
		Termination: term, CapacityMemoryMB: o.capacityMemoryMB, CPUOvercommit: o.cpuOvercommit,
		Snapshots: snaps, SnapshotPrefix: o.snapshotPrefix, SnapshotTempDir: snapTmp, CreateFromSnapshot: o.createFromSnapshot,
		TemplateCacheDir: filepath.Join(dataDir, "template-cache"),
		Hypnos: hypnos.HypnosConfig{DefaultIdleThreshold: o.autoHibernate, PrewarmPoolSize: o.warmPool,
			MaxConcurrentWakes: o.maxConcurrentWakes},
		Networks: n.agentNetworks(), DefaultNetwork: defaultNet})
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
// shutdown does what --on-shutdown says to the node's sandboxes, bounded by
// their grace period plus a minute.
func (n *node) shutdown(ctx context.Context, o *nodeOptions) {
	if o.onShutdown == hecatoncheir.ShutdownKeep {
		n.log.Info("sandboxes keep running and are adopted at the next start")
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownGrace+time.Minute)
	defer cancel()
	if err := n.agent.Shutdown(sctx, o.onShutdown, o.shutdownGrace); err != nil {
		n.log.Error("shut down sandboxes", "mode", o.onShutdown, "err", err)
	}
}

func (n *node) Close() {
	for _, rt := range n.runtimes {
		if c, ok := rt.(tartarus.RuntimeCloser); ok {
			if err := c.Close(); err != nil {
				n.log.Warn("close runtime", "runtime", rt.Name(), "err", err)
			}
		}
	}
	if n.nets != nil {
		// The sandbox networks stay for the next start's recovery.
		if err := n.nets.Close(); err != nil {
			n.log.Warn("close network manager", "err", err)
		}
	}
}

// terminationConfig keeps terminations in the store's database and signs
// callbacks with the node's key (DATA/callback.key, made on first start).
func terminationConfig(st store.Store, dataDir string, allow []string) (thanatos.Config, error) {
	var c thanatos.Config
	if tk, ok := st.(store.TerminationKeeper); ok {
		c.Journal = tk.Terminations()
	}
	key, err := loadOrMakeKey(filepath.Join(dataDir, "callback.key"))
	if err != nil {
		return c, fmt.Errorf("callback signing key: %w", err)
	}
	c.CallbackKey = func(string) ([]byte, error) { return key, nil }
	c.AllowHosts = allow
	return c, nil
}

// loadOrMakeKey reads a 32-byte key from path, or makes one there (0600).
func loadOrMakeKey(path string) ([]byte, error) {
	if b, err := os.ReadFile(path); err == nil {
		if len(b) != 32 {
			return nil, fmt.Errorf("%s: want 32 bytes, found %d", path, len(b))
		}
		return b, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, err
	}
	return key, f.Close()
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

// registryPolicy is which registries this node's builds pull from.
func (o *nodeOptions) registryPolicy() templates.RegistryPolicy {
	return templates.RegistryPolicy{Allow: o.registries, Insecure: o.registryInsecure}
}
