package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/kampe/runtimes"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/runtime/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/runtime/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// serverDataDir is the default --data-dir (API.md): /var/lib/tartarus for
// root, ~/.tartarus otherwise.
func serverDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/tartarus"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".tartarus")
	}
	return ".tartarus"
}

type serverOptions struct {
	listen, dataDir, logLevel, node string
	database                        string
	runtimes                        []string
	accel                           string
	bootTimeout                     time.Duration
	bootRetries                     int
	maxUploadMB                     int64
	unsafeFake                      bool
	shutdownTimeout                 time.Duration

	autoHibernate      time.Duration
	warmPool           int
	createFromSnapshot bool
	prewarm            bool
	maxConcurrentWakes int
}

func newServerCmd() *cobra.Command {
	o := &serverOptions{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the API server with an embedded node agent (single node)",
		Long: `Run the Tartarus API with an embedded node agent.

The server keeps its state in DATA/tartarus.db, its templates in DATA/images,
its VMs' state in DATA/vms and its snapshots (hibernated sandboxes, template
snapshots) in DATA/snapshots. On SIGTERM it stops serving and leaves the VMs
running: the next start adopts them; hibernated sandboxes wake on demand.

On runtimes that can snapshot (microvm, gvisor), sandboxes hibernate after
--auto-hibernate of idle time (or their own "auto_hibernate_s"), wake by
themselves when an exec or a file call needs them, fork, and are created by
restoring a per-template snapshot (--create-from-snapshot) and, with
--warm-pool N, claimed from N already-restored sandboxes per template.`,
		Args: cobra.NoArgs,
	}
	auth := addAuthFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:7700", "address to serve the API on")
	f.StringVar(&o.dataDir, "data-dir", serverDataDir(), "data directory")
	f.StringVar(&o.database, "database", "", "postgres://… to keep state in Postgres (default: SQLite in the data directory)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.node, "node", defaultNodeName(), "this node's name")
	f.StringSliceVar(&o.runtimes, "runtimes", []string{"microvm"}, "runtimes to enable, default first")
	f.StringVar(&o.accel, "accel", "auto", "microvm acceleration: auto, kvm or tcg")
	f.DurationVar(&o.bootTimeout, "boot-timeout", 0, "microvm boot timeout per attempt (0: the driver's default)")
	f.IntVar(&o.bootRetries, "boot-retries", 0, "microvm boot retries after a timeout (0: the driver's default)")
	f.Int64Var(&o.maxUploadMB, "max-upload-mb", olympus.DefaultMaxUpload>>20, "largest file upload, in MiB")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long to wait for requests in flight on SIGTERM")
	f.DurationVar(&o.autoHibernate, "auto-hibernate", 0, "hibernate sandboxes idle this long (0: only those created with auto_hibernate_s)")
	f.IntVar(&o.warmPool, "warm-pool", 0, "already-restored sandboxes to keep per template and shape, claimed on create")
	f.BoolVar(&o.createFromSnapshot, "create-from-snapshot", true, "create sandboxes by restoring a per-template snapshot where the runtime can (else boot)")
	f.BoolVar(&o.prewarm, "prewarm", false, "build every template's snapshot (and warm pool) at start instead of on first create")
	f.IntVar(&o.maxConcurrentWakes, "max-concurrent-wakes", hypnos.DefaultMaxConcurrentWakes, "hibernated sandboxes restored at once")
	f.BoolVar(&o.unsafeFake, "unsafe-fake-runtime", false, "allow --runtimes fake: commands run on the HOST without isolation (tests only)")
	_ = f.MarkHidden("unsafe-fake-runtime")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runServer(cmd.Context(), o, auth, cmd.OutOrStdout())
	}
	return cmd
}

