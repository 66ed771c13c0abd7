package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon/typhonnode"
)

// Quarantine on a cluster: every replica serves the quarantine routes with
// a typhon.Manager over the same Postgres journal (records, reports,
// policy) and the same evidence store; the trigger tick runs on one
// replica at a time, the one holding quarantineLease. What happens to the
// sandbox itself goes to the agent holding it: its state and signals and
// its evidence through the node API's quarantine routes
// (typhonnode.NodeAPI), its network through UpdateNetwork, hibernate, wake
// and destroy as durable commands, and a move to a quarantine node through
// the wake-elsewhere path (MoveTo). One sandbox's quarantine steps are
// serialized across replicas by an advisory lock (QuarantineLock).

// quarantineLease is the advisory lock key of the replica that ticks.
const quarantineLease = 0x7479706830 // "typh0"

// maxCollectBytes bounds the evidence an agent sends back for one
// quarantine (the disk diff and the connection log are the big pieces).
const maxCollectBytes = 256 << 20

// QuarantineHost is typhon.Host over the cluster: the sandboxes of every
// node, each reached through the agent that holds it.
type QuarantineHost struct {
	c *Cluster
}

var (
	_ typhon.Host              = (*QuarantineHost)(nil)
	_ typhon.Sleeper           = (*QuarantineHost)(nil)
	_ typhon.NetworkController = (*QuarantineHost)(nil)
)

// QuarantineHost returns the cluster as Typhon's host.
func (c *Cluster) QuarantineHost() *QuarantineHost { return &QuarantineHost{c: c} }

// Sandboxes implements typhon.Host: the running sandboxes of every node.
func (h *QuarantineHost) Sandboxes(ctx context.Context) ([]*tartarus.Sandbox, error) {
	sbs, err := h.c.st.List(ctx, tartarus.SandboxFilter{States: []tartarus.State{tartarus.StateRunning}})
	return sbs, dbErr(err)
}

// Get implements typhon.Host.
func (h *QuarantineHost) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := h.c.st.Get(ctx, id)
	return sb, dbErr(err)
}

// SetQuarantined implements typhon.Host: the agent moves the sandbox's
// state, and the cluster's record takes the agent's at once, so that every
// replica refuses the owner from then on.
func (h *QuarantineHost) SetQuarantined(ctx context.Context, id string, on bool) error {
	var sb tartarus.Sandbox
	if err := h.c.sandboxCall(ctx, id, http.MethodPost, typhonnode.PathState, typhonnode.StateRequest{On: on}, &sb, 1<<20); err != nil {
		return fmt.Errorf("quarantine state of %s: %w", id, err)
	}
	if sb.ID != id {
		return fmt.Errorf("quarantine state of %s: the node answered for %.80q", id, sb.ID)
	}
	if _, err := h.c.st.Report(ctx, sb.Node, &sb); err != nil {
		return fmt.Errorf("record quarantine state of %s: %w", id, dbErr(err))
	}
	return nil
}

// Signals implements typhon.Host with the counters the sandbox's node
// reads (host counters of its QEMU, its exec log and connection log).
func (h *QuarantineHost) Signals(ctx context.Context, sb *tartarus.Sandbox) (*typhon.Signals, error) {
	var s typhon.Signals
	if err := h.c.sandboxCall(ctx, sb.ID, http.MethodGet, typhonnode.PathSignals, nil, &s, 4<<20); err != nil {
		return nil, err
	}
	// Who the sandbox is comes from the cluster's record, not the node.
	s.SandboxID, s.Tenant, s.Template, s.Runtime, s.Metadata = sb.ID, sb.Tenant, sb.Template, sb.Runtime, sb.Metadata
	return &s, nil
}

// Collect implements typhon.Host: the sandbox's node gathers the evidence
// and sends its bytes here, to be stored in the evidence store every
// replica reads.
func (h *QuarantineHost) Collect(ctx context.Context, sb *tartarus.Sandbox, iso *typhon.QuarantineIsolation, keepFor time.Duration) []typhon.Evidence {
	req := typhonnode.CollectRequest{KeepForS: int64(keepFor / time.Second)}
	if iso != nil {
		req.Isolation = *iso
	}
	var out typhonnode.CollectResponse
	if err := h.c.sandboxCall(ctx, sb.ID, http.MethodPost, typhonnode.PathCollect, req, &out, maxCollectBytes); err != nil {
		return []typhon.Evidence{{Type: tartarus.EvidenceNote, Source: tartarus.SourceHost, Timestamp: h.c.cfg.Clock.Now().UTC(),
			Description: fmt.Sprintf("evidence not collected from node %s: %v", sb.Node, err), Data: []byte(err.Error())}}
	}
	return out.Evidence
}

