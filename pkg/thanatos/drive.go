package thanatos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Exit codes a termination reports.
const (
	exitDrained = 0
	exitKilled  = 128 + 9
)

// drive runs r from its recorded phase to a final one. Before each step
// the phase is in the journal, so a manager that stops (Close, or a crash)
// leaves a record the next one resumes from; every step may therefore run
// twice and the Target's methods are idempotent.
func (m *Manager) drive(r *run) {
	defer close(r.done)
	ctx := m.ctx
	for {
		st := m.snapshot(r)
		if ctx.Err() != nil {
			return
		}
		var next tartarus.TerminationPhase
		switch st.Phase {
		case tartarus.PhaseInitiated:
			m.preMortem(ctx, st)
			next = tartarus.PhaseSignaled
		case tartarus.PhaseSignaled:
			m.signal(ctx, r, st)
			next = tartarus.PhaseDraining
		case tartarus.PhaseDraining:
			code := m.drain(ctx, r, st)
			if ctx.Err() != nil {
				return
			}
			m.update(r, func(s *tartarus.TerminationStatus) { s.ExitCode = &code })
			next = tartarus.PhaseTerminating
			if st.CreateCheckpoint {
				next = tartarus.PhaseCheckpointing
			}
		case tartarus.PhaseCheckpointing:
			ttl := st.CheckpointTTL
			if ttl == 0 {
				ttl = m.cfg.CheckpointTTL
			}
			_, err := m.checkpoint(ctx, st.SandboxID, st.Tenant, st.CheckpointID, ttl, st.Reason)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				// The sandbox still ends: what was asked for is its end,
				// and a sandbox kept alive past its deadline is worse than a
				// missing checkpoint. The termination ends failed with why.
				m.log.Warn("checkpoint failed; terminating anyway", "sandbox", st.SandboxID, "err", err)
				m.update(r, func(s *tartarus.TerminationStatus) { s.ErrorMessage = err.Error(); s.CheckpointID = "" })
			}
			next = tartarus.PhaseTerminating
		case tartarus.PhaseTerminating:
			err := m.terminate(ctx, st)
			if ctx.Err() != nil {
				return
			}
			next = tartarus.PhaseCompleted
			m.update(r, func(s *tartarus.TerminationStatus) {
				if err != nil {
					s.ErrorMessage = joinMessage(s.ErrorMessage, err.Error())
				}
				if s.ErrorMessage != "" {
					next = tartarus.PhaseFailed
				}
				if s.ExitCode == nil {
					code := exitKilled
					s.ExitCode = &code
				}
			})
		case tartarus.PhaseCompleted, tartarus.PhaseFailed:
			m.finish(r, st)
			return
		default:
			m.update(r, func(s *tartarus.TerminationStatus) { s.ErrorMessage = fmt.Sprintf("unknown phase %q", st.Phase) })
			next = tartarus.PhaseTerminating
		}
		if !m.advance(ctx, r, next) {
			return
		}
	}
}

func joinMessage(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func (m *Manager) snapshot(r *run) *tartarus.TerminationStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return r.st.Clone()
}

func (m *Manager) update(r *run, f func(*tartarus.TerminationStatus)) {
	m.mu.Lock()
	f(r.st)
	m.mu.Unlock()
}

func (m *Manager) forced(r *run) bool {
	select {
	case <-r.force:
		return true
	default:
		return false
	}
}

// advance records phase next (and when it started) in the journal. It
// returns false if the run must stop: the manager is closing or the
// journal refused the write (the earlier phase stays recorded, so a
// Resume redoes the step).
func (m *Manager) advance(ctx context.Context, r *run, next tartarus.TerminationPhase) bool {
	if ctx.Err() != nil {
		return false
	}
	now := m.clock.Now()
	var st *tartarus.TerminationStatus
	m.update(r, func(s *tartarus.TerminationStatus) {
		prev := s.Phases[len(s.Phases)-1]
		m.metrics.phase(s.Reason, prev.Phase, now.Sub(prev.StartedAt))
		s.Phase = next
		s.Phases = append(s.Phases, tartarus.PhaseRecord{Phase: next, StartedAt: now})
		if m.forced(r) && !s.Forced {
			s.Forced = true
			if now.Before(s.GraceDeadline) {
				s.GraceDeadline = now
			}
		}
		if next.Final() {
			s.FinishedAt = now
		}
		st = s.Clone()
	})
	if err := m.cfg.Journal.Put(ctx, st); err != nil {
		m.log.Error("record termination phase; stopping until resumed", "sandbox", st.SandboxID, "phase", next, "err", err)
		return false
	}
	m.log.Info("termination phase", "sandbox", st.SandboxID, "phase", next, "reason", st.Reason)
	if m.cfg.OnPhase != nil {
		m.cfg.OnPhase(ctx, st)
	}
	return true
}

