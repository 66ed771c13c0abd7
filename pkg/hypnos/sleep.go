package hypnos

import (
	"context"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Sleep implements SleepManager: pause, snapshot, compress and store, record,
// destroy. If a step fails, the sandbox is put back as it was (running, or
// paused if its user had paused it), nothing stored is left behind, and the
// error says which step failed. Cancelling ctx aborts the sleep the same way.
func (m *HypnosManager) Sleep(ctx context.Context, sandboxID string, opts *SleepOptions) (*SleepRecord, error) {
	for {
		m.mu.Lock()
		if rec, ok := m.sleeping[sandboxID]; ok {
			m.mu.Unlock()
			return rec.clone(), nil
		}
		f, busy := m.flights[sandboxID]
		if !busy {
			f = &flight{kind: flightSleep, done: make(chan struct{})}
			m.flights[sandboxID] = f
			m.mu.Unlock()
			break
		}
		m.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.kind == flightSleep {
			if f.err != nil {
				return nil, f.err
			}
			return f.rec.clone(), nil
		}
		// A wake (or expiry) just ended: look again.
	}

	rec, err := m.sleep(ctx, sandboxID, opts)
	m.mu.Lock()
	f := m.flights[sandboxID]
	delete(m.flights, sandboxID)
	if err == nil {
		m.sleeping[sandboxID] = rec
	}
	m.mu.Unlock()
	if err == nil {
		m.notify(sandboxID, tartarus.StateHibernated, rec, "hibernated")
	}
	f.rec, f.err = rec, err
	close(f.done)
	if err != nil {
		return nil, err
	}
	return rec.clone(), nil
}

func (m *HypnosManager) sleep(ctx context.Context, id string, opts *SleepOptions) (*SleepRecord, error) {
	start := m.clock.Now()
	o := SleepOptions{CompressMemory: m.cfg.CompressionAlgorithm != "none"}
	if opts != nil {
		o = *opts
	}
	inst, err := m.instance(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("sleep %s: %w", id, err)
	}
	if inst.State != tartarus.InstanceRunning && inst.State != tartarus.InstancePaused {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sleep %s: sandbox is %s", id, inst.State)
	}
	wasPaused := inst.State == tartarus.InstancePaused
	cfg, tenant, err := m.sandboxInfo(ctx, inst)
	if err != nil {
		return nil, fmt.Errorf("sleep %s: %w", id, err)
	}
	if o.TenantID != "" {
		tenant = o.TenantID
	}

	// From here on, a failure undoes what was done, under a context that
	// the caller's cancellation does not end.
	undoCtx := context.WithoutCancel(ctx)
	compression := nyx.CompressionNone
	if o.CompressMemory && m.cfg.CompressionAlgorithm == "zstd" {
		compression = nyx.CompressionZstd
	}
	snap, err := m.snaps.CreateFromRunning(ctx, id, &nyx.CreateOptions{
		Compression: compression,
		Labels:      map[string]string{"purpose": "hibernate", "sandbox": id},
	})
	if err != nil {
		return nil, m.undoSleep(undoCtx, id, wasPaused, nil, fmt.Errorf("sleep %s: snapshot: %w", id, err))
	}

	now := m.clock.Now()
	rec := &SleepRecord{
		SandboxID:       id,
		TenantID:        tenant,
		Template:        snap.Template,
		SleepTime:       now,
		MemorySize:      snap.MemoryBytes,
		CompressedSize:  snap.CompressedSize,
		SnapshotID:      snap.ID,
		SnapshotPath:    snap.DataKey,
		WakePriority:    o.WakePriority,
		PreserveNetwork: o.PreserveNetwork,
		WasPaused:       wasPaused,
		Config:          cfg,
		Status:          StatusSleeping,
	}
	if o.MaxSleepDuration > 0 {
		t := now.Add(o.MaxSleepDuration)
		rec.ExpiresAt = &t
	}
	if o.WakeAfter > 0 {
		t := now.Add(o.WakeAfter)
		rec.ScheduledWake = &t
	}
	if err := m.records.PutRecord(ctx, rec); err != nil {
		return nil, m.undoSleep(undoCtx, id, wasPaused, rec, fmt.Errorf("sleep %s: record: %w", id, err))
	}
	// The snapshot and its record are durable: from here a crash leaves a
	// hibernated sandbox (Start destroys the VM if it is still there).
	if err := m.rt.Destroy(ctx, id); err != nil {
		return nil, m.undoSleep(undoCtx, id, wasPaused, rec, fmt.Errorf("sleep %s: free resources: %w", id, err))
	}
	rec.SleepDuration = m.clock.Now().Sub(start)
	m.log.Info("sandbox hibernated", "sandbox", id, "memory_size", rec.MemorySize,
		"compressed_size", rec.CompressedSize, "took", rec.SleepDuration)
	return rec, nil
}

// undoSleep puts a sandbox whose Sleep failed back as it was and removes
// what the sleep stored. If the sandbox cannot be resumed but its snapshot
// and record are stored, it stays hibernated rather than lost: the record
// is kept, the VM's remains destroyed, and the error says so.
func (m *HypnosManager) undoSleep(ctx context.Context, id string, wasPaused bool, rec *SleepRecord, cause error) error {
	var resumeErr error
	if !wasPaused {
		resumeErr = m.rt.Resume(ctx, id)
	}
	if resumeErr != nil && rec != nil && rec.Status == StatusSleeping && m.recordExists(ctx, id) {
		if err := m.rt.Destroy(ctx, id); err != nil {
			m.log.Error("cannot destroy the remains of a sandbox that failed to resume", "sandbox", id, "err", err)
		}
		m.mu.Lock()
		m.sleeping[id] = rec
		m.mu.Unlock()
		m.notify(id, tartarus.StateHibernated, rec, "could not resume after a failed sleep")
		return fmt.Errorf("%w; resume also failed (%v), so the sandbox stays hibernated from its snapshot", cause, resumeErr)
	}
	if rec != nil {
		if err := m.forgetSleep(ctx, rec); err != nil {
			m.log.Error("cannot remove the snapshot of a failed sleep", "sandbox", id, "err", err)
		}
	}
	if resumeErr != nil {
		return fmt.Errorf("%w; resume also failed: %v", cause, resumeErr)
	}
	m.log.Warn("sleep failed; sandbox put back", "sandbox", id, "err", cause)
	return cause
}

func (m *HypnosManager) recordExists(ctx context.Context, id string) bool {
	_, err := m.records.GetRecord(ctx, id)
	return err == nil
}

// forgetSleep deletes a sleep's record, then its snapshot (in that order, so
// a crash between leaves an orphan snapshot, never a record without data).
func (m *HypnosManager) forgetSleep(ctx context.Context, rec *SleepRecord) error {
	if err := m.records.DeleteRecord(ctx, rec.SandboxID); err != nil {
		return err
	}
	return m.snaps.Delete(ctx, rec.SnapshotID)
}
