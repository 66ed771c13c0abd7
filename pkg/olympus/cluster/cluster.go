// Package cluster is the API server side of a multi-node Tartarus: an
// olympus.Backend that places sandboxes on node agents, hands them durable
// commands, and forwards exec and file streams to the agent holding each
// sandbox, with every replica sharing one Postgres database.
//
// A lifecycle call (create, destroy, pause, resume, hibernate, wake, fork)
// writes a command to the database in the same transaction as the change
// it needs, then waits for the agent's result: the command survives the
// replica that wrote it, and an agent that restarts gets it again. Events
// over Redis (Bus) wake the waiting replica and the agent's long poll at
// once; without them every wait falls back to polling the database each
// PollInterval, so Redis going away slows the cluster down but loses
// nothing.
//
// Replicas sweep for nodes whose heartbeats stopped (NodeTimeout): such a
// node is marked down, its live sandboxes fail as lost, and its hibernated
// ones, when their snapshots are in shared storage, are left unassigned to
// wake on another node (an "adopt" command).
//
// Extensions to the olympus.Backend contract: Handler serves the agents'
// side of the protocol (package wire) and Run sweeps and listens for
// events.
package cluster

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Config wires a Cluster.
type Config struct {
	Store *store.Postgres
	// Bus carries events between replicas; nil means a LocalBus (one
	// replica, or several that rely on polling alone).
	Bus      Bus
	Strategy placement.Strategy
	// NodeTimeout is how long after its last heartbeat a node is marked
	// down (default 10s).
	NodeTimeout time.Duration
	// HeartbeatInterval is what agents are told to heartbeat at (default
	// wire.DefaultHeartbeatInterval).
	HeartbeatInterval time.Duration
	// CommandWait bounds how long a call waits for its command's result
	// (default 3m); the command stays pending after that.
	CommandWait time.Duration
	// PollInterval is how often waits check the database when no event
	// came (default 1s).
	PollInterval time.Duration
	// AgentClient calls the agents' node APIs (mutual TLS).
	AgentClient *http.Client
	// AgentIdentity names the node an agent's request comes from (its
	// verified certificate), or fails.
	AgentIdentity func(r *http.Request) (string, error)
	Clock         clock.Clock
	Log           *slog.Logger
}

// Cluster is the Backend of a replica.
type Cluster struct {
	cfg Config
	st  *store.Postgres
	log *slog.Logger

	mu      sync.Mutex
	waiters map[string][]chan struct{} // command id → calls waiting for its result
	polls   map[string][]chan struct{} // node → agents' long polls
	streams map[*stream]struct{}       // calls forwarded to nodes
	// reachable is since when Sweep has reached the database without a
	// break (zero: not now).
	reachable time.Time

	statusMu sync.Mutex
	statuses map[string]*decodedStatus // node → its last status, decoded

	heat *clusterHeat // nil: heat classes off (EnableHeat)
}

// New returns a Cluster; call Run to sweep and hear events.
func New(cfg Config) (*Cluster, error) {
	if cfg.Store == nil {
		return nil, errors.New("cluster: needs a Postgres store")
	}
	if cfg.AgentIdentity == nil || cfg.AgentClient == nil {
		return nil, errors.New("cluster: needs the agents' TLS identities and client")
	}
	if cfg.Bus == nil {
		cfg.Bus = &LocalBus{}
	}
	if cfg.Strategy == "" {
		cfg.Strategy = placement.Spread
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 10 * time.Second
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = wire.DefaultHeartbeatInterval
	}
	if cfg.CommandWait <= 0 {
		cfg.CommandWait = 3 * time.Minute
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Cluster{cfg: cfg, st: cfg.Store, log: cfg.Log.With("component", "cluster"),
		waiters: map[string][]chan struct{}{}, polls: map[string][]chan struct{}{}, streams: map[*stream]struct{}{},
		statuses: map[string]*decodedStatus{}}, nil
}

// Run hears events and sweeps for nodes that went quiet until ctx is done.
func (c *Cluster) Run(ctx context.Context) error {
	go func() {
		for ctx.Err() == nil {
			if err := c.cfg.Bus.Run(ctx, c.deliver); err != nil {
				c.log.Warn("event bus", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second): // reconnect pause
			}
		}
	}()
	go c.runQueue(ctx)
	t := c.cfg.Clock.NewTicker(max(c.cfg.NodeTimeout/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			if err := c.Sweep(ctx); err != nil {
				c.log.Warn("sweep for nodes down", "err", err)
			}
		}
	}
}

// dbErr says that the database failed (it is restarting, or unreachable)
// when err carries no class of its own: the caller may retry.
func dbErr(err error) error {
	if err == nil || tartarus.ClassOf(err).Err != nil ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return tartarus.Errorf(tartarus.ErrUnavailable, "cluster database: %v", err)
}

var _ olympus.Backend = (*Cluster)(nil)
