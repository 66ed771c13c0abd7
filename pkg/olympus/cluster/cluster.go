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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/api"
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
}

// decodedStatus keeps a node's status decoded while its JSON stays the
// same (placement reads every node's, and decoding them was most of its
// cost).
type decodedStatus struct {
	raw []byte
	st  wire.NodeStatus
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

// deliver wakes whoever waits for ev.
func (c *Cluster) deliver(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	wake := func(chs []chan struct{}) {
		for _, ch := range chs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	switch ev.Kind {
	case EventCommand:
		wake(c.polls[ev.Node])
	case EventDone:
		wake(c.waiters[ev.ID])
	case EventNodeDown:
		for _, chs := range c.waiters {
			wake(chs)
		}
		c.kill(func(st *stream) bool { return st.node == ev.Node },
			tartarus.Errorf(tartarus.ErrUnavailable, "node %s went down", ev.Node))
	case EventEnded:
		c.kill(func(st *stream) bool { return st.sandbox == ev.ID },
			tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s ended", ev.ID))
	}
}

func (c *Cluster) publish(ctx context.Context, ev Event) {
	if err := c.cfg.Bus.Publish(context.WithoutCancel(ctx), ev); err != nil {
		// Polling picks it up; say so once per failure.
		c.log.Warn("publish event (falling back to polling)", "kind", ev.Kind, "err", err)
		c.deliver(ev)
	}
}

// listen registers ch to be woken for key in m; the returned func
// unregisters it.
func (c *Cluster) listen(m map[string][]chan struct{}, key string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	m[key] = append(m[key], ch)
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		m[key] = slices.DeleteFunc(m[key], func(x chan struct{}) bool { return x == ch })
		if len(m[key]) == 0 {
			delete(m, key)
		}
	}
}

// Sweep marks down the nodes whose last heartbeat is older than
// NodeTimeout and settles their sandboxes.
//
// Heartbeats land in the database through some replica, so a node's last
// heartbeat only says something once this replica has reached the
// database without a break for NodeTimeout: after a database outage (or
// when this replica starts) every node gets that long to heartbeat again
// before any is marked down.
func (c *Cluster) Sweep(ctx context.Context) error {
	now := c.cfg.Clock.Now().UTC()
	if err := c.st.Ping(ctx); err != nil {
		c.mu.Lock()
		c.reachable = time.Time{}
		c.mu.Unlock()
		return tartarus.Errorf(tartarus.ErrUnavailable, "database: %v", err)
	}
	c.mu.Lock()
	if c.reachable.IsZero() {
		c.reachable = now
	}
	since := c.reachable
	c.mu.Unlock()
	if now.Sub(since) < c.cfg.NodeTimeout {
		return nil
	}
	before := now.Add(-c.cfg.NodeTimeout)
	stale, err := c.st.StaleNodes(ctx, before)
	if err != nil {
		return dbErr(err)
	}
	for _, n := range stale {
		shared := c.status(n).SharedSnapshots
		reason := fmt.Sprintf("lost: node %s stopped heartbeating for %s", n.Name, c.cfg.NodeTimeout)
		failed, _ := json.Marshal(wire.Result{Error: &wire.Error{Code: "unavailable", Message: reason}})
		down, ids, err := c.st.LoseNode(ctx, n.Name, before, fmt.Sprintf("no heartbeat for %s", c.cfg.NodeTimeout),
			shared, reason, failed, now)
		if err != nil {
			return dbErr(err)
		}
		if !down {
			continue
		}
		c.log.Warn("node down", "node", n.Name, "sandboxes_settled", len(ids), "hibernated_kept_for_other_nodes", shared)
		c.publish(ctx, Event{Kind: EventNodeDown, Node: n.Name})
	}
	return nil
}

// nodeStatus decodes a node record's status.
func nodeStatus(n *store.NodeRecord) wire.NodeStatus {
	var st wire.NodeStatus
	_ = json.Unmarshal(n.Status, &st)
	return st
}

// status is nodeStatus, decoding only what changed since the last call.
func (c *Cluster) status(n *store.NodeRecord) *wire.NodeStatus {
	c.statusMu.Lock()
	defer c.statusMu.Unlock()
	d := c.statuses[n.Name]
	if d == nil || !bytes.Equal(d.raw, n.Status) {
		d = &decodedStatus{raw: n.Status, st: nodeStatus(n)}
		c.statuses[n.Name] = d
	}
	return &d.st
}

// candidates turns the up nodes into placement's view, leaving out those
// without the template (and saying which were left out, for the refusal).
func (c *Cluster) candidates(nodes []*store.NodeRecord, template string) ([]placement.Node, []string) {
	out := make([]placement.Node, 0, len(nodes))
	var without []string
	for _, n := range nodes {
		st := c.status(n)
		if template != "" && !slices.Contains(st.Templates, template) {
			without = append(without, n.Name)
			continue
		}
		pn := placement.Node{Name: n.Name, Labels: st.Labels, CPUs: st.CPUs, MemoryMB: st.MemoryMB,
			UsedCPUs: n.UsedCPUs, UsedMemoryMB: n.UsedMemoryMB, Sandboxes: n.Sandboxes}
		for _, fp := range st.Runtimes {
			pn.Runtimes = append(pn.Runtimes, placement.Runtime{Name: fp.Runtime, Available: fp.Available,
				Reason: fp.Reason, MaxCPUs: fp.MaxCPUs, MaxMemoryMB: fp.MaxMemoryMB})
		}
		out = append(out, pn)
	}
	return out, without
}

// place chooses a node for a sandbox of req's shape.
func (c *Cluster) place(nodes []*store.NodeRecord, template string, req placement.Request) (string, string, error) {
	if len(nodes) == 0 {
		return "", "", tartarus.Errorf(tartarus.ErrUnavailable, "no node agent is up (`tartarus node ls` shows those registered)")
	}
	cands, without := c.candidates(nodes, template)
	if len(cands) == 0 && len(without) > 0 {
		return "", "", tartarus.Errorf(tartarus.ErrNotFound, "template %s: no up node has it built (%s)", template, strings.Join(without, ", "))
	}
	name, err := placement.Place(cands, req, c.cfg.Strategy)
	if err != nil {
		return "", "", err
	}
	rt := req.Runtime
	if rt == "" {
		for _, n := range cands {
			if n.Name == name && len(n.Runtimes) > 0 {
				rt = n.Runtimes[0].Name
			}
		}
	}
	return name, rt, nil
}

// dbErr says that the database failed (it is restarting, or unreachable)
// when err carries no class of its own: the caller may retry.
func dbErr(err error) error {
	if err == nil || wire.ErrorOf(err).Code != "internal" ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return tartarus.Errorf(tartarus.ErrUnavailable, "cluster database: %v", err)
}

// warm returns a sandbox id waiting in node's warm pool of key that no
// sandbox has taken yet, or "". The node's list is as of its last
// heartbeat: an id it handed out since is taken already, and one it
// dropped since is created afresh under that id.
func (c *Cluster) warm(nodes []*store.NodeRecord, node, key string, taken func(string) bool) string {
	for _, n := range nodes {
		if n.Name != node {
			continue
		}
		for _, id := range c.status(n).Warm[key] {
			if tartarus.ValidName(id) && !taken(id) {
				return id
			}
		}
	}
	return ""
}

func placementRequest(req *tartarus.CreateRequest) placement.Request {
	return placement.Request{Runtime: req.Runtime, CPUs: req.CPUs, MemoryMB: req.MemoryMB, Labels: req.NodeLabels}
}

func commandRecord(cmd *wire.Command) (*store.CommandRecord, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	return &store.CommandRecord{ID: cmd.ID, Node: cmd.Node, SandboxID: cmd.SandboxID, Kind: string(cmd.Kind),
		Body: body, CreatedAt: cmd.CreatedAt}, nil
}

// Create places the sandbox, records it with its create command, and
// waits for the node to bring it up.
func (c *Cluster) Create(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	if err := req.Normalize(); err != nil {
		return nil, err
	}
	now := c.cfg.Clock.Now().UTC()
	// Node and Runtime are set when the sandbox is placed.
	sb := tartarus.NewSandbox(tartarus.NewID("sb-"), tenant, req, now)
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Kind: wire.KindCreate, SandboxID: sb.ID, CreatedAt: now, Sandbox: sb}
	existing, err := c.st.Place(ctx, store.IdempotencyKey{Tenant: tenant, Key: req.IdempotencyKey}, func(nodes []*store.NodeRecord, taken func(string) bool) (*tartarus.Sandbox, *store.CommandRecord, error) {
		name, rt, err := c.place(nodes, req.Template, placementRequest(req))
		if err != nil {
			return nil, nil, err
		}
		sb.Node, sb.Runtime, cmd.Node = name, rt, name
		// A sandbox waiting in the node's warm pool becomes this one.
		if id := c.warm(nodes, name, hecatoncheir.PoolKey(rt, req.Template, req.MemoryMB, req.CPUs), taken); id != "" {
			sb.ID, cmd.SandboxID = id, id
		}
		create := *req
		create.Runtime, create.NodeLabels = rt, nil
		cmd.Create = &create
		rec, err := commandRecord(cmd)
		return sb, rec, err
	})
	if err != nil {
		return nil, dbErr(err)
	}
	if existing != "" {
		return c.created(ctx, existing)
	}
	c.publish(ctx, Event{Kind: EventCommand, Node: cmd.Node})
	if _, err := c.await(ctx, cmd); err != nil {
		return nil, err
	}
	return c.st.Get(ctx, sb.ID)
}

// created answers a create sent again with the sandbox the first one made,
// once it is no longer being created (or within CommandWait).
func (c *Cluster) created(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	poll := c.cfg.Clock.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	deadline := c.cfg.Clock.Now().Add(c.cfg.CommandWait)
	for {
		sb, err := c.st.Get(ctx, id)
		if err != nil {
			return nil, dbErr(err)
		}
		if sb.State != tartarus.StateCreating || !c.cfg.Clock.Now().Before(deadline) {
			if sb.State == tartarus.StateFailed {
				return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "the create with this Idempotency-Key made sandbox %s, which failed: %s", sb.ID, sb.Error)
			}
			return sb, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-poll.C():
		}
	}
}