// defaultNodeName is the host name, made a valid name.
func defaultNodeName() string {
	h, _ := os.Hostname()
	h = strings.ToLower(h)
	h = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '-'
	}, h)
	if !tartarus.ValidName(h) {
		return "node-1"
	}
	return h
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func runServer(ctx context.Context, o *serverOptions, authOpts *authOptions, out interface{ Write([]byte) (int, error) }) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// Everything below lives until shutdown, not until the first signal:
	// VMs and their state must not be tied to ctx.
	life := context.WithoutCancel(ctx)

	dsn := o.database
	if dsn == "" {
		dsn = filepath.Join(o.dataDir, "tartarus.db")
	}
	st, err := store.Open(life, dsn)
	if err != nil {
		return err
	}
	defer st.Close()
	cat, err := images.Open(images.Options{DataDir: o.dataDir, Log: log})
	if err != nil {
		return err
	}
	var rts []tartarus.Runtime
	for _, name := range o.runtimes {
		rt, err := openRuntime(life, name, o, cat, log)
		if err != nil {
			return err
		}
		fp, _ := rt.Fingerprint(life)
		if fp != nil {
			log.Info("runtime", "name", name, "available", fp.Available, "accel", fp.Accel, "reason", fp.Reason,
				"max_cpus", fp.MaxCPUs, "max_memory_mb", fp.MaxMemoryMB)
		}
		rts = append(rts, rt)
	}

	auth, err := authOpts.setup(life, o.dataDir, log)
	if err != nil {
		return err
	}
	defer auth.Close()

	if o.warmPool < 0 || o.autoHibernate < 0 || o.maxConcurrentWakes < 1 {
		return errors.New("--warm-pool and --auto-hibernate must not be negative, --max-concurrent-wakes at least 1")
	}
	snaps, err := erebus.NewLocal(filepath.Join(o.dataDir, "snapshots"))
	if err != nil {
		return err
	}
	snapTmp := filepath.Join(o.dataDir, "tmp")
	if err := os.MkdirAll(snapTmp, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	agent, err := hecatoncheir.New(hecatoncheir.Config{Node: o.node, Store: st, Runtimes: rts, Images: cat, Log: log,
		Snapshots: snaps, SnapshotTempDir: snapTmp, CreateFromSnapshot: o.createFromSnapshot,
		TemplateCacheDir: filepath.Join(o.dataDir, "template-cache"),
		Hypnos: hypnos.HypnosConfig{DefaultIdleThreshold: o.autoHibernate, PrewarmPoolSize: o.warmPool,
			MaxConcurrentWakes: o.maxConcurrentWakes}})
	if err != nil {
		return err
	}
	log.Info("snapshots", "runtimes", agent.SnapshotRuntimes(), "auto_hibernate", o.autoHibernate,
		"create_from_snapshot", o.createFromSnapshot, "warm_pool", o.warmPool)
	rep, err := agent.Recover(life)
	if err != nil {
		// Partial recovery still leaves a usable node; say what failed.
		log.Error("recover", "err", err)
	}
	if rep != nil {
		log.Info("recovered sandboxes", "adopted", len(rep.Adopted), "lost", len(rep.Lost),
			"finished", len(rep.Finished), "orphans_destroyed", len(rep.Orphans), "hibernated", len(rep.Hibernated))
	}

	api, err := olympus.New(olympus.Config{Backend: agent, Guard: auth.Guard, Routes: auth.Routes,
		MaxUploadBytes: o.maxUploadMB << 20, Collectors: []prometheus.Collector{auth.Metrics}, Log: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if auth.TLS != nil {
		ln = tls.NewListener(ln, auth.TLS)
		scheme = "https"
	}
	// No write timeout: exec streams and file transfers may run long.
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	loopCtx, stopLoop := context.WithCancel(life)
	loopDone := make(chan struct{})
	go func() { _ = agent.Run(loopCtx); close(loopDone) }()
	if o.prewarm {
		go agent.Prewarm(loopCtx)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	url := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	log.Info("serving", "url", url, "node", o.node, "data_dir", o.dataDir)
	fmt.Fprintf(out, "Tartarus is listening on %s\n", url)
	if err := agent.Ready(life); err != nil {
		fmt.Fprintf(out, "Not ready to create sandboxes yet: %v\n", err)
	} else {
		fmt.Fprintf(out, "Try:\n  export TARTARUS_URL=%s\n", url)
		if auth.AdminKeyFile != "" && o.dataDir != serverDataDir() {
			fmt.Fprintf(out, "  export TARTARUS_DATA_DIR=%s   # where the CLI finds admin.key\n", o.dataDir)
		}
		cli := cliName()
		fmt.Fprintf(out, "  id=$(%s sandbox create --template python) && %s exec $id -- python3 -c 'print(6*7)'\n", cli, cli)
	}

	select {
	case err = <-serveErr:
	case <-ctx.Done():
		log.Info("shutting down; sandboxes keep running and are adopted at the next start")
		sctx, cancel := context.WithTimeout(life, o.shutdownTimeout)
		err = srv.Shutdown(sctx)
		cancel()
	}
	stopLoop()
	<-loopDone
	// Let go of the VMs without stopping them; the next start adopts them.
	for _, rt := range rts {
		if c, ok := rt.(interface{ Close() error }); ok {
			if cerr := c.Close(); cerr != nil {
				log.Warn("close runtime", "runtime", rt.Name(), "err", cerr)
			}
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func openRuntime(ctx context.Context, name string, o *serverOptions, cat *images.Catalog, log *slog.Logger) (tartarus.Runtime, error) {
	switch name {
	case "microvm":
		probe, _ := cat.Get(ctx, "base") // without a built image the driver uses TCG unprobed
		return microvm.New(ctx, microvm.Config{StateDir: filepath.Join(o.dataDir, "vms"), Log: log, Accel: o.accel,
			BootTimeout: o.bootTimeout, BootRetries: o.bootRetries, ProbeImage: probe})
	case "gvisor", "docker", "containerd":
		return runtimes.Open(ctx, name, runtimes.Config{DataDir: o.dataDir, Log: log})
	case "fake":
		if !o.unsafeFake {
			return nil, errors.New("runtime fake runs commands on the host without isolation; it needs --unsafe-fake-runtime and is for tests only")
		}
		log.Warn("UNSAFE: the fake runtime runs sandbox commands as host processes with no isolation (tests only)")
		// The fake can snapshot (files only), so the hibernation paths of
		// the server can be driven end to end without a VM.
		return fake.New(fake.Config{StateDir: filepath.Join(o.dataDir, "fake-vms"), Log: log,
			Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true}})
	}
	return nil, fmt.Errorf("--runtimes: %q is not a runtime this build offers (microvm, gvisor, docker, containerd)", name)
}

// cliName is how the user can call this binary: "tartarus" when that is on
// PATH, else its full path (after `make run` it lives in ./bin).
func cliName() string {
	self, err := os.Executable()
	if err != nil {
		return "tartarus"
	}
	if onPath, err := exec.LookPath("tartarus"); err == nil {
		if a, err := filepath.EvalSymlinks(onPath); err == nil {
			if b, err := filepath.EvalSymlinks(self); err == nil && a == b {
				return "tartarus"
			}
		}
	}
	return self
}
