package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebusopen"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/link"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/templates"
)

type agentOptions struct {
	nodeOptions
	servers                    []string
	labels                     []string
	dataDir, listen, advertise string
	tlsCert, tlsKey, tlsCA     string
	serverNames                []string
	snapshots                  string
	logLevel                   string
	heartbeat, shutdownTimeout time.Duration
}

func newAgentCmd() *cobra.Command {
	o := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent --server URL[,URL…] --name NODE --advertise https://HOST:PORT --tls-cert F --tls-key F --tls-ca F",
		Short: "Run a node agent that takes its work from the API servers (many nodes)",
		Long: `Run this host as one node of a multi-node Tartarus.

The agent runs sandboxes for the API servers (their agent listener, the
URLs given with --server): it sends them heartbeats with this
node's capacity, runtimes and sandboxes, takes their commands (create,
destroy, pause, hibernate, …), and reports what it changes by itself
(expiry, idle hibernation). The servers send exec and file streams to its
node API on --listen, which they reach at --advertise.

Both directions use mutual TLS with certificates of the operator's CA
(--tls-ca): the agent's certificate (--tls-cert, --tls-key) names it
"agent:NODE" and is both its client certificate and the node API's server
certificate; only certificates naming a service (the servers') may call the
node API. "tartarus certs dev --client agent:NODE --host HOST" makes a
development set.

The agent keeps its sandboxes in DATA/agent.db, its templates in
DATA/images and its VMs' state in DATA/vms. Snapshots (hibernated sandboxes)
go to DATA/snapshots, or to --snapshots, a store the nodes share, so that
a hibernated sandbox of a node that went down can wake on another.
On SIGTERM it stops and leaves the VMs running: the next start adopts them.`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.servers, "server", nil, "the servers' agent listeners, https://HOST:PORT, comma separated (tried in turn)")
	f.StringVar(&o.dataDir, "data-dir", serverDataDir(), "data directory")
	f.StringSliceVar(&o.labels, "labels", nil, "labels for placement, key=value, comma separated (for example pool=gpu,zone=a)")
	f.StringVar(&o.listen, "listen", "0.0.0.0:7701", "address to serve the node API on")
	f.StringVar(&o.advertise, "advertise", "", "the node API as the servers reach it, https://HOST:PORT (default: https://LISTEN when --listen names a host)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "this agent's certificate (PEM), naming agent:NODE")
	f.StringVar(&o.tlsKey, "tls-key", "", "the certificate's private key (PEM)")
	f.StringVar(&o.tlsCA, "tls-ca", "", "the CA certificate (PEM) of the servers' and agents' certificates")
	f.StringSliceVar(&o.serverNames, "server-name", []string{link.DefaultServerName}, "service names (service:NAME) of the servers' certificates: only they may call this node")
	f.StringVar(&o.snapshots, "snapshots", "", "snapshot store shared by the nodes: a directory on shared storage or s3://BUCKET[/PREFIX]?endpoint=HOST:PORT (default: DATA/snapshots, this node only)")
	f.DurationVar(&o.heartbeat, "heartbeat", 0, "heartbeat interval until a server says otherwise (default 2s)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long to wait for node API requests in flight on SIGTERM")
	addNodeFlags(f, &o.nodeOptions)
	// In a cluster the node's name is --name; --node stays as an alias.
	f.StringVar(&o.node, "name", defaultNodeName(), "this node's name (its certificate names agent:NAME)")
	_ = f.MarkHidden("node")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runAgent(cmd.Context(), o, cmd.OutOrStdout())
	}
	return cmd
}

// agentSetup is what the flags resolve to before anything is opened.
type agentSetup struct {
	labels    map[string]string
	advertise string
	client    *tls.Config // towards the servers
	server    *tls.Config // the node API
	cas       *x509.CertPool
}