// await waits for cmd's result and returns it, or the node's error.
func (c *Cluster) await(ctx context.Context, cmd *wire.Command) (*wire.Result, error) {
	ch, stop := c.listen(c.waiters, cmd.ID)
	defer stop()
	poll := c.cfg.Clock.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	deadline := c.cfg.Clock.Now().Add(c.cfg.CommandWait)
	for {
		rec, err := c.st.Command(ctx, cmd.ID)
		if err != nil && !errors.Is(err, tartarus.ErrNotFound) {
			c.log.Warn("read command", "command", cmd.ID, "err", err) // the database may be restarting
		}
		if err == nil && rec.Done {
			var res wire.Result
			if err := json.Unmarshal(rec.Result, &res); err != nil {
				return nil, fmt.Errorf("result of %s on node %s: %w", cmd.Kind, cmd.Node, err)
			}
			return &res, res.Error.Err(cmd.Node)
		}
		if !c.cfg.Clock.Now().Before(deadline) {
			return nil, tartarus.Errorf(tartarus.ErrTimeout, "node %s has not done the %s of sandbox %s within %s; it still will",
				cmd.Node, cmd.Kind, cmd.SandboxID, c.cfg.CommandWait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		case <-poll.C():
		}
	}
}

// command sends one command about sandbox sb to its node and waits.
func (c *Cluster) command(ctx context.Context, sb *tartarus.Sandbox, kind wire.Kind, forkIDs []string) (*wire.Result, error) {
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Node: sb.Node, Kind: kind, SandboxID: sb.ID,
		CreatedAt: c.cfg.Clock.Now().UTC(), ForkIDs: forkIDs}
	rec, err := commandRecord(cmd)
	if err != nil {
		return nil, err
	}
	if err := c.st.AddCommand(ctx, rec); err != nil {
		return nil, dbErr(err)
	}
	c.publish(ctx, Event{Kind: EventCommand, Node: cmd.Node})
	return c.await(ctx, cmd)
}