// Destroy implements typhon.Host: the node's Thanatos ends the sandbox with
// reason policy_violation.
func (h *QuarantineHost) Destroy(ctx context.Context, id string) error {
	_, err := h.c.destroy(ctx, id, &tartarus.ShutdownOptions{Reason: tartarus.ReasonPolicyViolation})
	return err
}

// Hibernate implements typhon.Sleeper.
func (h *QuarantineHost) Hibernate(ctx context.Context, id string) error {
	_, err := h.c.Hibernate(ctx, id)
	return err
}

// Wake implements typhon.Sleeper.
func (h *QuarantineHost) Wake(ctx context.Context, id string) error {
	_, err := h.c.Wake(ctx, id)
	return err
}

// Contain implements typhon.NetworkController through the cluster's
// network route (UpdateNetwork): the spec in the cluster's record before
// is returned to put back at release.
func (h *QuarantineHost) Contain(ctx context.Context, id string, mode typhon.NetworkMode, allowedEgress []string, _ bool) (*tartarus.NetworkSpec, error) {
	sb, err := h.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	spec, prev := typhon.ContainSpec(sb.Network, mode, allowedEgress)
	if spec == nil {
		return nil, nil
	}
	if _, err := h.c.UpdateNetwork(ctx, id, spec); err != nil {
		return nil, err
	}
	return prev, nil
}

// Restore implements typhon.NetworkController.
func (h *QuarantineHost) Restore(ctx context.Context, id string, prev *tartarus.NetworkSpec) error {
	if prev == nil {
		return nil
	}
	_, err := h.c.UpdateNetwork(ctx, id, prev)
	return err
}

// sandboxCall calls a quarantine route (a fmt path of typhonnode) of the
// node API holding sandbox id, as the sandbox's tenant, and decodes at most
// limit bytes of its JSON answer into out.
func (c *Cluster) sandboxCall(ctx context.Context, id, method, path string, in, out any, limit int64) error {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return dbErr(err)
	}
	if sb.State.Final() || sb.Node == "" {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s on no node", id, sb.State)
	}
	sctx, done := c.track(ctx, sb.Node, sb.ID)
	defer done()
	if err := c.nodeCall(sctx, sb.Node, sb.Tenant, method, fmt.Sprintf(path, id), in, out, limit); err != nil {
		return settle(sctx, fmt.Errorf("sandbox %s: %w", id, err))
	}
	return nil
}

// RunQuarantine keeps the manager's view of held sandboxes and its policy
// fresh (every PollInterval, from the journal every replica shares) and,
// while this replica holds the quarantine lease, ticks it every
// m.Interval(): one replica evaluates the triggers and enforces the
// bounds, and another takes over within a PollInterval when it dies (its
// lease goes with its database session).
func (c *Cluster) RunQuarantine(ctx context.Context, m *typhon.Manager) {
	c.runLeased(ctx, quarantineLease, "the quarantine triggers", m.Interval(),
		func(ctx context.Context) {
			if err := m.Refresh(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("quarantine records", "err", dbErr(err))
			}
		},
		func(ctx context.Context) {
			for _, err := range m.Tick(ctx).Errors {
				c.log.Warn("quarantine trigger", "err", err)
			}
		})
}