// check reads the flags and the certificates, reporting every problem at
// once.
func (o *agentOptions) check() (*agentSetup, error) {
	var errs []error
	s := &agentSetup{labels: map[string]string{}}
	if len(o.servers) == 0 {
		errs = append(errs, errors.New("--server: give the URL of at least one server's agent listener (https://HOST:PORT)"))
	}
	for _, u := range o.servers {
		if err := checkHTTPS(u); err != nil {
			errs = append(errs, fmt.Errorf("--server: %w", err))
		}
	}
	if !tartarus.ValidName(o.node) {
		errs = append(errs, fmt.Errorf("--name %q: want 1-64 characters of a-z, 0-9, '-', '_', '.'", o.node))
	}
	for _, l := range o.labels {
		k, v, ok := strings.Cut(l, "=")
		switch {
		case !ok || k == "":
			errs = append(errs, fmt.Errorf("--labels: %q is not key=value", l))
		case s.labels[k] != "":
			errs = append(errs, fmt.Errorf("--labels: %q is given twice", k))
		default:
			s.labels[k] = v
		}
	}
	s.advertise = o.advertise
	if s.advertise == "" {
		host, port, err := net.SplitHostPort(o.listen)
		if err == nil && host != "" && !net.ParseIP(host).IsUnspecified() {
			s.advertise = "https://" + net.JoinHostPort(host, port)
		} else {
			errs = append(errs, fmt.Errorf("--advertise: give the https://HOST:PORT the servers reach this node at (--listen %s names no host)", o.listen))
		}
	} else if err := checkHTTPS(s.advertise); err != nil {
		errs = append(errs, fmt.Errorf("--advertise: %w", err))
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: want HOST:PORT", o.listen))
	}
	if err := s.loadTLS(o); err != nil {
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

func checkHTTPS(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		return fmt.Errorf("%q is not https://HOST:PORT", s)
	}
	return nil
}

// loadTLS reads the agent's certificate and the CA: the same certificate
// serves the node API and identifies the agent to the servers.
func (s *agentSetup) loadTLS(o *agentOptions) error {
	var missing []string
	for _, f := range []struct{ flag, val string }{{"--tls-cert", o.tlsCert}, {"--tls-key", o.tlsKey}, {"--tls-ca", o.tlsCA}} {
		if f.val == "" {
			missing = append(missing, f.flag)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: an agent talks to the servers over mutual TLS only (tartarus certs dev --client agent:NODE makes development certificates)",
			strings.Join(missing, ", "))
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	caPEM, err := os.ReadFile(o.tlsCA)
	if err != nil {
		return fmt.Errorf("--tls-ca: %w", err)
	}
	s.cas = x509.NewCertPool()
	if !s.cas.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("--tls-ca %s: no PEM certificate in it", o.tlsCA)
	}
	// The certificate must name this node: the servers know the agent by it.
	if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
		m := &cerberus.MTLSConfig{ClientCAs: s.cas, Clock: clock.System{}}
		id, err := m.Verify(&cerberus.MTLSCredential{Certificate: leaf})
		switch {
		case err != nil:
			return fmt.Errorf("--tls-cert %s: %w", o.tlsCert, err)
		case id.Type != cerberus.IdentityTypeAgent || id.ID != o.node:
			return fmt.Errorf("--tls-cert %s names %s:%s, not agent:%s (--name)", o.tlsCert, id.Type, id.ID, o.node)
		}
	}
	s.client = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: s.cas, MinVersion: tls.VersionTLS12}
	s.server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: s.cas, MinVersion: tls.VersionTLS12}
	return nil
}

// openSnapshots is the one place the --snapshots spec is turned into a
// store: "" is DATA/snapshots, this node's alone (nil: openNode's
// default); anything else is storage the nodes share, a directory (on a
// shared file system) or s3://… (erebusopen.Open). Shared storage is also
// what lets a hibernated sandbox of a node that went down wake elsewhere.
func openSnapshots(ctx context.Context, spec string, log *slog.Logger) (st erebus.Store, shared bool, err error) {
	if spec == "" {
		return nil, false, nil
	}
	st, err = erebusopen.Open(ctx, spec, log)
	if err != nil {
		return nil, false, fmt.Errorf("--snapshots: %w", err)
	}
	return st, true, nil
}

func runAgent(ctx context.Context, o *agentOptions, out io.Writer) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	setup, err := o.check()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	log = log.With("node", o.node)
	// The one clock of this agent: every part whose behaviour time decides
	// reads it.
	clk := clock.System{}
	// VMs and their state live until shutdown, not until the first signal.
	life := context.WithoutCancel(ctx)

	snaps, shared, err := openSnapshots(life, o.snapshots, log)
	if err != nil {
		return err
	}
	if shared {
		// Nodes sharing a store keep their own key space in it; see
		// hecatoncheir.Config.SnapshotPrefix.
		o.snapshotPrefix = "nodes/" + o.node + "/"
	}
	sql, err := store.OpenSQLite(life, filepath.Join(o.dataDir, "agent.db"))
	if err != nil {
		return err
	}
	defer sql.Close()
	st, changes := link.Watch(sql)
	n, err := openNode(life, &o.nodeOptions, o.dataDir, st, snaps, clk, log, nil)
	if err != nil {
		return err
	}
	defer n.Close()
	defer n.shutdown(ctx, &o.nodeOptions)
	agent := n.agent

	// Builds and imports a server forwards run here; the server shares
	// what they make with the other nodes.
	builds := templates.NewBuilder(agent, n.catalog, log, clk)
	builds.SetRegistryPolicy(o.registryPolicy())
	l, err := link.New(link.Config{Agent: agent, Builds: builds, Changes: changes, Servers: o.servers, TLS: setup.client,
		ClientCAs: setup.cas, ServerNames: o.serverNames, Address: setup.advertise, Labels: setup.labels, SharedSnapshots: shared,
		CapacityMemoryMB: o.capacityMemoryMB, HeartbeatInterval: o.heartbeat, Clock: clk, Log: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ln = tls.NewListener(ln, setup.server)
	// No write timeout: exec streams and file transfers may run long.
	srv := &http.Server{Handler: l.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	loopCtx, stopLoops := context.WithCancel(life)
	agentDone, linkDone := make(chan struct{}), make(chan struct{})
	go func() { _ = agent.Run(loopCtx); close(agentDone) }()
	go func() { _ = l.Run(loopCtx); close(linkDone) }()
	if o.prewarm {
		go agent.Prewarm(loopCtx)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	log.Info("agent running", "node_api", ln.Addr(), "advertise", setup.advertise, "servers", o.servers,
		"labels", setup.labels, "shared_snapshots", shared, "data_dir", o.dataDir)
	fmt.Fprintf(out, "Tartarus agent %s: node API on https://%s (advertised as %s), servers %s\n",
		o.node, ln.Addr(), setup.advertise, strings.Join(o.servers, ", "))
	if err := agent.Ready(life); err != nil {
		fmt.Fprintf(out, "Not ready to create sandboxes yet: %v\n", err)
	}

	err = serveUntil(ctx, srv, serveErr, o.shutdownTimeout, log)
	stopLoops()
	<-linkDone
	<-agentDone
	return err
}