// lifecycle runs a command that changes one sandbox and returns it as the
// database now has it.
func (c *Cluster) lifecycle(ctx context.Context, id string, kind wire.Kind) (*tartarus.Sandbox, error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	if sb.State.Final() {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, sb.State)
	}
	if sb.Node == "" {
		// A hibernated sandbox whose node went down.
		if kind == wire.KindHibernate {
			return sb, nil
		}
		if sb, err = c.adopt(ctx, sb); err != nil {
			return nil, err
		}
		if kind == wire.KindWake || kind == wire.KindResume {
			return sb, nil
		}
	}
	if _, err := c.command(ctx, sb, kind, nil); err != nil {
		return nil, err
	}
	return c.st.Get(ctx, id)
}

// adopt places an unassigned hibernated sandbox on a node that wakes it
// from the shared snapshot.
func (c *Cluster) adopt(ctx context.Context, sb *tartarus.Sandbox) (*tartarus.Sandbox, error) {
	raw, err := c.st.Sleep(ctx, sb.ID)
	if err != nil {
		return nil, fmt.Errorf("wake %s on another node: %w", sb.ID, dbErr(err))
	}
	var rec hypnos.SleepRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("wake %s on another node: sleep record: %w", sb.ID, err)
	}
	// A node may refuse (another build of the template, or it let this
	// sandbox go before and keeps its id as a tombstone): then the
	// sandbox is unassigned again and another node tries.
	var avoid []string
	for {
		now := c.cfg.Clock.Now().UTC()
		cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Kind: wire.KindAdopt, SandboxID: sb.ID, CreatedAt: now, Sleep: &rec}
		_, err = c.st.Place(ctx, store.IdempotencyKey{}, func(nodes []*store.NodeRecord, _ func(string) bool) (*tartarus.Sandbox, *store.CommandRecord, error) {
			var shared []*store.NodeRecord
			for _, n := range nodes {
				if c.status(n).SharedSnapshots {
					shared = append(shared, n)
				}
			}
			if len(shared) == 0 {
				return nil, nil, tartarus.Errorf(tartarus.ErrUnavailable, "wake %s on another node: no up node shares snapshot storage (agents' --snapshots)", sb.ID)
			}
			name, _, err := c.place(shared, sb.Template, placement.Request{Runtime: sb.Runtime, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Avoid: avoid})
			if err != nil {
				return nil, nil, fmt.Errorf("wake %s on another node: %w", sb.ID, err)
			}
			moved := *sb
			moved.Node, moved.UpdatedAt = name, now
			cmd.Node, cmd.Sandbox = name, &moved
			rec, err := commandRecord(cmd)
			return &moved, rec, err
		})
		if err != nil {
			return nil, dbErr(err)
		}
		c.publish(ctx, Event{Kind: EventCommand, Node: cmd.Node})
		res, err := c.await(ctx, cmd)
		if err == nil {
			return c.st.Get(ctx, sb.ID)
		}
		if res == nil || res.Error == nil || errors.Is(err, tartarus.ErrUnavailable) && strings.Contains(res.Error.Message, "stopped heartbeating") {
			return nil, err // no answer of the node's own (timeout, cancel, node down): the command stands
		}
		if _, uerr := c.st.Unassign(ctx, sb.ID, cmd.Node, c.cfg.Clock.Now().UTC()); uerr != nil {
			return nil, dbErr(uerr)
		}
		c.log.Warn("node refused to wake another node's sandbox; trying another", "sandbox", sb.ID, "node", cmd.Node, "err", err)
		avoid = append(avoid, cmd.Node)
	}
}

