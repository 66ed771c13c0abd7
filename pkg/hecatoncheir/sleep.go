package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// snapRuntime is what the agent holds for a runtime that can snapshot:
// its Hypnos (hibernation) and the Nyx managers of fork and template
// snapshots. Each has its own Erebus prefix, so that Hypnos's garbage
// collection never touches the others'.
type snapRuntime struct {
	rt          tartarus.Runtime
	snap        tartarus.Snapshotter
	hyp         *hypnos.HypnosManager
	records     hypnos.RecordStore // Hypnos's sleep records
	forks       *nyx.Manager
	templates   *nyx.Manager
	checkpoints *nyx.Manager // Thanatos's checkpoints, kept until they expire
}

// setUpSnapshots makes a snapRuntime for each runtime that implements
// tartarus.Snapshotter and declares the capability.
func (a *Agent) setUpSnapshots() error {
	if a.cfg.Snapshots == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, rt := range a.cfg.Runtimes {
		snap, ok := rt.(tartarus.Snapshotter)
		if !ok {
			continue
		}
		fp, err := rt.Fingerprint(ctx)
		if err != nil || !fp.Available || !fp.Capabilities.Snapshot {
			continue
		}
		name := rt.Name()
		nyxFor := func(prefix string) *nyx.Manager {
			return nyx.New(snap, a.cfg.Snapshots, nyx.Options{Prefix: a.cfg.SnapshotPrefix + prefix + "-" + name,
				TempDir: a.cfg.SnapshotTempDir, Clock: a.cfg.Clock, Logger: a.cfg.Log})
		}
		var records hypnos.RecordStore
		if rs, ok := a.cfg.Store.(store.SleepRecordKeeper); ok {
			records = rs.SleepRecords(name)
		} else {
			records = hypnos.NewStoreRecords(a.cfg.Snapshots, a.cfg.SnapshotPrefix+"hypnos-records/"+name)
		}
		hcfg := a.cfg.Hypnos
		hyp, err := hypnos.NewHypnosManager(hypnos.Deps{
			Runtime: rt, Snapshots: nyxFor("sleep"), Records: records, Sandboxes: sleepSource{a},
			Clock: a.cfg.Clock, Logger: a.cfg.Log.With("runtime", name), Observer: a.observe, Guard: a.idleGuard,
		}, hcfg)
		if err != nil {
			return err
		}
		a.snaps[name] = &snapRuntime{rt: rt, snap: snap, hyp: hyp, records: records, forks: nyxFor("fork"), templates: nyxFor("template"),
			checkpoints: nyxFor(checkpointPrefix)}
	}
	return nil
}

// sleepSource tells Hypnos how to recreate a sandbox: from its record and
// its template.
type sleepSource struct{ a *Agent }

func (s sleepSource) SleepInfo(ctx context.Context, id string) (*tartarus.VMConfig, string, error) {
	sb, err := s.a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, "", err
	}
	img, err := s.a.cfg.Images.Get(ctx, sb.Template)
	if err != nil {
		return nil, "", fmt.Errorf("template %s: %w", sb.Template, err)
	}
	return &tartarus.VMConfig{ID: id, Template: sb.Template, Image: img, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Env: sb.Env, Network: sb.Network,
		StrictSeccomp: s.a.StrictSeccomp(id)}, sb.Tenant, nil
}

// idleGuard lets the idle watcher put a sandbox to sleep only while no
// lifecycle change (pause, destroy, hibernate, fork) holds it, and only if
// the store still has it running: pooled and half-created sandboxes, and
// template builders, are not the watcher's to touch.
func (a *Agent) idleGuard(id string) (func(), bool) {
	unlock, ok := a.tryLock(id)
	if !ok {
		return nil, false
	}
	sb, err := a.cfg.Store.Get(context.Background(), id)
	if err != nil || sb.State != tartarus.StateRunning {
		unlock()
		return nil, false
	}
	return unlock, true
}

