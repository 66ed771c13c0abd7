package typhon

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TickReport says what one tick did.
type TickReport struct {
	Evaluated int
	// Tripped lists the sandboxes quarantined this tick.
	Tripped []string
	// Expired lists held sandboxes destroyed at MaxQuarantineDuration.
	Expired []string
	// Errors are triggers that failed (over their cost limit, for
	// example); a failed trigger never quarantines.
	Errors []error
}

// tickBudget bounds one tick's evaluation of one sandbox, beyond the cost
// limit, so that no expression can stall the loop.
const tickBudget = 500 * time.Millisecond

// Run ticks every Interval until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := m.cfg.Clock.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		rep := m.Tick(ctx)
		for _, err := range rep.Errors {
			m.log.Warn("trigger", "err", err)
		}
	}
}

// Tick evaluates the triggers over every live sandbox that is not held,
// quarantines those that trip, destroys held sandboxes past their bound and
// lifts release conditions past their expiry.
func (m *Manager) Tick(ctx context.Context) TickReport {
	var rep TickReport
	m.expire(ctx, &rep)
	listed := m.cfg.Clock.Now().UTC()
	sbs, err := m.cfg.Host.Sandboxes(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Errorf("list sandboxes: %w", err))
		return rep
	}
	m.mu.Lock()
	triggers := m.triggers
	m.mu.Unlock()
	sigs := m.readSignals(ctx, sbs)
	live := map[string]bool{}
	for i, sb := range sbs {
		live[sb.ID] = true
		if m.Contained(sb.ID) {
			if sb.State == tartarus.StateRunning {
				// Held but running: woken or restored by another path
				// than Wake. Contain it again.
				m.recontainRunning(ctx, sb.ID, &rep)
			}
			continue
		}
		sig := sigs[i]
		if sig == nil {
			continue // held, stopped, paused or gone since the listing
		}
		m.log.Debug("signals", "sandbox", sb.ID, "cpu_percent", sig.CPUPercent, "memory_mb", sig.MemoryMB,
			"processes", sig.Processes, "host_counters", sig.HostCounters)
		h := m.remember(sb.ID, sig)
		vars := activation(sig, &h)
		rep.Evaluated++
		for _, t := range triggers {
			if !t.Enabled {
				continue
			}
			tctx, cancel := context.WithTimeout(ctx, tickBudget)
			hit, err := t.Eval(tctx, vars)
			cancel()
			if err != nil {
				rep.Errors = append(rep.Errors, fmt.Errorf("sandbox %s: %w", sb.ID, err))
				continue
			}
			if !hit {
				continue
			}
			if _, err := m.Quarantine(ctx, &QuarantineRequest{SandboxID: sb.ID, Reason: t.Reason,
				AutoQuarantine: true, Trigger: t.label()}); err != nil {
				rep.Errors = append(rep.Errors, fmt.Errorf("quarantine %s: %w", sb.ID, err))
			} else {
				rep.Tripped = append(rep.Tripped, sb.ID)
			}
			break
		}
	}
	m.mu.Lock()
	for id := range m.history {
		if !live[id] {
			delete(m.history, id)
		}
	}
	for id := range m.actors {
		if !live[id] {
			delete(m.actors, id)
		}
	}
	m.mu.Unlock()
	if aj, ok := m.cfg.Journal.(ActorJournal); ok {
		// As in memory: sandboxes that no longer run lose theirs, but
		// not what was noted since the listing (a sandbox created since).
		if err := aj.ForgetActors(ctx, listed, func(id string) bool { return live[id] }); err != nil {
			rep.Errors = append(rep.Errors, err)
		}
	}
	return rep
}

