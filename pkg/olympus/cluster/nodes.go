package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// decodedStatus keeps a node's status decoded while its JSON stays the
// same (placement reads every node's, and decoding them was most of its
// cost).
type decodedStatus struct {
	raw []byte
	st  wire.NodeStatus
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
		failed, _ := json.Marshal(wire.Result{Error: &wire.Error{Code: tartarus.CodeOf(tartarus.ErrUnavailable), Message: reason}})
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
	if err := c.sharedImages(ctx, byName); err != nil {
		return nil, err
	}
	if len(byName) == 0 && len(errs) > 0 {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "templates: %v", errors.Join(errs...))
	}
	out := slices.Collect(maps.Values(byName))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Nodes implements olympus.Backend: every registered node, up or down.
func (c *Cluster) Nodes(ctx context.Context) ([]*tartarus.NodeInfo, error) {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*tartarus.NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		st := nodeStatus(n)
		info := &tartarus.NodeInfo{Name: n.Name, State: n.State, DownReason: n.DownReason, Address: n.Address,
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
