package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/cluster"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone/persephonesrv"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/thanatos"
)

// seasonOptions are the server's flags for Persephone: seasons, warm
// pools sized by the forecast, and the capacity webhook.
type seasonOptions struct {
	seasonsFile     string
	forecastPools   bool
	poolEvery       time.Duration
	webhook         string
	webhookAllow    []string
	vmsPerNode      int
	nodeCostPerHour float64
}

func addSeasonFlags(f *pflag.FlagSet, o *seasonOptions) {
	f.StringVar(&o.seasonsFile, "seasons", "", "YAML file of seasons to define at start (docs/seasons.md)")
	f.BoolVar(&o.forecastPools, "forecast-pools", false, "size each template's warm pool from the forecast and the season in force (on a cluster replica: spread over its agents; --warm-pool is then only the size until the first sizing)")
	f.DurationVar(&o.poolEvery, "pool-interval", 5*time.Minute, "how often --forecast-pools sizes the pools")
	f.StringVar(&o.webhook, "capacity-webhook", "", "POST each capacity recommendation (every 5 minutes) to this http(s) URL")
	f.StringSliceVar(&o.webhookAllow, "capacity-webhook-allow-hosts", nil, "hosts, addresses or CIDR prefixes the capacity webhook may reach although loopback, private or this host's own")
	f.IntVar(&o.vmsPerNode, "vms-per-node", 32, "sandboxes a node holds at full use, for capacity advice")
	f.Float64Var(&o.nodeCostPerHour, "node-cost-per-hour", 1, "cost of one node for an hour, for the cost delta of capacity advice")
}

// seasons is Persephone as a server runs it.
type seasons struct {
	svc       *persephonesrv.Service
	collector prometheus.Collector
}

// openSeasons builds the scaler over the store's usage history, defines
// the seasons of --seasons, and, on a single node, hands it the agent's
// warm pools.
func openSeasons(ctx context.Context, o *seasonOptions, st store.Store, nodes persephonesrv.NodeLister, agent *hecatoncheir.Agent, clk clock.Clock, log *slog.Logger) (*seasons, error) {
	uk, ok := st.(store.UsageKeeper)
	if !ok {
		return nil, errors.New("seasons: the store keeps no usage history")
	}
	usage := uk.Usage()
	scaler, err := persephone.New(ctx, persephone.Config{Usage: usage, Seasons: usage, Clock: clk, Log: log.With("component", "persephone"),
		VMsPerNode: o.vmsPerNode, NodeCostPerHour: o.nodeCostPerHour, Nodes: nodeCount{nodes}})
	if err != nil {
		return nil, err
	}
	if o.seasonsFile != "" {
		data, err := os.ReadFile(o.seasonsFile)
		if err != nil {
			return nil, fmt.Errorf("--seasons: %w", err)
		}
		list, err := persephone.ParseSeasons(data)
		if err != nil {
			return nil, fmt.Errorf("--seasons %s: %w", o.seasonsFile, err)
		}
		for _, s := range list {
			if err := scaler.DefineSeason(ctx, s); err != nil {
				return nil, fmt.Errorf("--seasons %s: %w", o.seasonsFile, err)
			}
		}
		log.Info("seasons defined", "file", o.seasonsFile, "count", len(list))
	}
	cfg := persephonesrv.Config{Scaler: scaler, Usage: usage, Sandboxes: storeSandboxes{st, uk}, Nodes: nodes, Clock: clk, Log: log,
		PoolEvery: o.poolEvery}
	out := &seasons{}
	if agent != nil {
		out.collector = persephonesrv.Collector{Agent: agent}
		if o.forecastPools {
			cfg.Pools = agent
		}
	} else if cl, ok := nodes.(*cluster.Cluster); ok && o.forecastPools {
		// One replica at a time sizes the agents' pools (a lease).
		cfg.Pools = cl.ForecastPools()
	} else if o.forecastPools {
		return nil, errors.New("--forecast-pools needs a node or a cluster replica")
	}
	if o.webhook != "" {
		cfg.Webhook = o.webhook
		if cfg.WebhookClient, err = thanatos.GuardedHTTPClient(o.webhookAllow, 30*time.Second); err != nil {
			return nil, fmt.Errorf("--capacity-webhook-allow-hosts: %w", err)
		}
	}
	if out.svc, err = persephonesrv.New(cfg); err != nil {
		return nil, err
	}
	return out, nil
}

// Routes are Persephone's API routes, added to extra (auth's).
func (s *seasons) Routes(extra map[string]http.Handler, guard cerberus.Guard) map[string]http.Handler {
	out := map[string]http.Handler{}
	for k, v := range extra {
		out[k] = v
	}
	for k, v := range s.svc.Routes(guard) {
		out[k] = v
	}
	return out
}

// storeSandboxes is the store with its usage side: counts by state and
// launches.
type storeSandboxes struct {
	store.Store
	store.UsageKeeper
}

// nodeCount counts the nodes for capacity advice.
type nodeCount struct{ nodes persephonesrv.NodeLister }

func (n nodeCount) NodeCount(ctx context.Context) (int, error) {
	list, err := n.nodes.Nodes(ctx)
	if err != nil {
		return 0, err
	}
	return len(list), nil
}