// remember adds a reading to the sandbox's history and returns a copy.
func (m *Manager) remember(id string, s *Signals) History {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.history[id]
	if !ok {
		h = &History{}
		m.history[id] = h
	}
	h.CPU = append(h.CPU, s.CPUPercent)
	h.Demand = append(h.Demand, s.CPUDemand)
	h.Memory = append(h.Memory, s.MemoryMB)
	if len(h.CPU) > maxHistory {
		h.CPU = h.CPU[len(h.CPU)-maxHistory:]
		h.Demand = h.Demand[len(h.Demand)-maxHistory:]
		h.Memory = h.Memory[len(h.Memory)-maxHistory:]
	}
	return History{CPU: slices.Clone(h.CPU), Demand: slices.Clone(h.Demand), Memory: slices.Clone(h.Memory)}
}

// expire destroys held sandboxes past their bound and lifts expired
// release conditions.
func (m *Manager) expire(ctx context.Context, rep *TickReport) {
	recs, err := m.cfg.Journal.Records(ctx)
	if err != nil {
		rep.Errors = append(rep.Errors, err)
		return
	}
	now := m.cfg.Clock.Now()
	for _, r := range recs {
		switch {
		case r.Status.Contained() && !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt):
			unlock := m.opLock(r.SandboxID)
			if cur, err := m.heldRecord(ctx, r.SandboxID); err == nil && cur.ID == r.ID {
				if _, err := m.destroy(ctx, cur, AutoActor, "expire"); err != nil {
					rep.Errors = append(rep.Errors, err)
				} else {
					rep.Expired = append(rep.Expired, r.SandboxID)
				}
			}
			unlock()
		case r.Status == StatusReleased && r.ConditionsLifted.IsZero() && r.Approval != nil &&
			r.Approval.ExpiresAt != nil && !now.Before(*r.Approval.ExpiresAt):
			if m.cfg.Network != nil && !m.Contained(r.SandboxID) {
				if err := m.cfg.Network.Restore(ctx, r.SandboxID, r.OwnerNetwork); err != nil {
					rep.Errors = append(rep.Errors, fmt.Errorf("lift conditions of %s: %w", r.SandboxID, err))
					continue
				}
			}
			r.ConditionsLifted = now.UTC()
			if err := m.cfg.Journal.PutRecord(ctx, r); err != nil {
				rep.Errors = append(rep.Errors, err)
				continue
			}
			m.audit(ctx, AuditEvent{Action: "lift_conditions", SandboxID: r.SandboxID, Tenant: r.Tenant, Actor: AutoActor,
				Detail: fmt.Sprintf("conditions %q expired", r.Approval.Conditions)})
		}
	}
}

// signalWorkers bounds the sandboxes whose signals are read at once: a
// guest slow to report (2 s bound) must not hold up every other one.
const signalWorkers = 8

// readSignals reads the signals of every sandbox not held, a few at a
// time; a sandbox whose signals cannot be read gets nil.
func (m *Manager) readSignals(ctx context.Context, sbs []*tartarus.Sandbox) []*Signals {
	out := make([]*Signals, len(sbs))
	sem := make(chan struct{}, signalWorkers)
	var wg sync.WaitGroup
	for i, sb := range sbs {
		if m.Contained(sb.ID) {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if sig, err := m.cfg.Host.Signals(ctx, sb); err == nil {
				out[i] = sig
			}
		}()
	}
	wg.Wait()
	return out
}

// recontainRunning contains again a held sandbox found running.
func (m *Manager) recontainRunning(ctx context.Context, id string, rep *TickReport) {
	unlock := m.opLock(id)
	defer unlock()
	rec, err := m.heldRecord(ctx, id)
	if err != nil {
		return // released meanwhile
	}
	if sb, err := m.cfg.Host.Get(ctx, id); err != nil || sb.State != tartarus.StateRunning {
		return // hibernated or contained meanwhile
	}
	err = m.recontain(ctx, rec)
	if err != nil {
		rep.Errors = append(rep.Errors, err)
	}
	m.audit(ctx, AuditEvent{Action: "contain", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: AutoActor,
		Detail: "held sandbox found running (woken or restored): contained again", Err: err})
}
