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
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/templates"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
)

// serverDataDir is the default --data-dir (API.md): /var/lib/tartarus for
// root, ~/.tartarus otherwise.
// The embedded node agent is the single node's backend.
var _ olympus.Backend = (*hecatoncheir.Agent)(nil)

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
	nodeOptions
	cluster                   clusterOptions
	seasons                   seasonOptions
	listen, dataDir, logLevel string
	database                  string
	maxUploadMB               int64
	shutdownTimeout           time.Duration
	quarantine                quarantineOptions
	sandboxDomain             string
	portTokenKeyFile          string
	heat                      heatOptions
	e2b                       e2bOptions
}

// heatOptions are the flags of heat classes (docs/heat.md).
type heatOptions struct {
	classes    string
	enforceAll bool
	queueWait  time.Duration
	policy     string
}

func newServerCmd() *cobra.Command {
	o := &serverOptions{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the API server: a single node, or one replica of a cluster",
		Long: `Run the Tartarus API with an embedded node agent.

The server keeps its state in DATA/tartarus.db, its templates in DATA/images,
its VMs' state in DATA/vms and its snapshots (hibernated sandboxes, template
snapshots) in DATA/snapshots. On SIGTERM it stops serving and leaves the VMs
running: the next start adopts them; hibernated sandboxes wake on demand.

On runtimes that can snapshot (microvm, gvisor), sandboxes hibernate after
--auto-hibernate of idle time (or their own "auto_hibernate_s"), wake by
themselves when an exec or a file call needs them, fork, and are created by
restoring a per-template snapshot (--create-from-snapshot) and, with
--warm-pool N, claimed from N already-restored sandboxes per template.

With --agent-listen the server is instead one replica of a cluster: it runs
no sandboxes itself, keeps its state in Postgres (--database postgres://…,
shared with the other replicas), hears the other replicas over Redis
(--redis), and places sandboxes on the node agents (` + "`tartarus agent`" + `) that
connect to --agent-listen with mutual TLS (--agent-cert, --agent-key,
--agent-ca). See docs/cluster.md.`,
		Args: cobra.NoArgs,
	}
	auth := addAuthFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:7700", "address to serve the API on")
	f.StringVar(&o.dataDir, "data-dir", serverDataDir(), "data directory")
	f.StringVar(&o.database, "database", "", "postgres://… to keep state in Postgres (default: SQLite in the data directory)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.Int64Var(&o.maxUploadMB, "max-upload-mb", olympus.DefaultMaxUpload>>20, "largest file upload, in MiB")
	f.StringVar(&o.portTokenKeyFile, "port-token-key-file", "", "key (32 bytes or more) that signs the sandboxes' port access tokens; made if missing; replace it to revoke every token (default <data-dir>/port-token.key; replicas share one)")
	f.StringVar(&o.sandboxDomain, "sandbox-domain", "", "route requests for PORT-SANDBOXID.DOMAIN to that port of that sandbox (point a wildcard DNS name at the server)")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long to wait for requests in flight on SIGTERM")
	f.StringVar(&o.quarantine.policyFile, "quarantine-policy", "", "quarantine policy file (YAML or JSON, docs/quarantine.md) set at start")
	f.DurationVar(&o.quarantine.interval, "quarantine-interval", 5*time.Second, "how often the quarantine triggers look at every sandbox")
	f.StringVar(&o.quarantine.evidenceStore, "quarantine-evidence-store", "", "where quarantine evidence is kept, apart from snapshots: a directory or s3://BUCKET[/PREFIX]?endpoint=HOST:PORT (default DATA/evidence)")
	addNodeFlags(f, &o.nodeOptions)
	addClusterFlags(f, &o.cluster)
	f.StringVar(&o.heat.classes, "heat-classes", "", "YAML or JSON file of resource classes (default: ember, flame, blaze, inferno)")
	f.BoolVar(&o.heat.enforceAll, "heat-enforce-all", false, "size and limit every create by its heat's class, not only those that set heat_hint, resource_class or max_duration_s")
	f.StringVar(&o.heat.policy, "queue-policy", string(phlegethon.PolicyFair), "order of the admission queues: fair (weighted fair share across heats) or fifo (arrival order, for comparison)")
	f.DurationVar(&o.heat.queueWait, "queue-timeout", phlegethon.MaxQueueTimeout, "longest wait in an admission queue that a create may ask for with queue_timeout_s")
	addSeasonFlags(f, &o.seasons)
	addE2BFlags(f, &o.e2b)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.cluster.agentListen != "" {
			// A replica runs no sandboxes: node flags belong on the agents.
			nodeFlags := pflag.NewFlagSet("node", pflag.ContinueOnError)
			addNodeFlags(nodeFlags, &nodeOptions{})
			var misplaced []string
			nodeFlags.VisitAll(func(nf *pflag.Flag) {
				if cmd.Flags().Changed(nf.Name) {
					misplaced = append(misplaced, "--"+nf.Name)
				}
			})
			if len(misplaced) > 0 {
				return fmt.Errorf("%s: a replica (--agent-listen) runs no sandboxes; give these to `tartarus agent` on each node",
					strings.Join(misplaced, ", "))
			}
		}
		if err := o.e2b.validate(); err != nil {
			return err
		}
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
	// The one clock of this server: every part whose behaviour time decides
	// reads it.
	clk := clock.System{}

	dsn := o.database
	if dsn == "" {
		dsn = filepath.Join(o.dataDir, "tartarus.db")
	}
	st, err := store.Open(life, dsn)
	if err != nil {
		return err
	}
	defer st.Close()
	authOpts.database = o.database
	authOpts.clock = clk
	auth, err := authOpts.setup(life, o.dataDir, log)
	if err != nil {
		return err
	}
	defer auth.Close()

	// A single node runs its sandboxes itself; a replica of a cluster
	// hands them to node agents.
	var (
		be         olympus.Backend
		run        func(context.Context) error
		prewarm    func(context.Context)
		sampler    *hecatoncheir.Sampler
		metrics    olympus.MetricsSource
		quarantine *typhon.Manager
		collectors = []prometheus.Collector{auth.Metrics}
		role       = "node " + o.node
		agent      *hecatoncheir.Agent
		builds     *templates.Builder
		// clusterBuilds runs a replica's builds and imports on its agents.
		clusterBuilds olympus.TemplateBuilds
	)
	// runQuarantine ticks the quarantine on a replica (nil: quarantine.Run).
	var runQuarantine func(context.Context)
	if o.cluster.agentListen != "" {
		cl, aln, closeBus, err := openCluster(life, &o.cluster, st, clk, log)
		if err != nil {
			return err
		}
		defer closeBus()
		agentSrv := &http.Server{Handler: cl.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go func() { _ = agentSrv.Serve(aln) }()
		defer agentSrv.Close()
		log.Info("serving node agents", "address", aln.Addr().String(), "placement", o.cluster.placement)
		be, run, role = cl, cl.Run, "cluster replica (agents on "+aln.Addr().String()+")"
		clusterBuilds = cl.TemplateBuilds()
		if err := enableClusterHeat(life, cl, &o.heat); err != nil {
			return err
		}
		collectors = append(collectors, cl.HeatRouter().Collector())
		if quarantine, err = openClusterQuarantine(life, &o.quarantine, st, cl, o.dataDir, clk, log, auth.Audit); err != nil {
			return err
		}
		runQuarantine = func(ctx context.Context) { cl.RunQuarantine(ctx, quarantine) }
	} else {
		netMetrics := &collectorList{}
		o.network.metrics = netMetrics
		n, err := openNode(life, &o.nodeOptions, o.dataDir, st, nil, clk, log, auditPhases(auth.Audit, clk))
		if err != nil {
			return err
		}
		defer n.Close()
		defer n.shutdown(ctx, &o.nodeOptions)
		if err := enableHeat(life, n.agent, st, &o.heat); err != nil {
			return err
		}
		be, run, agent = n.agent, n.agent.Run, n.agent
		builds = templates.NewBuilder(n.agent, n.catalog, log, clk)
		builds.SetRegistryPolicy(o.registryPolicy())
		collectors = append(collectors, n.agent.Terminations().Collector(), n.agent.HeatRouter().Collector())
		collectors = append(collectors, netMetrics.cs...)
		sampler = hecatoncheir.NewSampler(n.agent, hecatoncheir.SamplerConfig{})
		metrics = sampler
		if quarantine, err = openQuarantine(life, &o.quarantine, st, n.agent, o.dataDir, clk, log, auth.Audit); err != nil {
			return err
		}
		if o.prewarm {
			prewarm = n.agent.Prewarm
		}
	}

	season, err := openSeasons(life, &o.seasons, st, be, agent, clk, log)
	if err != nil {
		return err
	}
	collectors = append(collectors, season.collector)
	tokenKey, err := portTokenKey(o.portTokenKeyFile, o.dataDir)
	if err != nil {
		return err
	}
	ocfg := olympus.Config{Backend: be, Guard: auth.Guard, Routes: season.Routes(auth.Routes, auth.Guard),
		MaxUploadBytes: o.maxUploadMB << 20, Collectors: collectors, Metrics: metrics, Log: log,
		SandboxDomain: o.sandboxDomain, PortTokenKey: tokenKey}
	if quarantine != nil {
		ocfg.Quarantine = quarantine
	}
	if builds != nil {
		ocfg.Builds = builds
	} else if clusterBuilds != nil {
		ocfg.Builds = clusterBuilds
	}
	api, err := olympus.New(ocfg)
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
	go func() {
		var wg sync.WaitGroup
		wg.Go(func() { _ = season.svc.Run(loopCtx) })
		_ = run(loopCtx)
		wg.Wait()
		close(loopDone)
	}()
	if prewarm != nil {
		go prewarm(loopCtx)
	}
	if sampler != nil {
		go sampler.Run(loopCtx)
	}
	if runQuarantine != nil {
		go runQuarantine(loopCtx)
	} else if quarantine != nil {
		go quarantine.Run(loopCtx)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	e2bSrv, err := startE2B(&o.e2b, api, log, out)
	if err != nil {
		_ = srv.Close()
		stopLoop()
		<-loopDone
		return err
	}

	url := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	log.Info("serving", "url", url, "as", role, "data_dir", o.dataDir)
	fmt.Fprintf(out, "Tartarus is listening on %s\n", url)
	if o.cluster.agentListen != "" {
		// Agents register over the next seconds; which templates they
		// have is theirs to say.
		fmt.Fprintf(out, "Try:\n  export TARTARUS_URL=%s\n  %s node ls\n", url, cliName())
	} else if err := be.Ready(life); err != nil {
		fmt.Fprintf(out, "Not ready to create sandboxes yet: %v\n", err)
	} else {
		fmt.Fprintf(out, "Try:\n  export TARTARUS_URL=%s\n", url)
		if auth.AdminKeyFile != "" && o.dataDir != serverDataDir() {
			fmt.Fprintf(out, "  export TARTARUS_DATA_DIR=%s   # where the CLI finds admin.key\n", o.dataDir)
		}
		cli := cliName()
		fmt.Fprintf(out, "  id=$(%s sandbox create --template python) && %s exec $id -- python3 -c 'print(6*7)'\n", cli, cli)
	}

	err = serveUntil(ctx, srv, serveErr, o.shutdownTimeout, log)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
	e2bSrv.shutdown(sctx)
	cancel()
	stopLoop()
	<-loopDone
	return err
}

// enableHeat turns on heat classes on the single node, keeping the queue,
// pools and observations in the store's database.
func enableHeat(ctx context.Context, a *hecatoncheir.Agent, st store.Store, o *heatOptions) error {
	hc := hecatoncheir.HeatConfig{Router: phlegethon.Config{EnforceAll: o.enforceAll}}
	if o.classes != "" {
		cs, err := phlegethon.LoadClasses(o.classes)
		if err != nil {
			return fmt.Errorf("--heat-classes: %w", err)
		}
		hc.Router.Classes = cs
	}
	if o.queueWait < time.Second || o.queueWait > phlegethon.MaxQueueTimeout {
		return fmt.Errorf("--queue-timeout %s: must be between 1s and %s", o.queueWait, phlegethon.MaxQueueTimeout)
	}
	hc.Queue.MaxTimeout = o.queueWait
	hc.Queue.Policy = phlegethon.Policy(o.policy)
	hc.Queue.DefaultTimeout = min(phlegethon.DefaultQueueTimeout, o.queueWait)
	hc.Queue.Policy = phlegethon.Policy(o.policy)
	if hk, ok := st.(store.HeatKeeper); ok {
		hc.Store = hk.Heat()
	}
	return a.EnableHeat(ctx, hc)
}

// serveUntil waits until srv fails (serveErr) or ctx ends; then it shuts
// srv down, giving the requests in flight up to timeout. VMs are not
// stopped: the next start adopts them.
func serveUntil(ctx context.Context, srv *http.Server, serveErr <-chan error, timeout time.Duration, log *slog.Logger) error {
	var err error
	select {
	case err = <-serveErr:
	case <-ctx.Done():
		log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		err = srv.Shutdown(sctx)
		cancel()
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
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

// auditPhases writes each termination phase to the audit log, as the
// system's own action on the sandbox (nil without an audit log).
func auditPhases(audit func(context.Context, *cerberus.AuditEntry) error, clk clock.Clock) func(context.Context, *tartarus.TerminationStatus) {
	if audit == nil {
		return nil
	}
	return func(ctx context.Context, st *tartarus.TerminationStatus) {
		result := cerberus.AuditResultSuccess
		if st.Phase == tartarus.PhaseFailed {
			result = cerberus.AuditResultError
		}
		_ = audit(ctx, &cerberus.AuditEntry{
			Timestamp: clk.Now(), Action: cerberus.Action("terminate"),
			Identity: &cerberus.Identity{Type: cerberus.IdentityTypeService, ID: "thanatos", TenantID: st.Tenant},
			Resource: cerberus.Resource{Type: cerberus.ResourceTypeSandbox, ID: st.SandboxID, TenantID: st.Tenant},
			Result:   result, Reason: "termination " + string(st.Phase) + " (" + string(st.Reason) + ")",
			ErrorMessage: st.ErrorMessage,
		})
	}
}
