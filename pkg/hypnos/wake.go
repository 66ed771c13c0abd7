package hypnos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Wake implements SleepManager: fetch, verify, restore; the sandbox runs
// afterwards (or is paused again, if it was paused when put to sleep). The
// restore runs to its end even if ctx ends, since other callers may share
// it; ctx only bounds this caller's wait.
func (m *HypnosManager) Wake(ctx context.Context, sandboxID string) (*WakeResult, error) {
	for {
		m.mu.Lock()
		if f, busy := m.flights[sandboxID]; busy {
			m.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if f.kind == flightWake {
				return f.res, f.err
			}
			continue // a Sleep (or expiry) ended: look again
		}
		// The flight makes this wake the only operation on the sandbox
		// until it ends, so what it reads below cannot change under it.
		rec := m.sleeping[sandboxID]
		f := &flight{kind: flightWake, done: make(chan struct{})}
		m.flights[sandboxID] = f
		m.mu.Unlock()

		go m.runWake(context.WithoutCancel(ctx), sandboxID, rec, f)
		select {
		case <-f.done:
			return f.res, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// runWake performs one wake flight. rec is nil when the sandbox is not
// known to be sleeping in memory (after a restart without Start); the
// durable record decides then.
func (m *HypnosManager) runWake(ctx context.Context, id string, rec *SleepRecord, f *flight) {
	var res *WakeResult
	var err error
	if rec == nil {
		rec, err = m.durableSleeper(ctx, id)
	}
	if err == nil {
		res, err = m.wake(ctx, rec)
	}
	m.mu.Lock()
	delete(m.flights, id)
	if err == nil {
		delete(m.sleeping, id)
		m.touched[id] = res.WakeTime
	}
	m.mu.Unlock()
	if err == nil {
		// Status is paused for a sandbox its user had paused before sleep.
		m.notify(id, res.Status, nil, "woken")
	}
	f.res, f.err = res, err
	close(f.done)
}

func (m *HypnosManager) durableSleeper(ctx context.Context, id string) (*SleepRecord, error) {
	r, err := m.records.GetRecord(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil, fmt.Errorf("wake %s: %w", id, ErrNotSleeping)
	}
	if err != nil {
		return nil, fmt.Errorf("wake %s: %w", id, err)
	}
	if r.Status == StatusFailed {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "wake %s: the sandbox failed: %s", id, r.Error)
	}
	return r, nil
}

func (m *HypnosManager) wake(ctx context.Context, rec *SleepRecord) (*WakeResult, error) {
	id := rec.SandboxID
	if rec.ExpiresAt != nil && !m.clock.Now().Before(*rec.ExpiresAt) {
		if err := m.terminate(ctx, rec, "slept longer than its limit"); err != nil {
			return nil, fmt.Errorf("wake %s: %w", id, err)
		}
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "wake %s: the sandbox ended after sleeping until %s", id, rec.ExpiresAt.Format(time.RFC3339))
	}
	queued := m.clock.Now()
	if err := m.wakes.acquire(ctx, rec.WakePriority); err != nil {
		return nil, fmt.Errorf("wake %s: %w", id, err)
	}
	defer m.wakes.release()
	start := m.clock.Now()

	// Remains of a VM from an interrupted sleep would clash with the restore.
	if err := m.rt.Destroy(ctx, id); err != nil {
		return nil, fmt.Errorf("wake %s: clear remains: %w", id, err)
	}
	cfg := rec.Config
	if cfg == nil {
		cfg = &tartarus.VMConfig{ID: id, Template: rec.Template}
	}
	if _, err := m.snaps.Restore(ctx, rec.SnapshotID, cfg); err != nil {
		err = fmt.Errorf("wake %s: %w", id, err)
		if m.unusable(ctx, rec, err) {
			m.fail(ctx, rec, err)
		}
		return nil, err
	}
	if rec.WasPaused {
		if err := m.rt.Pause(ctx, id); err != nil {
			m.log.Warn("woken sandbox was paused before sleep but cannot be paused again", "sandbox", id, "err", err)
		}
	}
	// The sandbox runs: the record and snapshot are no longer needed. If
	// deleting fails, Start drops them later (the sandbox exists, running).
	if err := m.forgetSleep(ctx, rec); err != nil {
		m.log.Warn("woken sandbox: cannot remove its sleep record or snapshot", "sandbox", id, "err", err)
	}
	now := m.clock.Now()
	state := tartarus.StateRunning
	if rec.WasPaused {
		state = tartarus.StatePaused
	}
	m.log.Info("sandbox woken", "sandbox", id, "restore", now.Sub(start), "queued", start.Sub(queued))
	return &WakeResult{
		SandboxID:     id,
		WakeTime:      now,
		SleepDuration: now.Sub(rec.SleepTime),
		RestoreTime:   now.Sub(start),
		QueueTime:     start.Sub(queued),
		Status:        state,
	}, nil
}

// unusable reports whether a failed restore can never succeed: the
// snapshot is damaged or gone. Other errors (the runtime, a missing
// template image, a timeout) leave the sandbox asleep for another try.
func (m *HypnosManager) unusable(ctx context.Context, rec *SleepRecord, err error) bool {
	if errors.Is(err, erebus.ErrCorrupt) {
		return true
	}
	_, gerr := m.snaps.Get(ctx, rec.SnapshotID)
	return errors.Is(gerr, tartarus.ErrNotFound) || errors.Is(gerr, erebus.ErrCorrupt)
}

// fail marks a sleeping sandbox failed: its snapshot cannot be used. The
// snapshot stays for inspection until Forget.
func (m *HypnosManager) fail(ctx context.Context, rec *SleepRecord, cause error) {
	failed := rec.clone()
	failed.Status = StatusFailed
	failed.Error = cause.Error()
	if err := m.records.PutRecord(ctx, failed); err != nil {
		m.log.Error("cannot record a failed wake", "sandbox", rec.SandboxID, "err", err)
	}
	m.mu.Lock()
	delete(m.sleeping, rec.SandboxID)
	m.mu.Unlock()
	m.log.Error("sandbox cannot be woken; marked failed", "sandbox", rec.SandboxID, "err", cause)
	m.notify(rec.SandboxID, tartarus.StateFailed, failed, cause.Error())
}

// terminate ends a sleeping sandbox: its snapshot and record go.
func (m *HypnosManager) terminate(ctx context.Context, rec *SleepRecord, reason string) error {
	if err := m.forgetSleep(ctx, rec); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.sleeping, rec.SandboxID)
	m.mu.Unlock()
	m.log.Info("hibernated sandbox ended", "sandbox", rec.SandboxID, "reason", reason)
	m.notify(rec.SandboxID, tartarus.StateTerminated, rec, reason)
	return nil
}

// EnsureAwake wakes the sandbox if it is hibernated or on its way to sleep,
// and does nothing otherwise: the call the agent makes before exec or file
// access, so that callers only see a slower answer.
func (m *HypnosManager) EnsureAwake(ctx context.Context, sandboxID string) error {
	m.mu.Lock()
	_, sleeping := m.sleeping[sandboxID]
	_, busy := m.flights[sandboxID]
	m.touched[sandboxID] = m.clock.Now()
	m.mu.Unlock()
	if !sleeping && !busy {
		return nil
	}
	_, err := m.Wake(ctx, sandboxID)
	if errors.Is(err, ErrNotSleeping) {
		return nil
	}
	return err
}
