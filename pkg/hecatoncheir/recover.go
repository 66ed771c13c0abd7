package hecatoncheir

import (
	"context"
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Messages stored on sandboxes that reconciliation ends.
const (
	msgLost        = "lost: node agent restarted and the VM was gone"
	msgInterrupted = "interrupted: node agent restarted while the sandbox was being created"
	msgNoRecord    = "lost: recorded hibernated but its sleep record is gone"
)

// RecoverReport says what Recover did.
type RecoverReport struct {
	// Adopted sandboxes run on as before.
	Adopted []string
	// Lost sandboxes were recorded running or paused but their VM was gone;
	// they are now failed.
	Lost []string
	// Finished sandboxes were caught mid-create or mid-destroy; they are
	// now failed or terminated and their remains destroyed.
	Finished []string
	// Orphans are VMs the store did not know (or knew as ended); they were
	// destroyed. Warm-pool sandboxes and template snapshot builders of the
	// previous run are among them.
	Orphans []string
	// Hibernated sandboxes sleep on and wake on demand.
	Hibernated []string
}

// Recover reconciles the runtimes with the store after a (re)start: each
// runtime adopts the VMs that still run, then
//   - recorded running/paused and adopted → kept;
//   - recorded running/paused but not adopted → failed (msgLost);
//   - recorded creating → destroyed and failed; terminating → destroyed and
//     terminated;
//   - adopted but unknown to the store, or recorded as final → destroyed;
//   - hibernated: Hypnos reconciles its sleep records first (a sleep or
//     wake that a crash interrupted is finished or undone, and the store
//     follows); a sandbox recorded hibernated whose VM runs was woken
//     → running; one with neither VM nor sleep record → failed.
//
// Cleanup runs to the end even if ctx is cancelled.
func (a *Agent) Recover(ctx context.Context) (*RecoverReport, error) {
	ctx = context.WithoutCancel(ctx)
	rep := &RecoverReport{}
	adopted := map[string]map[string]bool{} // runtime → ids
	var errs []error
	for _, rt := range a.cfg.Runtimes {
		ids := map[string]bool{}
		adopted[rt.Name()] = ids
		insts, err := rt.Recover(ctx)
		if errors.Is(err, tartarus.ErrNotImplemented) {
			a.log.Info("runtime cannot recover sandboxes; those it ran are lost", "runtime", rt.Name())
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("recover runtime %s: %w", rt.Name(), err))
			continue
		}
		for _, in := range insts {
			ids[in.ID] = true
		}
	}
	if err := a.reconcileNetworks(ctx, adopted); err != nil {
		errs = append(errs, err)
	}
	for _, rt := range a.cfg.Runtimes {
		sr, ok := a.snaps[rt.Name()]
		if !ok {
			continue
		}
		// Hypnos reports each sleeping sandbox to a.observe, which records it.
		if _, err := sr.hyp.Start(ctx); err != nil {
			errs = append(errs, fmt.Errorf("recover hibernated sandboxes of %s: %w", rt.Name(), err))
		}
		a.cleanSnapshots(ctx, sr)
	}

	recs, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node})
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	known := map[string]*tartarus.Sandbox{}
	for _, sb := range recs {
		known[sb.ID] = sb
		isAdopted := adopted[sb.Runtime][sb.ID]
		now := a.cfg.Clock.Now().UTC()
		log := a.log.With("sandbox", sb.ID, "state", sb.State, "adopted", isAdopted)
		switch sb.State {
		case tartarus.StateRunning, tartarus.StatePaused, tartarus.StateQuarantined:
			if isAdopted {
				rep.Adopted = append(rep.Adopted, sb.ID)
				a.schedule(sb)
				continue
			}
			log.Warn("sandbox lost")
			if _, err := a.cfg.Store.Move(ctx, sb.ID, sb.State, tartarus.StateFailed, store.Change{At: now, Error: msgLost}); err != nil {
				errs = append(errs, err)
			}
			rep.Lost = append(rep.Lost, sb.ID)
		case tartarus.StateHibernated:
			sr, hasSnaps := a.snaps[sb.Runtime]
			switch {
			case hasSnaps && sr.hyp.IsSleeping(sb.ID):
				a.schedule(sb)
				rep.Hibernated = append(rep.Hibernated, sb.ID)
			case isAdopted:
				log.Info("sandbox runs although recorded hibernated (a wake was interrupted)")
				if _, err := a.cfg.Store.Move(ctx, sb.ID, sb.State, tartarus.StateRunning, store.Change{At: now}); err != nil {
					errs = append(errs, err)
				}
				a.schedule(sb)
				rep.Adopted = append(rep.Adopted, sb.ID)
			case hasSnaps:
				msg := msgNoRecord
				if r, err := sr.hyp.Record(ctx, sb.ID); err == nil && r.Error != "" {
					msg = "cannot wake from hibernation: " + r.Error
				}
				log.Warn("hibernated sandbox lost", "why", msg)
				if _, err := a.cfg.Store.Move(ctx, sb.ID, sb.State, tartarus.StateFailed, store.Change{At: now, Error: msg}); err != nil {
					errs = append(errs, err)
				}
				rep.Lost = append(rep.Lost, sb.ID)
			default:
				// Hibernation is off on this node now (no snapshot store,
				// or the runtime is gone): keep the record for a later
				// start that can wake it.
				log.Warn("hibernated sandbox cannot be woken by this node's configuration")
				rep.Hibernated = append(rep.Hibernated, sb.ID)
			}
		case tartarus.StateCreating, tartarus.StateTerminating:
			if st, err := a.term.Status(ctx, sb.ID); err == nil && sb.State == tartarus.StateTerminating && !st.Phase.Final() {
				// Thanatos resumes it from its recorded phase (Run).
				log.Info("termination interrupted; it resumes", "phase", st.Phase)
				rep.Finished = append(rep.Finished, sb.ID)
				continue
			}
			log.Warn("finishing interrupted sandbox")
			if rt, ok := a.runtimes[sb.Runtime]; ok {
				if err := rt.Destroy(ctx, sb.ID); err != nil {
					errs = append(errs, fmt.Errorf("destroy %s: %w", sb.ID, err))
					continue
				}
			}
			to, msg := tartarus.StateTerminated, ""
			if sb.State == tartarus.StateCreating {
				to, msg = tartarus.StateFailed, msgInterrupted
			}
			if _, err := a.cfg.Store.Move(ctx, sb.ID, sb.State, to, store.Change{At: now, Error: msg}); err != nil {
				errs = append(errs, err)
			}
			rep.Finished = append(rep.Finished, sb.ID)
		}
	}

	// A sleep that ended after its sandbox was destroyed (the idle watcher
	// does not take the agent's lock) leaves a record nobody wakes.
	for name, sr := range a.snaps {
		recs, err := sr.hyp.ListSleeping(ctx, nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range recs {
			if sb, ok := known[r.SandboxID]; ok && !sb.State.Final() && sb.Runtime == name {
				continue
			}
			a.log.Warn("dropping the sleep record of an ended sandbox", "sandbox", r.SandboxID)
			if err := sr.hyp.Forget(ctx, r.SandboxID); err != nil {
				errs = append(errs, err)
			}
		}
	}

	for _, rt := range a.cfg.Runtimes {
		for id := range adopted[rt.Name()] {
			if sb, ok := known[id]; ok && !sb.State.Final() && sb.Runtime == rt.Name() {
				continue
			}
			a.log.Warn("destroying orphan VM", "sandbox", id, "runtime", rt.Name())
			if err := rt.Destroy(ctx, id); err != nil {
				errs = append(errs, fmt.Errorf("destroy orphan %s: %w", id, err))
				continue
			}
			rep.Orphans = append(rep.Orphans, id)
		}
	}
	a.log.Info("recovered", "adopted", len(rep.Adopted), "lost", len(rep.Lost),
		"finished", len(rep.Finished), "orphans", len(rep.Orphans), "hibernated", len(rep.Hibernated))
	return rep, errors.Join(errs...)
}

// cleanSnapshots deletes fork snapshots (they only live during a fork
// call) and template snapshots a crash left incomplete. Only Recover calls
// it, before any fork or template build can run.
func (a *Agent) cleanSnapshots(ctx context.Context, sr *snapRuntime) {
	if forks, err := sr.forks.List(ctx); err == nil {
		for _, s := range forks {
			_ = sr.forks.Delete(ctx, s.ID)
		}
	}
	for _, m := range []*nyx.Manager{sr.forks, sr.templates} {
		ids, err := m.Incomplete(ctx)
		if err != nil {
			a.log.Warn("list incomplete snapshots", "err", err)
			continue
		}
		for _, id := range ids {
			if err := m.Delete(ctx, id); err != nil {
				a.log.Warn("delete incomplete snapshot", "snapshot", id, "err", err)
			}
		}
	}
}