// runLeased runs every each PollInterval on this replica, and lead every
// interval while this replica holds the advisory lock key (taking it when
// no replica does), until ctx ends.
func (c *Cluster) runLeased(ctx context.Context, key int64, what string, interval time.Duration, every, lead func(context.Context)) {
	t := c.cfg.Clock.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	var lease *store.Lease
	defer func() {
		if lease != nil {
			lease.Release(context.Background())
		}
	}()
	var last time.Time
	for {
		every(ctx)
		switch {
		case lease == nil:
			l, err := c.st.TryLease(ctx, key)
			if err != nil && ctx.Err() == nil {
				c.log.Warn("lease", "of", what, "err", err)
			}
			if l != nil {
				lease = l
				c.log.Info("this replica runs " + what)
			}
		case lease.Check(ctx) != nil:
			lease.Release(context.Background())
			lease = nil
			c.log.Warn("this replica no longer runs " + what + ": lost the database session holding its lease")
		}
		if now := c.cfg.Clock.Now(); lease != nil && now.Sub(last) >= interval {
			last = now
			lead(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// QuarantineLock implements typhon.Config.Lock over a Postgres session
// advisory lock keyed by the sandbox: two replicas never take quarantine
// steps on one sandbox at once (a trigger at one and a manual quarantine
// at another would otherwise both write a record).
func (c *Cluster) QuarantineLock(ctx context.Context, sandboxID string) (func(), error) {
	h := fnv.New64a()
	h.Write([]byte("typhon/" + sandboxID))
	key := int64(h.Sum64())
	for {
		l, err := c.st.TryLease(ctx, key)
		if err != nil {
			return nil, dbErr(err)
		}
		if l != nil {
			return func() { l.Release(context.WithoutCancel(ctx)) }, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("quarantine lock of %s: %w", sandboxID, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// offQuarantineNodes leaves out the nodes labelled typhon.NodeLabel unless
// the request names that label: quarantine nodes hold quarantined
// sandboxes only.
func offQuarantineNodes(cands []placement.Node, req placement.Request) []placement.Node {
	if _, ok := req.Labels[typhon.NodeLabel]; ok {
		return cands
	}
	return slices.DeleteFunc(cands, func(n placement.Node) bool {
		_, ok := n.Labels[typhon.NodeLabel]
		return ok
	})
}

var _ typhon.Mover = (*QuarantineHost)(nil)

// MoveTo implements typhon.Mover with the cluster's wake-elsewhere path:
// the sandbox hibernates on its node (its snapshot in the storage the
// nodes share), leaves it, and wakes on an up node that carries one of
// labels, tried in order. A sandbox whose node carries one stays. When no
// labelled node takes it, it wakes where it was.
func (h *QuarantineHost) MoveTo(ctx context.Context, id string, labels []string) (string, error) {
	c := h.c
	sb, err := h.Get(ctx, id)
	if err != nil {
		return "", err
	}
	want := make([]map[string]string, 0, len(labels))
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return sb.Node, tartarus.Errorf(tartarus.ErrInvalid, "quarantine node label %.80q: want key=value", l)
		}
		want = append(want, map[string]string{k: v})
	}
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return sb.Node, dbErr(err)
	}
	carries := func(n *store.NodeRecord) bool {
		got := c.status(n).Labels
		for _, w := range want {
			for k, v := range w {
				if got[k] == v {
					return true
				}
			}
		}
		return false
	}
	// Move only when the sandbox can go: its node shares snapshots and an
	// up labelled node does too.
	var from *store.NodeRecord
	target := false
	for _, n := range nodes {
		if n.Name == sb.Node {
			from = n
		} else if n.State == store.NodeUp && !n.Draining && c.status(n).SharedSnapshots && carries(n) {
			target = true
		}
	}
	switch {
	case from == nil:
		return sb.Node, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is on no known node", id)
	case carries(from):
		return sb.Node, nil
	case !c.status(from).SharedSnapshots:
		return sb.Node, tartarus.Errorf(tartarus.ErrFailedPrecondition, "node %s keeps its snapshots to itself (agent --snapshots): its sandboxes cannot move", from.Name)
	case !target:
		return sb.Node, tartarus.Errorf(tartarus.ErrUnavailable, "no up node that shares snapshots carries %v", labels)
	}
	if _, err := c.Hibernate(ctx, id); err != nil {
		return sb.Node, fmt.Errorf("hibernate to move: %w", err)
	}
	if ok, err := c.st.Unassign(ctx, id, from.Name, c.cfg.Clock.Now().UTC()); err != nil || !ok {
		if err == nil {
			err = tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s changed while it hibernated", id)
		}
		return sb.Node, fmt.Errorf("move off %s: %w", from.Name, dbErr(err))
	}
	if sb, err = h.Get(ctx, id); err != nil {
		return "", err
	}
	var errs []error
	for _, w := range want {
		moved, err := c.adoptOn(ctx, sb, w)
		if err == nil {
			return moved.Node, nil
		}
		errs = append(errs, err)
		if sb, err = h.Get(ctx, id); err != nil {
			return "", err
		}
		if sb.Node != "" {
			return sb.Node, errors.Join(errs...) // a node has it (a command that timed out still ran)
		}
	}
	// Nobody labelled took it: back where it was.
	if ok, err := c.st.Reclaim(ctx, id, from.Name, c.cfg.Clock.Now().UTC()); err != nil || !ok {
		errs = append(errs, fmt.Errorf("give it back to %s: %v", from.Name, err))
		return "", errors.Join(errs...)
	}
	if _, err := c.Wake(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("wake it on %s again: %w", from.Name, err))
	}
	return from.Name, errors.Join(errs...)
}