// discard has an up node with shared snapshots delete the snapshot of an
// unassigned hibernated sandbox.
func (c *Cluster) discard(ctx context.Context, sb *tartarus.Sandbox) error {
	raw, err := c.st.Sleep(ctx, sb.ID)
	if err != nil {
		return err
	}
	var rec hypnos.SleepRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("sleep record: %w", err)
	}
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return err
	}
	node := ""
	for _, n := range nodes {
		if n.State == store.NodeUp && c.status(n).SharedSnapshots {
			node = n.Name
			break
		}
	}
	if node == "" {
		return tartarus.Errorf(tartarus.ErrUnavailable, "no up node shares snapshot storage")
	}
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Node: node, Kind: wire.KindDiscard, SandboxID: sb.ID,
		CreatedAt: c.cfg.Clock.Now().UTC(), Sandbox: sb, Sleep: &rec}
	cr, err := commandRecord(cmd)
	if err != nil {
		return err
	}
	if err := c.st.AddNodeCommand(ctx, cr); err != nil {
		return err
	}
	c.publish(ctx, Event{Kind: EventCommand, Node: node})
	_, err = c.await(ctx, cmd)
	return err
}

// Get implements olympus.Backend.
func (c *Cluster) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.st.Get(ctx, id)
}

// List implements olympus.Backend.
func (c *Cluster) List(ctx context.Context, f store.Filter) ([]*tartarus.Sandbox, error) {
	sbs, err := c.st.List(ctx, f)
	return sbs, dbErr(err)
}