// snapshotter returns the snapshot machinery of a runtime, or an
// ErrNotImplemented error that says why there is none.
func (a *Agent) snapshotter(runtime, what string) (*snapRuntime, error) {
	if sr, ok := a.snaps[runtime]; ok {
		return sr, nil
	}
	if a.cfg.Snapshots == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "%s: this node has no snapshot store configured", what)
	}
	return nil, tartarus.Errorf(tartarus.ErrNotImplemented,
		"%s: runtime %s cannot snapshot sandboxes (it does not declare the snapshot capability); pause and resume work where it can pause", what, runtime)
}

// observe records in the store the state changes Hypnos makes, by itself
// (idle sleep, a refused snapshot) or on the agent's request. It takes no
// agent lock: the agent's Hibernate and Wake call Hypnos while holding one.
func (a *Agent) observe(ev hypnos.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch := store.Change{At: a.cfg.Clock.Now().UTC()}
	switch ev.State {
	case tartarus.StateHibernated:
		if ev.Record != nil {
			ch.SnapshotBytes = ev.Record.CompressedSize
		}
	case tartarus.StateFailed:
		ch.Error = "cannot wake from hibernation: " + ev.Reason
	}
	if err := a.record(ctx, ev.SandboxID, ev.State, ch); err != nil {
		a.log.Error("record hibernation state", "sandbox", ev.SandboxID, "state", ev.State, "reason", ev.Reason, "err", err)
		return
	}
	a.log.Info("sandbox state", "sandbox", ev.SandboxID, "state", ev.State, "reason", ev.Reason)
	if ev.State == tartarus.StateRunning || ev.State == tartarus.StatePaused {
		// A woken VM's network was built from the spec of its sleep.
		a.syncNetwork(ctx, ev.SandboxID)
	}
}

// record moves a sandbox to state to from whatever state it is in, through
// the intermediate states the state machine asks for (hibernated → running
// → paused, → terminating → terminated). It retries when another writer
// moved the sandbox meanwhile.
func (a *Agent) record(ctx context.Context, id string, to tartarus.State, ch store.Change) error {
	for range 5 {
		sb, err := a.cfg.Store.Get(ctx, id)
		if err != nil {
			return err
		}
		if sb.State.Final() && sb.State != to {
			return nil // destroyed meanwhile; nothing to record
		}
		steps := []tartarus.State{to}
		switch {
		case to == tartarus.StatePaused && sb.State == tartarus.StateHibernated:
			steps = []tartarus.State{tartarus.StateRunning, tartarus.StatePaused}
		case to == tartarus.StateTerminated && sb.State != tartarus.StateTerminating:
			steps = []tartarus.State{tartarus.StateTerminating, tartarus.StateTerminated}
		}
		from := sb.State
		for i, st := range steps {
			c := ch
			if i < len(steps)-1 {
				c = store.Change{At: ch.At}
			}
			if _, err = a.cfg.Store.Move(ctx, id, from, st, c); err != nil {
				break
			}
			from = st
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, tartarus.ErrFailedPrecondition) {
			return err
		}
	}
	return fmt.Errorf("record %s as %s: the sandbox kept changing state", id, to)
}

// Hibernate puts a running or paused sandbox to sleep: snapshot, store,
// free its resources. If any step fails the sandbox stays as it was and the
// error says which step failed. Hibernating a hibernated sandbox is a no-op.
func (a *Agent) Hibernate(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	// The VM's state must not fall behind the record's.
	ctx = context.WithoutCancel(ctx)
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	switch sb.State {
	case tartarus.StateHibernated:
		return sb, nil
	case tartarus.StateRunning, tartarus.StatePaused:
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s; only running or paused sandboxes hibernate", id, sb.State)
	}
	sr, err := a.snapshotter(sb.Runtime, "hibernate")
	if err != nil {
		return nil, err
	}
	a.touch(ctx, id)
	rec, err := sr.hyp.Sleep(ctx, id, nil)
	if err != nil {
		if tartarus.ClassOf(err).Err == nil {
			err = fmt.Errorf("%w (%w)", err, tartarus.ErrUnavailable)
		}
		return nil, fmt.Errorf("hibernate sandbox %s: %w", id, err)
	}
	// The observer has recorded it; make sure, in case the store failed then.
	if err := a.record(ctx, id, tartarus.StateHibernated, store.Change{At: a.cfg.Clock.Now().UTC(), SnapshotBytes: rec.CompressedSize}); err != nil {
		return nil, fmt.Errorf("hibernate sandbox %s: record: %w", id, err)
	}
	return a.cfg.Store.Get(ctx, id)
}

