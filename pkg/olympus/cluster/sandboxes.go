package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Create places the sandbox, records it with its create command, and
// waits for the node to bring it up.
func (c *Cluster) Create(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	if err := req.Normalize(); err != nil {
		return nil, err
	}
	shared, err := c.sharedTemplate(ctx, tenant, req)
	if err != nil {
		return nil, err
	}
	plan, err := c.planHeat(ctx, req)
	if err != nil {
		return nil, err
	}
	if plan != nil && plan.wait > 0 {
		// Those waiting for room go first.
		waiting, err := c.queued(ctx, plan.heat)
		if err != nil {
			return nil, err
		}
		if waiting {
			return c.enqueue(ctx, tenant, req, plan)
		}
	}
	now := c.cfg.Clock.Now().UTC()
	// Node and Runtime are set when the sandbox is placed.
	sb := tartarus.NewSandbox(tartarus.NewID("sb-"), tenant, req, now)
	if plan != nil {
		sb.Heat = plan.info
	}
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Kind: wire.KindCreate, SandboxID: sb.ID, CreatedAt: now, Sandbox: sb}
	existing, err := c.st.Place(ctx, store.IdempotencyKey{Tenant: tenant, Key: req.IdempotencyKey}, func(nodes []*store.NodeRecord, taken func(string) bool) (*tartarus.Sandbox, *store.CommandRecord, error) {
		// An agent holding a warm sandbox of the template goes first; the
		// warm one becomes this sandbox (pools_forecast.go). A tenant
		// template no node has yet goes to one that can fetch it.
		name, rt, id, err := c.placeWarmFirst(nodes, req, plan, taken)
		if err != nil && shared != nil {
			id = ""
			name, rt, err = c.placeShared(nodes, req, plan)
		}
		if err != nil {
			return nil, nil, err
		}
		sb.Node, sb.Runtime, cmd.Node, cmd.Template = name, rt, name, shared
		if id != "" {
			sb.ID, cmd.SandboxID = id, id
		}
		cmd.Create = forNode(req, rt)
		rec, err := commandRecord(cmd)
		return sb, rec, err
	})
	if err != nil && plan != nil && plan.wait > 0 && errors.Is(err, tartarus.ErrResourceExhausted) {
		return c.enqueue(ctx, tenant, req, plan)
	}
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

// Get implements olympus.Backend; a create the admission queue holds or
// held answers from the queue's table.
func (c *Cluster) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := c.st.Get(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) && c.heat != nil {
		if q, qerr := c.queuedSandbox(ctx, id); qerr == nil {
			return q, nil
		}
	}
	return sb, err
}

// List implements olympus.Backend.
func (c *Cluster) List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error) {
	sbs, err := c.st.List(ctx, f)
	return sbs, dbErr(err)
}

// Counts implements olympus.Backend.
func (c *Cluster) Counts(ctx context.Context) (map[tartarus.State]int, error) {
	return c.st.CountByState(ctx)
}

// Destroy implements olympus.Backend.
func (c *Cluster) Destroy(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.destroy(ctx, id, nil)
}

// destroy ends sandbox id on its node as opts say (nil: at once, at the
// user's request), through the node's Thanatos.
func (c *Cluster) destroy(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.Sandbox, error) {
	sb, err := c.st.Get(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) && c.heat != nil {
		if q, qerr := c.cancelQueued(ctx, id); qerr == nil {
			return q, nil
		}
	}
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
	if _, err := c.send(ctx, &wire.Command{ID: tartarus.NewID("cmd-"), Node: sb.Node, Kind: wire.KindDestroy,
		SandboxID: sb.ID, CreatedAt: c.cfg.Clock.Now().UTC(), Shutdown: opts}); err != nil {
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
