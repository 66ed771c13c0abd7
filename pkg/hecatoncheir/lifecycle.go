package hecatoncheir

import (
	"context"
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Get returns one sandbox.
// A create that waits, or waited, in an admission queue shows as queued
// (or failed, with why its wait ended).
func (a *Agent) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		if q := a.queuedSandbox(ctx, id); q != nil {
			return q, nil
		}
	}
	return sb, err
}

// List returns the sandboxes matching f.
func (a *Agent) List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error) {
	return a.cfg.Store.List(ctx, f)
}

// Destroy ends a sandbox at once through Thanatos (reason user_request,
// no grace period) and returns it terminated. Destroying a terminated or
// failed sandbox returns it unchanged. The work goes on even if ctx is
// cancelled.
func (a *Agent) Destroy(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		if q, ok := a.cancelQueued(ctx, id); ok {
			return q, nil
		}
	}
	if err != nil {
		return nil, err
	}
	if sb.State.Final() {
		return sb, nil
	}
	return a.terminateAndWait(ctx, id, &tartarus.ShutdownOptions{Reason: tartarus.ReasonUserRequest})
}

// Pause freezes a running sandbox. Pausing a paused sandbox is a no-op.
func (a *Agent) Pause(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return a.pauseResume(ctx, id, tartarus.StateRunning, tartarus.StatePaused, tartarus.Runtime.Pause)
}

// Resume continues a paused sandbox. Resuming a running sandbox is a no-op.
func (a *Agent) Resume(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return a.pauseResume(ctx, id, tartarus.StatePaused, tartarus.StateRunning, tartarus.Runtime.Resume)
}

func (a *Agent) pauseResume(ctx context.Context, id string, from, to tartarus.State,
	do func(tartarus.Runtime, context.Context, string) error) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.State == to {
		return sb, nil
	}
	if sb.State != from {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not %s", id, sb.State, from)
	}
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, err
	}
	// The VM's state must not be left behind the record's: finish the
	// change even when the caller goes away.
	ctx = context.WithoutCancel(ctx)
	if err := do(rt, ctx, id); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	a.touch(ctx, id)
	return a.cfg.Store.Move(ctx, id, from, to, store.Change{At: a.cfg.Clock.Now().UTC()})
}

// Counts counts the sandboxes in each state.
func (a *Agent) Counts(ctx context.Context) (map[tartarus.State]int, error) {
	return a.cfg.Store.CountByState(ctx)
}

// running returns a sandbox that must be running, and its runtime. A
// quarantined sandbox runs too: the API lets only examiners reach it.
func (a *Agent) running(ctx context.Context, id string) (*tartarus.Sandbox, tartarus.Runtime, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if sb.State != tartarus.StateRunning && sb.State != tartarus.StateQuarantined {
		return nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not running", id, sb.State)
	}
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, nil, err
	}
	a.touch(ctx, id)
	return sb, rt, nil
}

// touch records API activity; failing to record it is not worth failing the
// request for.
func (a *Agent) touch(ctx context.Context, id string) {
	for _, sr := range a.snaps {
		sr.hyp.Touch(id)
	}
	if err := a.cfg.Store.Touch(context.WithoutCancel(ctx), id, a.cfg.Clock.Now().UTC()); err != nil {
		a.log.Warn("record activity", "sandbox", id, "err", err)
	}
}
