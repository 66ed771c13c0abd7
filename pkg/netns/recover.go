package netns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// slotOf reads a sandbox's slot from the address of the veth end in its
// namespace (for namespaces left by an earlier run of the agent).
func (m *Manager) slotOf(ctx context.Context, id string) (int, bool) {
	out, err := run(ctx, "", "ip", "-n", m.NetnsName(id), "-4", "-o", "addr", "show", "dev", sandboxVeth)
	if err != nil {
		return 0, false
	}
	for _, f := range strings.Fields(string(out)) {
		if p, err := netip.ParsePrefix(f); err == nil {
			if slot, ok := m.slotOfAddr(p.Addr()); ok {
				return slot, true
			}
		}
	}
	return 0, false
}

// slotOfAddr is the slot whose transit /30 holds a.
func (m *Manager) slotOfAddr(a netip.Addr) (int, bool) {
	if !a.Is4() || !m.cfg.Transit.Contains(a) {
		return 0, false
	}
	x, b := a.As4(), m.cfg.Transit.Addr().As4()
	off := (uint32(x[0])<<24 | uint32(x[1])<<16 | uint32(x[2])<<8 | uint32(x[3])) -
		(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
	return int(off / 4), true
}

// Recover re-attaches the network of a sandbox that outlived an agent
// restart: it re-applies spec and restarts the resolver. A sandbox whose
// namespace is gone gets ErrNotFound (create it again).
func (m *Manager) Recover(ctx context.Context, id string, spec Spec) (*Sandbox, error) {
	if err := spec.Validate(); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "network: %v", err)
	}
	slot, ok := m.slotOf(ctx, id)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "network namespace of sandbox %s", id)
	}
	if spec.GuestNetns {
		if _, err := os.Stat(Path(m.guestNetnsName(id))); err != nil {
			return nil, tartarus.Errorf(tartarus.ErrNotFound, "guest network namespace of sandbox %s", id)
		}
	}
	m.mu.Lock()
	if _, dup := m.byID[id]; dup {
		m.mu.Unlock()
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "network of sandbox %s", id)
	}
	if other, used := m.slots[slot]; used {
		m.mu.Unlock()
		return nil, fmt.Errorf("recover network of sandbox %s: slot %d is held by %s", id, slot, other.ID)
	}
	sb := m.newSandbox(id, slot, spec)
	m.byID[id], m.slots[slot] = sb, sb
	m.mu.Unlock()
	err := func() error {
		if err := nft(ctx, m.uplink, sandboxScript(slot, sb.sbAddr, m.cfg.LogGroup, spec.Policy, sb.admitted, m.clock.Now())); err != nil {
			return err
		}
		if err := m.shape(ctx, sb, spec); err != nil {
			return err
		}
		dns, err := startResolver(m, sb)
		sb.dns = dns
		return err
	}()
	if err != nil {
		m.mu.Lock()
		delete(m.byID, id)
		delete(m.slots, slot)
		m.mu.Unlock()
		return nil, fmt.Errorf("recover network of sandbox %s: %w", id, err)
	}
	m.metrics.sandboxes.Inc()
	return sb, nil
}

// Reconcile removes every namespace, veth and nft object of ours that no
// sandbox in keep owns, and returns the ids it removed. Run it on recovery
// after a crash, with the ids of the sandboxes still alive.
func (m *Manager) Reconcile(ctx context.Context, keep map[string]bool) ([]string, error) {
	var errs []error
	var removed []string
	keptSlots := map[int]bool{}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reconcile networks: %w", err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Name(), m.cfg.NetnsPrefix)
		if !ok {
			continue
		}
		// A guest namespace goes with its sandbox's.
		id = strings.TrimSuffix(id, GuestNetnsSuffix)
		if seen[id] {
			continue
		}
		seen[id] = true
		if keep[id] {
			if s, ok := m.slotOf(ctx, id); ok {
				keptSlots[s] = true
			}
			continue
		}
		if err := m.Destroy(ctx, id); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, id)
	}
	m.mu.Lock()
	for s := range m.slots {
		keptSlots[s] = true
	}
	m.mu.Unlock()
	// Leftovers whose namespace is already gone: veths and chains by slot.
	slots, err := m.uplinkSlots(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for s := range slots {
		if !keptSlots[s] {
			if err := m.removeSlot(ctx, s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// uplinkSlots lists the slots that have a veth or a chain in the uplink.
func (m *Manager) uplinkSlots(ctx context.Context) (map[int]bool, error) {
	slots := map[int]bool{}
	out, err := run(ctx, "", "ip", nsArgs(m.cfg.UplinkNetns, "-o", "link", "show")...)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		var s int
		if _, err := fmt.Sscanf(name, "ttv%d", &s); err == nil && name == hostVeth(s) {
			slots[s] = true
		}
	}
	var listing []byte
	err = Do(m.uplink, func() error {
		var err error
		listing, err = run(ctx, "", "nft", "list", "table", "inet", "tartarus")
		return err
	})
	if err != nil {
		return slots, err
	}
	for _, line := range strings.Split(string(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || (f[0] != "chain" && f[0] != "set") {
			continue
		}
		var s int
		if _, err := fmt.Sscanf(f[1], "sb%d", &s); err == nil {
			slots[s] = true
		}
	}
	return slots, nil
}