// Wake brings a hibernated sandbox back (running, or paused if it was
// paused when put to sleep). Waking a running or paused sandbox is a no-op.
// A sandbox whose snapshot is damaged is marked failed and the error says so.
func (a *Agent) Wake(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	sr, err := a.snapshotter(sb.Runtime, "wake")
	if err != nil {
		return nil, err
	}
	switch sb.State {
	case tartarus.StateRunning, tartarus.StatePaused:
		return sb, nil
	case tartarus.StateHibernated:
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not hibernated", id, sb.State)
	}
	res, err := sr.hyp.Wake(ctx, id)
	if err != nil {
		if now, gerr := a.cfg.Store.Get(context.WithoutCancel(ctx), id); gerr == nil && now.State == tartarus.StateFailed {
			return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s cannot be woken and is now failed: %v", id, err)
		}
		if tartarus.ClassOf(err).Err == nil {
			err = fmt.Errorf("%w (%w)", err, tartarus.ErrUnavailable)
		}
		return nil, fmt.Errorf("wake sandbox %s: %w", id, err)
	}
	ctx = context.WithoutCancel(ctx)
	if err := a.record(ctx, id, res.Status, store.Change{At: a.cfg.Clock.Now().UTC()}); err != nil {
		return nil, fmt.Errorf("wake sandbox %s: record: %w", id, err)
	}
	a.touch(ctx, id)
	return a.cfg.Store.Get(ctx, id)
}

// awake returns a sandbox that must be running, waking it first if it is
// hibernated (or on its way to sleep), and its runtime: the caller of
// exec and file calls only sees a slower answer.
func (a *Agent) awake(ctx context.Context, id string) (*tartarus.Sandbox, tartarus.Runtime, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if sr, ok := a.snaps[sb.Runtime]; ok {
		if sb.State == tartarus.StateHibernated {
			if _, err := a.Wake(ctx, id); err != nil {
				return nil, nil, err
			}
		} else if sb.State == tartarus.StateRunning {
			if err := sr.hyp.EnsureAwake(ctx, id); err != nil {
				return nil, nil, fmt.Errorf("wake sandbox %s: %w", id, err)
			}
		}
	}
	return a.running(ctx, id)
}

// forget drops what Hypnos holds about a destroyed sandbox (its sleep
// record and snapshot, if it slept).
func (a *Agent) forget(ctx context.Context, sb *tartarus.Sandbox) {
	a.execs.forget(sb.ID)
	// Every Hypnos heard its Touch calls; only its own runtime's holds a
	// record (records are kept per runtime).
	for _, sr := range a.snaps {
		if err := sr.hyp.Forget(ctx, sb.ID); err != nil {
			a.log.Warn("forget hibernation state", "sandbox", sb.ID, "err", err)
		}
	}
}

// schedule applies a sandbox's own idle threshold; without one, the
// server's default applies.
func (a *Agent) schedule(sb *tartarus.Sandbox) {
	sr, ok := a.snaps[sb.Runtime]
	if !ok || sb.AutoHibernateS <= 0 {
		return
	}
	if err := sr.hyp.ScheduleSleep(sb.ID, time.Duration(sb.AutoHibernateS)*time.Second); err != nil {
		a.log.Warn("schedule sleep", "sandbox", sb.ID, "err", err)
	}
}