// Counts implements olympus.Backend.
func (c *Cluster) Counts(ctx context.Context) (map[tartarus.State]int, error) {
	return c.st.CountByState(ctx)
}

// Destroy implements olympus.Backend.
func (c *Cluster) Destroy(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	if sb.State.Final() {
		return sb, nil
	}
	if sb.Node == "" {
		// Hibernated on a node that went down: nothing runs anywhere, but
		// its snapshot is in the shared store.
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.discard(dctx, sb)
		cancel()
		if err != nil {
			c.log.Warn("the snapshot of a destroyed sandbox stays in shared storage", "sandbox", id, "err", err)
		}
		at := store.Change{At: c.cfg.Clock.Now().UTC()}
		if _, err := c.st.Move(ctx, id, sb.State, tartarus.StateTerminating, at); err != nil {
			return nil, err
		}
		return c.st.Move(ctx, id, tartarus.StateTerminating, tartarus.StateTerminated, at)
	}
	if _, err := c.command(ctx, sb, wire.KindDestroy, nil); err != nil {
		return nil, err
	}
	// The node has nothing of it any more (it may never have recorded
	// it); make sure the cluster agrees.
	if sb, err = c.st.Get(ctx, id); err != nil || sb.State.Final() {
		return sb, dbErr(err)
	}
	at := store.Change{At: c.cfg.Clock.Now().UTC()}
	if sb.State != tartarus.StateTerminating {
		if _, err := c.st.Move(ctx, id, sb.State, tartarus.StateTerminating, at); err != nil {
			return nil, err
		}
	}
	return c.st.Move(ctx, id, tartarus.StateTerminating, tartarus.StateTerminated, at)
}

// Pause implements olympus.Backend.
func (c *Cluster) Pause(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.lifecycle(ctx, id, wire.KindPause)
}

// Resume implements olympus.Backend.
func (c *Cluster) Resume(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.lifecycle(ctx, id, wire.KindResume)
}

// Hibernate implements olympus.Backend.
func (c *Cluster) Hibernate(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.lifecycle(ctx, id, wire.KindHibernate)
}

