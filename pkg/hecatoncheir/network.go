package hecatoncheir

import (
	"cmp"
	"context"
	"fmt"
	"net"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Sandbox networks: the runtime builds a sandbox's network with its VM
// (VMConfig.Network; the microvm driver asks pkg/netns), so every path that
// creates, restores, hibernates, wakes or destroys a VM carries it along.
// The agent decides which network a new sandbox gets (its own request, or
// the node's default), keeps the spec in the store (the source of truth for
// restore, wake, fork and recovery), applies updates to running sandboxes,
// and reaches guest ports for the exposed-port routes.

// Networks is what the agent asks of the node's network manager
// (pkg/netns.Manager implements it).
type Networks interface {
	Update(ctx context.Context, id string, spec netns.Spec) error
	Log(id string) ([]netns.Record, uint64, error)
	DialGuest(ctx context.Context, id string, port uint16) (net.Conn, error)
	Reconcile(ctx context.Context, keep map[string]bool) ([]string, error)
}

var _ Networks = (*netns.Manager)(nil)

// chooseNetwork fills req.Network with the node's default when the request
// has none, and checks that the runtime can give it: a runtime without
// Capabilities.Network answers ErrNotImplemented with the reason.
func (a *Agent) chooseNetwork(rt tartarus.Runtime, fp *tartarus.Fingerprint, req *tartarus.CreateRequest) error {
	if req.Network == nil && a.cfg.DefaultNetwork != nil && fp.Capabilities.Network {
		n := *a.cfg.DefaultNetwork
		req.Network = &n
	}
	if req.Network == nil {
		return nil
	}
	if !fp.Capabilities.Network {
		// The runtime's fingerprint says why, when it knows.
		why := cmp.Or(fp.Details["network"], "the node was started without networking")
		return tartarus.Errorf(tartarus.ErrNotImplemented, "network mode %s: runtime %s cannot give a sandbox a network on this node: %s", req.Network.Mode, rt.Name(), why)
	}
	_, err := netns.SpecOf(req.Network)
	return err
}

// UpdateNetwork replaces the network policy and limits of sandbox id.
// A running or paused sandbox gets it at once (new connections see it;
// open ones are kept); a hibernated one when it wakes. A sandbox created
// without a network cannot get one (its VM has no network card).
func (a *Agent) UpdateNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error) {
	if n == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "no network spec")
	}
	if err := n.Check(); err != nil {
		return nil, err
	}
	spec, err := netns.SpecOf(n)
	if err != nil {
		return nil, err
	}
	setter, ok := a.cfg.Store.(store.NetworkSetter)
	if !ok || a.cfg.Networks == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node cannot change sandbox networks")
	}
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.Network == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s was created without a network; create it with \"network\" to change its policy later", id)
	}
	switch sb.State {
	case tartarus.StateRunning, tartarus.StatePaused, tartarus.StateQuarantined:
		if err := a.cfg.Networks.Update(ctx, id, spec); err != nil {
			return nil, fmt.Errorf("update network of %s: %w", id, err)
		}
	case tartarus.StateHibernated:
		// Applied by syncNetwork when it wakes.
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, sb.State)
	}
	out, err := setter.SetNetwork(ctx, id, n)
	if err != nil {
		return nil, err
	}
	a.log.Info("sandbox network updated", "sandbox", id, "network", n.String())
	return out, nil
}

// NetworkLog returns sandbox id's connection log.
func (a *Agent) NetworkLog(ctx context.Context, id string) (*tartarus.NetworkLog, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.Network == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s has no network", id)
	}
	if a.cfg.Networks == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node has no sandbox networking")
	}
	recs, total, err := a.cfg.Networks.Log(id)
	if err != nil {
		if sb.State == tartarus.StateHibernated {
			// The log lives with the network, which sleep releases.
			return &tartarus.NetworkLog{Records: []tartarus.ConnectionRecord{}}, nil
		}
		return nil, err
	}
	out := &tartarus.NetworkLog{Records: make([]tartarus.ConnectionRecord, 0, len(recs)), Total: total}
	for _, r := range recs {
		out.Records = append(out.Records, tartarus.ConnectionRecord{Time: r.Time, Dst: r.Dst.String(), Port: r.Port,
			Proto: r.Proto, Allowed: r.Allowed, Rule: r.Rule, Name: r.Name, SrcPort: r.SrcPort,
			BytesOut: r.BytesOut, BytesIn: r.BytesIn})
	}
	return out, nil
}

// DialPort opens a connection to port of sandbox id's guest, waking it
// first if it hibernates (auto-resume). The exposed-port routes proxy over
// it; each dial counts as activity on the sandbox.
func (a *Agent) DialPort(ctx context.Context, id string, port uint16) (net.Conn, error) {
	if a.cfg.Networks == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node has no sandbox networking")
	}
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.Network == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s has no network; its ports cannot be reached", id)
	}
	if _, _, err := a.awake(ctx, id); err != nil {
		return nil, err
	}
	a.touch(ctx, id)
	return a.cfg.Networks.DialGuest(ctx, id, port)
}

// syncNetwork applies the stored network spec of sandbox id to its live
// network (after a wake, whose VM was restored with the spec of its sleep,
// or after recovery, whose driver re-attached the spec of its creation).
func (a *Agent) syncNetwork(ctx context.Context, id string) {
	if a.cfg.Networks == nil {
		return
	}
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil || sb.Network == nil {
		return
	}
	spec, err := netns.SpecOf(sb.Network)
	if err == nil {
		err = a.cfg.Networks.Update(ctx, id, spec)
	}
	if err != nil {
		a.log.Warn("re-apply sandbox network", "sandbox", id, "err", err)
	}
}

// reconcileNetworks removes every sandbox network that no adopted sandbox
// owns (left by a crash), and re-applies the stored spec of the rest.
func (a *Agent) reconcileNetworks(ctx context.Context, adopted map[string]map[string]bool) error {
	if a.cfg.Networks == nil {
		return nil
	}
	keep := map[string]bool{}
	for _, ids := range adopted {
		for id := range ids {
			keep[id] = true
		}
	}
	removed, err := a.cfg.Networks.Reconcile(ctx, keep)
	if len(removed) > 0 {
		a.log.Info("removed sandbox networks no sandbox owns", "count", len(removed))
	}
	for id := range keep {
		a.syncNetwork(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("reconcile sandbox networks: %w", err)
	}
	return nil
}
