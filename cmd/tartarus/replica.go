package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/cluster"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
)

// clusterOptions are the flags that make `tartarus server` one replica of
// a multi-node cluster instead of a single node.
type clusterOptions struct {
	redis                           string
	agentListen                     string
	agentCert, agentKey, agentCA    string
	placement                       string
	nodeTimeout, heartbeat, cmdWait time.Duration
}

func addClusterFlags(f *pflag.FlagSet, o *clusterOptions) {
	f.StringVar(&o.agentListen, "agent-listen", "", "serve node agents on this address: makes this server a replica of a multi-node cluster with no sandboxes of its own (needs --database postgres://…)")
	f.StringVar(&o.redis, "redis", "", "redis://HOST:PORT/DB carrying events between replicas (without it, replicas poll the database each second)")
	f.StringVar(&o.agentCert, "agent-cert", "", "certificate (PEM) this replica shows agents, as server and as client")
	f.StringVar(&o.agentKey, "agent-key", "", "key of --agent-cert")
	f.StringVar(&o.agentCA, "agent-ca", "", "CA (PEM) that issued the agents' certificates")
	f.StringVar(&o.placement, "placement", "spread", "where new sandboxes go: spread (least loaded node) or pack (fullest node that fits)")
	f.DurationVar(&o.nodeTimeout, "node-timeout", 10*time.Second, "mark a node down after this long without a heartbeat")
	f.DurationVar(&o.heartbeat, "heartbeat-interval", 2*time.Second, "how often agents are told to heartbeat")
	f.DurationVar(&o.cmdWait, "command-wait", 3*time.Minute, "how long a call waits for a node to carry out its command")
}

// agentTLS loads the replica's certificate and the agents' CA.
func (o *clusterOptions) agentTLS() (cert tls.Certificate, pool *x509.CertPool, err error) {
	if o.agentCert == "" || o.agentKey == "" || o.agentCA == "" {
		return cert, nil, errors.New("--agent-listen needs --agent-cert, --agent-key and --agent-ca: agents and replicas talk over mutual TLS (`tartarus certs dev` makes a development CA)")
	}
	cert, err = tls.LoadX509KeyPair(o.agentCert, o.agentKey)
	if err != nil {
		return cert, nil, fmt.Errorf("--agent-cert/--agent-key: %w", err)
	}
	caPEM, err := os.ReadFile(o.agentCA)
	if err != nil {
		return cert, nil, fmt.Errorf("--agent-ca: %w", err)
	}
	pool = x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return cert, nil, fmt.Errorf("--agent-ca %s: no PEM certificate in it", o.agentCA)
	}
	return cert, pool, nil
}

// openCluster makes the replica's backend and the listener agents call.
func openCluster(ctx context.Context, o *clusterOptions, st store.Store, clk clock.Clock, log *slog.Logger) (*cluster.Cluster, net.Listener, func(), error) {
	pg, ok := st.(*store.Postgres)
	if !ok {
		return nil, nil, nil, errors.New("--agent-listen needs --database postgres://…: replicas share their state in Postgres")
	}
	strategy, err := placement.ParseStrategy(o.placement)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--placement: %w", err)
	}
	cert, pool, err := o.agentTLS()
	if err != nil {
		return nil, nil, nil, err
	}
	var bus cluster.Bus
	closeBus := func() {}
	if o.redis != "" {
		rb, err := cluster.NewRedisBus(o.redis, log)
		if err != nil {
			return nil, nil, nil, err
		}
		if err := rb.Ping(ctx); err != nil {
			log.Warn("redis is not answering yet; polling the database until it does", "err", err)
		}
		bus, closeBus = rb, func() { _ = rb.Close() }
	} else {
		log.Warn("no --redis: replicas and agents find new commands by polling the database each second")
	}
	mtls := &cerberus.MTLSConfig{ClientCAs: pool, Clock: clock.System{}}
	identity := func(r *http.Request) (string, error) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return "", errors.New("no client certificate")
		}
		id, err := mtls.Verify(&cerberus.MTLSCredential{Certificate: r.TLS.PeerCertificates[0], Chain: r.TLS.PeerCertificates[1:]})
		if err != nil {
			return "", err
		}
		return cluster.AgentName(string(id.Type), id.ID)
	}
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
		ResponseHeaderTimeout: 0, ForceAttemptHTTP2: false,
	}}
	cl, err := cluster.New(cluster.Config{Store: pg, Bus: bus, Strategy: strategy, NodeTimeout: o.nodeTimeout,
		HeartbeatInterval: o.heartbeat, CommandWait: o.cmdWait, AgentClient: hc, AgentIdentity: identity, Clock: clk, Log: log})
	if err != nil {
		closeBus()
		return nil, nil, nil, err
	}
	ln, err := net.Listen("tcp", o.agentListen)
	if err != nil {
		closeBus()
		return nil, nil, nil, fmt.Errorf("--agent-listen: %w", err)
	}
	ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	return cl, ln, closeBus, nil
}

// enableClusterHeat turns on heat classes on a replica with the server's
// heat flags (the same classes file on every replica), keeping the queue,
// pools and observations in Postgres.
func enableClusterHeat(ctx context.Context, cl *cluster.Cluster, o *heatOptions) error {
	hc := cluster.HeatConfig{Router: phlegethon.Config{EnforceAll: o.enforceAll}}
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
	hc.Queue.DefaultTimeout = min(phlegethon.DefaultQueueTimeout, o.queueWait)
	hc.Queue.Policy = phlegethon.Policy(o.policy)
	return cl.EnableHeat(ctx, hc)
}
