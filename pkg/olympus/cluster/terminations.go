package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var _ olympus.Terminator = (*Cluster)(nil)

// startWait bounds how long Terminate waits for the node to start the
// termination it was sent, so it can answer with its first phases.
const startWait = 10 * time.Second

// Terminate implements olympus.Terminator: a durable destroy command with
// the options goes to the sandbox's node, whose Thanatos runs the phases
// (a grace period, a signal, a checkpoint); the call answers as soon as
// the node has started it, and Termination follows it from any replica.
// A hibernated sandbox whose node went down has nothing running: it ends
// at once, its shared snapshot discarded.
func (c *Cluster) Terminate(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.TerminationStatus, error) {
	if opts == nil {
		opts = &tartarus.ShutdownOptions{Reason: tartarus.ReasonUserRequest}
	}
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	if sb.State.Final() {
		if st, err := c.Termination(ctx, id); err == nil {
			return st, nil
		}
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is already %s", id, sb.State)
	}
	if sb.Node == "" {
		if _, err := c.destroy(ctx, id, opts); err != nil {
			return nil, err
		}
		now := c.cfg.Clock.Now().UTC()
		return &tartarus.TerminationStatus{SandboxID: id, Tenant: sb.Tenant, Phase: tartarus.PhaseCompleted,
			Reason: opts.Reason, InitiatedAt: now, FinishedAt: now}, nil
	}
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Node: sb.Node, Kind: wire.KindDestroy,
		SandboxID: sb.ID, CreatedAt: c.cfg.Clock.Now().UTC(), Shutdown: opts}
	rec, err := commandRecord(cmd)
	if err != nil {
		return nil, err
	}
	if err := c.st.AddCommand(ctx, rec); err != nil {
		return nil, dbErr(err)
	}
	c.publish(ctx, Event{Kind: EventCommand, Node: cmd.Node})
	// The node starts it when its long poll brings the command; until then
	// there is no status to show.
	poll := c.cfg.Clock.NewTicker(c.cfg.PollInterval / 4)
	defer poll.Stop()
	deadline := c.cfg.Clock.Now().Add(startWait)
	for {
		st, err := c.Termination(ctx, id)
		if err == nil {
			return st, nil
		}
		if !errors.Is(err, tartarus.ErrNotFound) || !c.cfg.Clock.Now().Before(deadline) {
			return nil, fmt.Errorf("terminate sandbox %s on node %s (the command stands): %w", id, sb.Node, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-poll.C():
		}
	}
}

// Termination implements olympus.Terminator with the status the
// sandbox's node keeps (its Thanatos journal), also once the sandbox has
// ended, as long as the node is up.
func (c *Cluster) Termination(ctx context.Context, id string) (*tartarus.TerminationStatus, error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	if sb.Node == "" {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s has no termination on record (it sleeps unassigned)", id)
	}
	cl, err := c.nodeAPI(ctx, sb.Node, sb.Tenant)
	if err != nil {
		return nil, fmt.Errorf("termination of sandbox %s: %w", id, err)
	}
	return cl.Termination(ctx, id)
}

// PendingTerminations implements olympus.Terminator: the terminations of
// the sandboxes the cluster has in state terminating, each as its node
// reports it (a node that is down or does not answer is left out).
func (c *Cluster) PendingTerminations(ctx context.Context) ([]*tartarus.TerminationStatus, error) {
	sbs, err := c.st.List(ctx, tartarus.SandboxFilter{States: []tartarus.State{tartarus.StateTerminating}})
	if err != nil {
		return nil, dbErr(err)
	}
	out := []*tartarus.TerminationStatus{}
	for _, sb := range sbs {
		st, err := c.Termination(ctx, sb.ID)
		if err != nil {
			c.log.Debug("pending termination", "sandbox", sb.ID, "node", sb.Node, "err", err)
			continue
		}
		if !st.Phase.Final() {
			out = append(out, st)
		}
	}
	return out, nil
}

// Checkpoint implements olympus.Terminator: the sandbox's node takes it
// (and keeps it: a create from it goes to that node).
func (c *Cluster) Checkpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	ck, err := cl.Checkpoint(sctx, id)
	return ck, settle(sctx, err)
}

// Checkpoints implements olympus.Terminator: the tenant's checkpoints on
// every up node, newest first. A node that does not answer is left out
// (and logged).
func (c *Cluster) Checkpoints(ctx context.Context, tenant string) ([]*tartarus.Checkpoint, error) {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	out := []*tartarus.Checkpoint{}
	for _, n := range nodes {
		if n.State != store.NodeUp {
			continue
		}
		cl, err := c.nodeAPI(ctx, n.Name, tenant)
		if err == nil {
			var cks []*tartarus.Checkpoint
			if cks, err = cl.Checkpoints(ctx); err == nil {
				out = append(out, cks...)
			}
		}
		if err != nil {
			c.log.Warn("list a node's checkpoints", "node", n.Name, "err", err)
		}
	}
	slices.SortFunc(out, func(a, b *tartarus.Checkpoint) int { return b.CreatedAt.Compare(a.CreatedAt) })
	return out, nil
}

// nodeAPI returns a client of node's node API acting for tenant; the node
// must be up.
func (c *Cluster) nodeAPI(ctx context.Context, node, tenant string) (*client.Client, error) {
	n, err := c.st.Node(ctx, node)
	if err != nil {
		return nil, dbErr(err)
	}
	if n.State != store.NodeUp {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "node %s is %s", n.Name, n.State)
	}
	return client.New(n.Address, "", client.WithHTTPClient(c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, tenant))
}
