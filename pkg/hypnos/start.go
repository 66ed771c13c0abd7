package hypnos

import (
	"context"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Start loads the durable sleep records and reconciles them with what the
// runtime holds (after Runtime.Recover), finishing or undoing whatever a
// crash interrupted:
//   - a record whose sandbox still exists, paused: the crash came between
//     storing the snapshot and destroying the VM; the VM is destroyed.
//   - a record whose sandbox still exists, running: a Sleep was rolled back,
//     or a Wake restored it, before the record was deleted; the record and
//     its snapshot go.
//   - a snapshot under Hypnos's Nyx prefix that no record refers to: a
//     crash came between writing one and the other; the snapshot goes.
//
// It returns the sandboxes that are hibernated.
func (m *HypnosManager) Start(ctx context.Context) ([]*SleepRecord, error) {
	recs, err := m.records.ListRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("hypnos start: %w", err)
	}
	insts, err := m.rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("hypnos start: %w", err)
	}
	live := map[string]*tartarus.Instance{}
	for _, in := range insts {
		live[in.ID] = in
	}
	var sleeping []*SleepRecord
	for _, rec := range recs {
		if rec.Status != StatusSleeping {
			continue
		}
		if in, ok := live[rec.SandboxID]; ok {
			if in.State == tartarus.InstanceRunning {
				m.log.Info("sandbox runs although a sleep record exists; dropping the record", "sandbox", rec.SandboxID)
				if err := m.forgetSleep(ctx, rec); err != nil {
					return nil, fmt.Errorf("hypnos start: %w", err)
				}
				continue
			}
			m.log.Info("finishing an interrupted sleep", "sandbox", rec.SandboxID, "state", in.State)
			if err := m.rt.Destroy(context.WithoutCancel(ctx), rec.SandboxID); err != nil {
				return nil, fmt.Errorf("hypnos start: destroy %s: %w", rec.SandboxID, err)
			}
		}
		sleeping = append(sleeping, rec.clone())
	}
	m.collectGarbage(ctx, recs)
	m.mu.Lock()
	for _, rec := range sleeping {
		m.sleeping[rec.SandboxID] = rec
	}
	m.mu.Unlock()
	for _, rec := range sleeping {
		m.notify(rec.SandboxID, tartarus.StateHibernated, rec, "hibernated (recovered)")
	}
	return sleeping, nil
}

// collectGarbage deletes the snapshots that no record refers to: a sleep
// interrupted between storing its snapshot and writing its record, or a
// wake or rollback interrupted between deleting the record and the
// snapshot. Only Start calls it, before any Sleep can run; that is why
// Hypnos needs a Nyx prefix of its own. Failures are logged: garbage costs
// disk, not correctness.
func (m *HypnosManager) collectGarbage(ctx context.Context, recs []*SleepRecord) {
	used := map[string]bool{}
	for _, r := range recs {
		used[r.SnapshotID] = true
	}
	var unused []string
	snaps, err := m.snaps.List(ctx)
	if err != nil {
		m.log.Warn("cannot list snapshots to collect garbage", "err", err)
		return
	}
	for _, s := range snaps {
		if s.Labels["purpose"] == "hibernate" && !used[s.ID] {
			unused = append(unused, s.ID)
		}
	}
	incomplete, err := m.snaps.Incomplete(ctx)
	if err != nil {
		m.log.Warn("cannot list incomplete snapshots", "err", err)
		return
	}
	for _, id := range incomplete {
		if !used[id] {
			unused = append(unused, id)
		}
	}
	for _, id := range unused {
		if err := m.snaps.Delete(ctx, id); err != nil {
			m.log.Warn("cannot delete an unused snapshot", "snapshot", id, "err", err)
			continue
		}
		m.log.Info("deleted a snapshot no sleep record refers to", "snapshot", id)
	}
}
