package hypnos

import (
	"context"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

type policy struct {
	threshold time.Duration
	disabled  bool
}

// ScheduleSleep implements SleepManager.
func (m *HypnosManager) ScheduleSleep(sandboxID string, idleThreshold time.Duration) error {
	if sandboxID == "" || idleThreshold <= 0 {
		return tartarus.Errorf(tartarus.ErrInvalid, "schedule sleep of %q after %v: want a sandbox id and a positive threshold", sandboxID, idleThreshold)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies[sandboxID] = policy{threshold: idleThreshold}
	return nil
}

// CancelScheduledSleep implements SleepManager.
func (m *HypnosManager) CancelScheduledSleep(sandboxID string) error {
	if sandboxID == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "cancel scheduled sleep: empty sandbox id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies[sandboxID] = policy{disabled: true}
	return nil
}

// Touch records API activity on a sandbox (exec, files); idle time counts
// from the later of this and the guest's own last activity.
func (m *HypnosManager) Touch(sandboxID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.touched[sandboxID] = m.clock.Now()
}

// Run watches for idle, expired and scheduled-to-wake sandboxes every
// CheckInterval until ctx ends.
func (m *HypnosManager) Run(ctx context.Context) error {
	t := m.clock.NewTicker(m.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			m.Check(ctx)
		}
	}
}

// Check does one round of Run: ends sandboxes that slept past their limit,
// wakes those whose scheduled wake has come, and puts idle ones to sleep.
// Failures are logged; a sandbox that failed to sleep is retried next round.
func (m *HypnosManager) Check(ctx context.Context) {
	m.ReapExpired(ctx)
	m.wakeScheduled(ctx)
	if _, err := m.SleepIdle(ctx); err != nil {
		m.log.Warn("idle check", "err", err)
	}
}

// ReapExpired ends every sleeping sandbox whose MaxSleepDuration has passed
// and returns their ids.
func (m *HypnosManager) ReapExpired(ctx context.Context) []string {
	now := m.clock.Now()
	var ended []string
	for _, rec := range m.snapshotSleeping() {
		if rec.ExpiresAt == nil || now.Before(*rec.ExpiresAt) {
			continue
		}
		f := m.tryFlight(rec.SandboxID)
		if f == nil {
			continue // a wake or sleep is under way; it decides
		}
		err := m.terminate(ctx, rec, "slept longer than its limit")
		m.endFlight(rec.SandboxID, f, err)
		if err != nil {
			m.log.Warn("cannot end an expired sleeping sandbox", "sandbox", rec.SandboxID, "err", err)
			continue
		}
		ended = append(ended, rec.SandboxID)
	}
	return ended
}

func (m *HypnosManager) wakeScheduled(ctx context.Context) {
	now := m.clock.Now()
	for _, rec := range m.snapshotSleeping() {
		if rec.ScheduledWake == nil || now.Before(*rec.ScheduledWake) {
			continue
		}
		if _, err := m.Wake(ctx, rec.SandboxID); err != nil {
			m.log.Warn("scheduled wake failed", "sandbox", rec.SandboxID, "err", err)
		}
	}
}

// SleepIdle puts to sleep every running sandbox idle for at least its
// threshold, and returns their ids. Idle time counts from the later of the
// guest's last activity (Instance.IdleSince; nil means busy) and the last
// Touch.
func (m *HypnosManager) SleepIdle(ctx context.Context) ([]string, error) {
	insts, err := m.rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	now := m.clock.Now()
	var slept []string
	for _, in := range insts {
		if in.State != tartarus.InstanceRunning || in.IdleSince == nil {
			continue
		}
		m.mu.Lock()
		p, custom := m.policies[in.ID]
		last := *in.IdleSince
		if t, ok := m.touched[in.ID]; ok && t.After(last) {
			last = t
		}
		_, busy := m.flights[in.ID]
		m.mu.Unlock()
		threshold := m.cfg.DefaultIdleThreshold
		if custom {
			threshold = p.threshold
		}
		if busy || p.disabled || threshold <= 0 || now.Sub(last) < threshold {
			continue
		}
		release := func() {}
		if m.guard != nil {
			r, ok := m.guard(in.ID)
			if !ok {
				continue
			}
			release = r
		}
		_, err := m.Sleep(ctx, in.ID, nil)
		release()
		if err != nil {
			m.log.Warn("cannot put an idle sandbox to sleep", "sandbox", in.ID, "err", err)
			continue
		}
		slept = append(slept, in.ID)
	}
	return slept, nil
}
