package hecatoncheir

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Templates lists the built templates.
func (a *Agent) Templates(ctx context.Context) ([]*tartarus.Image, error) {
	return a.cfg.Images.List(ctx)
}

// NodeInfo describes this node and what its runtimes can do.
type NodeInfo struct {
	Name     string                  `json:"name"`
	Runtimes []*tartarus.Fingerprint `json:"runtimes"`
	// DefaultRuntime is used when a create request names none.
	DefaultRuntime string `json:"default_runtime"`
	// Sandboxes counts this node's sandboxes that are not final.
	Sandboxes int `json:"sandboxes"`
	// SnapshotRuntimes can hibernate, fork and create by restore here.
	SnapshotRuntimes []string `json:"snapshot_runtimes,omitempty"`
	// WarmPools counts the ready sandboxes of each warm pool, by
	// "runtime/template/memory_mb/cpus".
	WarmPools map[string]int `json:"warm_pools,omitempty"`

	// In a cluster: whether the node is "up" or "down" (and why), where
	// its agent listens, its labels and last heartbeat, and what its
	// sandboxes hold of its CPUs and memory.
	State        string            `json:"state,omitempty"`
	DownReason   string            `json:"down_reason,omitempty"`
	Address      string            `json:"address,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	LastSeen     time.Time         `json:"last_seen,omitzero"`
	CPUs         int               `json:"cpus,omitempty"`
	MemoryMB     int               `json:"memory_mb,omitempty"`
	UsedCPUs     int               `json:"used_cpus,omitempty"`
	UsedMemoryMB int               `json:"used_memory_mb,omitempty"`
}

// ForgetNode refuses: a single node has only itself.
func (a *Agent) ForgetNode(ctx context.Context, name string) error {
	return tartarus.Errorf(tartarus.ErrFailedPrecondition, "node %s: a single-node server cannot forget its only node", name)
}

// Nodes reports this node, the only one.
func (a *Agent) Nodes(ctx context.Context) ([]*NodeInfo, error) {
	info, err := a.Info(ctx)
	if err != nil {
		return nil, err
	}
	return []*NodeInfo{info}, nil
}

// Info reports this node.
func (a *Agent) Info(ctx context.Context) (*NodeInfo, error) {
	info := &NodeInfo{Name: a.cfg.Node, DefaultRuntime: a.cfg.Runtimes[0].Name(),
		SnapshotRuntimes: a.SnapshotRuntimes(), WarmPools: a.PoolSizes()}
	for _, rt := range a.cfg.Runtimes {
		fp, err := rt.Fingerprint(ctx)
		if err != nil {
			fp = &tartarus.Fingerprint{Runtime: rt.Name(), Reason: err.Error()}
		}
		info.Runtimes = append(info.Runtimes, fp)
	}
	live, err := a.cfg.Store.List(ctx, store.Filter{Node: a.cfg.Node, States: liveStates})
	if err != nil {
		return nil, err
	}
	info.Sandboxes = len(live)
	return info, nil
}

// Ready returns nil when the node can create sandboxes: a runtime is
// available and at least one template is built.
func (a *Agent) Ready(ctx context.Context) error {
	var reasons []string
	avail := false
	for _, rt := range a.cfg.Runtimes {
		fp, err := rt.Fingerprint(ctx)
		switch {
		case err != nil:
			reasons = append(reasons, fmt.Sprintf("runtime %s: %v", rt.Name(), err))
		case !fp.Available:
			reasons = append(reasons, fmt.Sprintf("runtime %s: %s", rt.Name(), fp.Reason))
		default:
			avail = true
		}
	}
	if !avail {
		return tartarus.Errorf(tartarus.ErrUnavailable, "no runtime available (%s)", strings.Join(reasons, "; "))
	}
	imgs, err := a.cfg.Images.List(ctx)
	if err != nil {
		return tartarus.Errorf(tartarus.ErrUnavailable, "templates: %v", err)
	}
	if len(imgs) == 0 {
		return tartarus.Errorf(tartarus.ErrUnavailable, "no template is built (run `tartarus template build base`)")
	}
	return nil
}
