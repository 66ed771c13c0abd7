package hecatoncheir

import (
	"context"
	"fmt"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Templates lists the built templates.
func (a *Agent) Templates(ctx context.Context) ([]*tartarus.Image, error) {
	return a.cfg.Images.List(ctx)
}

// ForgetNode refuses: a single node has only itself.
func (a *Agent) ForgetNode(ctx context.Context, name string) error {
	return tartarus.Errorf(tartarus.ErrFailedPrecondition, "node %s: a single-node server cannot forget its only node", name)
}

// Nodes reports this node, the only one.
func (a *Agent) Nodes(ctx context.Context) ([]*tartarus.NodeInfo, error) {
	info, err := a.Info(ctx)
	if err != nil {
		return nil, err
	}
	return []*tartarus.NodeInfo{info}, nil
}

// Info reports this node.
func (a *Agent) Info(ctx context.Context) (*tartarus.NodeInfo, error) {
	info := &tartarus.NodeInfo{Name: a.cfg.Node, DefaultRuntime: a.cfg.Runtimes[0].Name(),
		SnapshotRuntimes: a.SnapshotRuntimes(), WarmPools: a.PoolSizes()}
	for _, rt := range a.cfg.Runtimes {
		fp, err := rt.Fingerprint(ctx)
		if err != nil {
			fp = &tartarus.Fingerprint{Runtime: rt.Name(), Reason: err.Error()}
		}
		info.Runtimes = append(info.Runtimes, fp)
	}
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node, States: tartarus.LiveStates()})
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
