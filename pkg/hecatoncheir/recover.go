package hecatoncheir

import (
	"context"
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Messages stored on sandboxes that reconciliation ends.
const (
	msgLost        = "lost: node agent restarted and the VM was gone"
	msgInterrupted = "interrupted: node agent restarted while the sandbox was being created"
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
	// destroyed.
	Orphans []string
}

// Recover reconciles the runtimes with the store after a (re)start: each
// runtime adopts the VMs that still run, then
//   - recorded running/paused and adopted → kept;
//   - recorded running/paused but not adopted → failed (msgLost);
//   - recorded creating → destroyed and failed; terminating → destroyed and
//     terminated;
//   - adopted but unknown to the store, or recorded as final → destroyed.
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

	recs, err := a.cfg.Store.List(ctx, store.Filter{Node: a.cfg.Node})
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
				continue
			}
			log.Warn("sandbox lost")
			if _, err := a.cfg.Store.Move(ctx, sb.ID, sb.State, tartarus.StateFailed, store.Change{At: now, Error: msgLost}); err != nil {
				errs = append(errs, err)
			}
			rep.Lost = append(rep.Lost, sb.ID)
		case tartarus.StateCreating, tartarus.StateTerminating:
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
		"finished", len(rep.Finished), "orphans", len(rep.Orphans))
	return rep, errors.Join(errs...)
}