// signal sends the termination's signal, unless there is no grace period
// to use it in (grace 0, or forced).
func (m *Manager) signal(ctx context.Context, r *run, st *tartarus.TerminationStatus) {
	if st.GracePeriod == 0 || st.Forced || m.forced(r) || !m.clock.Now().Before(st.GraceDeadline) {
		return
	}
	sig, err := st.Signal.Syscall()
	if err != nil {
		return // normalize checked it; a corrupt record just skips the signal
	}
	if err := m.cfg.Target.SignalAll(ctx, st.SandboxID, sig); err != nil && ctx.Err() == nil {
		// A guest that cannot be signalled is drained and killed all the same.
		m.log.Warn("signal sandbox", "sandbox", st.SandboxID, "signal", st.Signal, "err", err)
	}
}

// drain waits until the sandbox has no active work (exit code 0) or the
// deadline passes or the termination is forced (137).
func (m *Manager) drain(ctx context.Context, r *run, st *tartarus.TerminationStatus) int {
	deadline, stopDeadline := m.after(st.GraceDeadline.Sub(m.clock.Now()))
	defer stopDeadline()
	poll := m.clock.NewTicker(m.cfg.DrainPoll)
	defer poll.Stop()
	for {
		if !m.clock.Now().Before(st.GraceDeadline) || m.forced(r) {
			if m.idleWithin(ctx, st.SandboxID, m.cfg.DrainPoll) {
				return exitDrained
			}
			return exitKilled
		}
		n, err := m.cfg.Target.ActiveWork(ctx, st.SandboxID)
		switch {
		case err == nil && n == 0, errors.Is(err, tartarus.ErrNotFound):
			return exitDrained
		case err != nil && ctx.Err() == nil:
			m.log.Debug("active work unknown; waiting for the deadline", "sandbox", st.SandboxID, "err", err)
		}
		select {
		case <-ctx.Done():
			return exitKilled
		case <-r.force:
		case <-deadline:
		case <-poll.C():
		}
	}
}

// idleWithin reports whether the sandbox has no active work, asking at most
// budget long: past the deadline a hung guest that answers only when its
// call times out must not hold up the kill (the call is abandoned).
func (m *Manager) idleWithin(ctx context.Context, id string, budget time.Duration) bool {
	idle := make(chan bool, 1)
	go func() {
		n, err := m.cfg.Target.ActiveWork(ctx, id)
		idle <- err == nil && n == 0
	}()
	wait, stop := m.after(budget)
	defer stop()
	select {
	case ok := <-idle:
		return ok
	case <-wait:
		return false
	case <-ctx.Done():
		return false
	}
}

// terminate kills the sandbox and releases what it held; both are tried.
func (m *Manager) terminate(ctx context.Context, st *tartarus.TerminationStatus) error {
	var errs []error
	if err := m.cfg.Target.Kill(ctx, st.SandboxID); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
		errs = append(errs, fmt.Errorf("kill: %w", err))
	}
	if err := m.cfg.Target.Release(ctx, st.SandboxID); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
		errs = append(errs, fmt.Errorf("release: %w", err))
	}
	return errors.Join(errs...)
}

// finish runs what follows a final phase: metrics, post-mortem hooks,
// webhooks and the callback (in the background, never delaying anything).
// A crash between the final write and here loses them: they are at most
// once.
func (m *Manager) finish(r *run, st *tartarus.TerminationStatus) {
	m.mu.Lock()
	if m.runs[st.SandboxID] == r {
		delete(m.runs, st.SandboxID)
	}
	m.mu.Unlock()
	m.metrics.final(st)
	m.log.Info("termination done", "sandbox", st.SandboxID, "phase", st.Phase, "reason", st.Reason, "err", st.ErrorMessage)
	m.postMortem(m.ctx, st)
	m.notify(st)
}

// after returns a channel that receives once d has passed on the clock.
// A clock.Ticker stands in for a timer: the first tick is the deadline.
func (m *Manager) after(d time.Duration) (<-chan time.Time, func()) {
	if d <= 0 {
		ch := make(chan time.Time, 1)
		ch <- m.clock.Now()
		return ch, func() {}
	}
	t := m.clock.NewTicker(d)
	return t.C(), t.Stop
}

// within runs f with a context cut when budget passes on the clock (or
// ctx ends). A hook that ignores its context is abandoned, not waited for.
func (m *Manager) within(ctx context.Context, budget time.Duration, f func(context.Context) error) error {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- fmt.Errorf("hook panicked: %v", v)
			}
		}()
		done <- f(hctx)
	}()
	timer, stop := m.after(budget)
	defer stop()
	select {
	case err := <-done:
		return err
	case <-timer:
		return tartarus.Errorf(tartarus.ErrTimeout, "cut at its budget of %v", budget)
	case <-ctx.Done():
		return ctx.Err()
	}
}
