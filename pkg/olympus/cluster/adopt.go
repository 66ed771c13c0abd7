package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// adopt places an unassigned hibernated sandbox on a node that wakes it
// from the shared snapshot.
func (c *Cluster) adopt(ctx context.Context, sb *tartarus.Sandbox) (*tartarus.Sandbox, error) {
	return c.adoptOn(ctx, sb, nil)
}

// adoptOn is adopt onto a node that carries labels.
func (c *Cluster) adoptOn(ctx context.Context, sb *tartarus.Sandbox, labels map[string]string) (*tartarus.Sandbox, error) {
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
			name, _, err := c.place(shared, sb.Template, placement.Request{Runtime: sb.Runtime, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Labels: labels, Avoid: avoid})
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
		if n.State == store.NodeUp && !n.Draining && c.status(n).SharedSnapshots {
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
