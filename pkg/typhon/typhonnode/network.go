package typhonnode

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
)

var _ typhon.NetworkController = (*Host)(nil)

// Contain implements typhon.NetworkController through the agent's live
// network update (pkg/netns): none cuts everything, restricted allows only
// allowedEgress, monitored lets traffic out and logs it. The sandbox's own
// bandwidth limits stay; its public ports close. A sandbox created without
// a network has none to cut.
func (h *Host) Contain(ctx context.Context, id string, mode typhon.NetworkMode, allowedEgress []string, _ bool) (*tartarus.NetworkSpec, error) {
	sb, err := h.agent.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	spec, prev := typhon.ContainSpec(sb.Network, mode, allowedEgress)
	if spec == nil {
		return nil, nil
	}
	if _, err := h.agent.UpdateNetwork(ctx, id, spec); err != nil {
		return nil, err
	}
	// A sandbox held again (after a restart) already carries the
	// containment's spec; its owner's is on the record from the first time.
	return prev, nil
}

// Restore implements typhon.NetworkController.
func (h *Host) Restore(ctx context.Context, id string, prev *tartarus.NetworkSpec) error {
	if prev == nil {
		return nil
	}
	_, err := h.agent.UpdateNetwork(ctx, id, prev)
	return err
}

// netWindow is how far back net_attempts and net_denied look.
const netWindow = time.Minute

// netCounts reads the sandbox's connection log: attempts and denials in
// the last netWindow, and never before its last release (what a released
// sandbox did before is judged already).
func (h *Host) netCounts(ctx context.Context, sb *tartarus.Sandbox) (attempts, denied int) {
	if sb.Network == nil {
		return 0, 0
	}
	log, err := h.agent.NetworkLog(ctx, sb.ID)
	if err != nil {
		return 0, 0
	}
	floor := h.clk.Now().Add(-netWindow)
	h.mu.Lock()
	if t, ok := h.released[sb.ID]; ok && t.After(floor) {
		floor = t
	}
	h.mu.Unlock()
	for _, r := range log.Records {
		if r.Time.Before(floor) {
			continue
		}
		if r.Proto == "dns" || r.Name != "" && r.Port == 0 {
			continue // lookups are not connections
		}
		attempts++
		if !r.Allowed {
			denied++
		}
	}
	return attempts, denied
}

// networkEvidence is the connection log as evidence (host-observed: it is
// written from the sandbox's namespace on the host).
func (h *Host) networkEvidence(ctx context.Context, sb *tartarus.Sandbox) ([]byte, error) {
	if sb.Network == nil {
		return nil, errors.New("the sandbox has no network")
	}
	log, err := h.agent.NetworkLog(ctx, sb.ID)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"total": log.Total, "connections": log.Records})
}
