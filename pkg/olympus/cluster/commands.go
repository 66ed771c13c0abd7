package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func commandRecord(cmd *wire.Command) (*store.CommandRecord, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	return &store.CommandRecord{ID: cmd.ID, Node: cmd.Node, SandboxID: cmd.SandboxID, Kind: string(cmd.Kind),
		Body: body, CreatedAt: cmd.CreatedAt}, nil
}

// command sends one command about sandbox sb to its node and waits.
func (c *Cluster) command(ctx context.Context, sb *tartarus.Sandbox, kind wire.Kind, forkIDs []string) (*wire.Result, error) {
	return c.send(ctx, &wire.Command{ID: tartarus.NewID("cmd-"), Node: sb.Node, Kind: kind, SandboxID: sb.ID,
		CreatedAt: c.cfg.Clock.Now().UTC(), ForkIDs: forkIDs})
}

// send writes cmd durably, tells its node, and waits for the result.
func (c *Cluster) send(ctx context.Context, cmd *wire.Command) (*wire.Result, error) {
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