// Wake implements olympus.Backend.
func (c *Cluster) Wake(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.lifecycle(ctx, id, wire.KindWake)
}

// Fork implements olympus.Backend: the copies are made on the parent's
// node (they start from its memory).
func (c *Cluster) Fork(ctx context.Context, id string, count int) ([]*tartarus.Sandbox, error) {
	if count < 1 || count > 16 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "count %d: must be between 1 and 16", count)
	}
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	if sb.Node == "" || sb.State.Final() {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, cannot fork", id, sb.State)
	}
	ids := make([]string, count)
	for i := range ids {
		ids[i] = tartarus.NewID("sb-")
	}
	if _, err := c.command(ctx, sb, wire.KindFork, ids); err != nil {
		return nil, err
	}
	out := make([]*tartarus.Sandbox, 0, count)
	for _, fid := range ids {
		f, err := c.st.Get(ctx, fid)
		if err != nil {
			return nil, fmt.Errorf("fork %s: copy %s: %w", id, fid, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// agent returns a client of the node API holding sandbox id, acting for
// the sandbox's tenant, and a context for the call that ends (with the
// reason as its cause) when the node goes down or the sandbox ends, so a
// forwarded stream does not hang on a dead node. A hibernated sandbox
// whose node went down is woken elsewhere first. Call done when the call
// is over.
func (c *Cluster) agent(ctx context.Context, id string) (*client.Client, context.Context, func(), error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, nil, nil, dbErr(err)
	}
	if sb.Node == "" && sb.State == tartarus.StateHibernated {
		if sb, err = c.adopt(ctx, sb); err != nil {
			return nil, nil, nil, err
		}
	}
	if sb.State.Final() {
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, sb.State)
	}
	n, err := c.st.Node(ctx, sb.Node)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	if n.State != store.NodeUp {
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrUnavailable, "sandbox %s: node %s is %s", id, n.Name, n.State)
	}
	cl, err := client.New(n.Address, "", client.WithHTTPClient(c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, sb.Tenant))
	if err != nil {
		return nil, nil, nil, err
	}
	sctx, done := c.track(ctx, sb.Node, sb.ID)
	return cl, sctx, done, nil
}

// stream is a call forwarded to a node, cancelled by kill broadcasts.
type stream struct {
	node, sandbox string
	cancel        context.CancelCauseFunc
}

// track registers a forwarded call to node about sandbox.
func (c *Cluster) track(ctx context.Context, node, sandbox string) (context.Context, func()) {
	sctx, cancel := context.WithCancelCause(ctx)
	st := &stream{node: node, sandbox: sandbox, cancel: cancel}
	c.mu.Lock()
	c.streams[st] = struct{}{}
	c.mu.Unlock()
	return sctx, func() {
		c.mu.Lock()
		delete(c.streams, st)
		c.mu.Unlock()
		cancel(nil)
	}
}

// kill ends the forwarded calls that match, with cause (c.mu held).
func (c *Cluster) kill(match func(*stream) bool, cause error) {
	for st := range c.streams {
		if match(st) {
			st.cancel(cause)
		}
	}
}

// settle turns the error of a forwarded call cut by a kill broadcast into
// its cause.
func settle(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
	}
	return err
}

// Exec implements olympus.Backend by running the command through the
// sandbox's node.
func (c *Cluster) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	in := &api.ExecRequest{Cmd: req.Cmd, Env: req.Env, Cwd: req.Cwd}
	if req.Timeout > 0 {
		in.TimeoutS = int((req.Timeout + time.Second - 1) / time.Second)
	}
	if req.Stdin != nil {
		data, err := io.ReadAll(io.LimitReader(req.Stdin, 64<<20))
		if err != nil {
			return nil, fmt.Errorf("exec %s: stdin: %w", id, err)
		}
		in.Stdin = string(data)
	}
	res, err := cl.ExecStream(sctx, id, in, req.Stdout, req.Stderr)
	if err != nil {
		return nil, settle(sctx, err)
	}
	return &tartarus.ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut,
		Duration: time.Duration(res.DurationMS) * time.Millisecond}, nil
}

// ReadFile implements olympus.Backend.
func (c *Cluster) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	rc, err := cl.ReadFile(sctx, id, path)
	if err != nil {
		done()
		return nil, settle(sctx, err)
	}
	return &trackedBody{ReadCloser: rc, ctx: sctx, done: done}, nil
}

// trackedBody is a forwarded download: it stays tracked until closed.
type trackedBody struct {
	io.ReadCloser
	ctx  context.Context
	done func()
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = settle(b.ctx, err)
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// WriteFile implements olympus.Backend.
func (c *Cluster) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return err
	}
	defer done()
	return settle(sctx, cl.WriteFile(sctx, id, path, mode, r))
}

// ListFiles implements olympus.Backend.
func (c *Cluster) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	files, err := cl.ListFiles(sctx, id, path)
	return files, settle(sctx, err)
}

// Templates lists the templates some up node can create from (asking the
// nodes themselves, for the templates' details).
func (c *Cluster) Templates(ctx context.Context) ([]*tartarus.Image, error) {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	byName := map[string]*tartarus.Image{}
	var errs []error
	for _, n := range nodes {
		if n.State != store.NodeUp {
			continue
		}
		cl, err := client.New(n.Address, "", client.WithHTTPClient(c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, "cluster"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		imgs, err := cl.Templates(tctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
			continue
		}
		for _, img := range imgs {
			if _, ok := byName[img.Name]; !ok {
				byName[img.Name] = img
			}
		}
	}
	if len(byName) == 0 && len(errs) > 0 {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "templates: %v", errors.Join(errs...))
	}
	out := slices.Collect(maps.Values(byName))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Nodes implements olympus.Backend: every registered node, up or down.
func (c *Cluster) Nodes(ctx context.Context) ([]*hecatoncheir.NodeInfo, error) {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*hecatoncheir.NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		st := nodeStatus(n)
		info := &hecatoncheir.NodeInfo{Name: n.Name, State: n.State, DownReason: n.DownReason, Address: n.Address,
			Labels: st.Labels, LastSeen: n.LastSeen, CPUs: st.CPUs, MemoryMB: st.MemoryMB,
			UsedCPUs: n.UsedCPUs, UsedMemoryMB: n.UsedMemoryMB, Sandboxes: n.Sandboxes}
		for i := range st.Runtimes {
			fp := st.Runtimes[i]
			info.Runtimes = append(info.Runtimes, &fp)
			if fp.Capabilities.Snapshot && fp.Available {
				info.SnapshotRuntimes = append(info.SnapshotRuntimes, fp.Runtime)
			}
		}
		if len(st.Runtimes) > 0 {
			info.DefaultRuntime = st.Runtimes[0].Runtime
		}
		out = append(out, info)
	}
	return out, nil
}

// ForgetNode implements olympus.Backend: a down node that holds no live
// sandbox leaves the cluster's list.
func (c *Cluster) ForgetNode(ctx context.Context, name string) error {
	if err := c.st.ForgetNode(ctx, name); err != nil {
		return dbErr(err)
	}
	c.statusMu.Lock()
	delete(c.statuses, name)
	c.statusMu.Unlock()
	c.log.Info("node forgotten", "node", name)
	return nil
}

// Ready implements olympus.Backend: the database answers and some node is
// up.
func (c *Cluster) Ready(ctx context.Context) error {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return tartarus.Errorf(tartarus.ErrUnavailable, "database: %v", err)
	}
	for _, n := range nodes {
		if n.State == store.NodeUp {
			return nil
		}
	}
	return tartarus.Errorf(tartarus.ErrUnavailable, "no node agent is up (%d registered)", len(nodes))
}

var _ olympus.Backend = (*Cluster)(nil)
