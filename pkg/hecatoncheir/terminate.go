package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/thanatos"
)

// Every sandbox of this node ends through Thanatos (pkg/thanatos): a user's
// DELETE, expiry and a fork's clean-up alike. The agent is Thanatos's
// Target: it signals the sandbox's processes through its runtime, counts
// the work still running, takes checkpoints through Nyx, destroys the
// sandbox in its runtime and records it terminated.

// termTarget is the agent as thanatos.Target.
type termTarget struct{ a *Agent }

var (
	_ thanatos.Target            = termTarget{}
	_ thanatos.CheckpointRemover = termTarget{}
)

// setUpTermination starts the agent's termination manager.
func (a *Agent) setUpTermination() error {
	tc := a.cfg.Termination
	tc.Target, tc.Clock, tc.Logger = termTarget{a}, a.cfg.Clock, a.cfg.Log
	if tc.Journal == nil {
		tc.Journal = &thanatos.MemJournal{}
	}
	m, err := thanatos.New(tc)
	if err != nil {
		return err
	}
	a.term = m
	return nil
}

// Terminations returns the agent's termination manager (for its metrics
// and hooks).
func (a *Agent) Terminations() *thanatos.Manager { return a.term }

// Terminate starts ending sandbox id as opts say and returns the
// termination as it starts; Termination reports it later. The sandbox is
// terminating from now on: it takes no new exec and cannot hibernate.
func (a *Agent) Terminate(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.TerminationStatus, error) {
	ctx = context.WithoutCancel(ctx)
	unlock := a.lock(id)
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		unlock()
		return nil, err
	}
	o := tartarus.ShutdownOptions{}
	if opts != nil {
		o = *opts
	}
	o.Tenant = sb.Tenant
	if sb.State.Final() {
		unlock()
		if st, err := a.term.Status(ctx, id); err == nil {
			return st, nil
		}
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is already %s", id, sb.State)
	}
	if o.CreateCheckpoint && sb.State == tartarus.StateHibernated {
		unlock()
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is hibernated: its snapshot is already its checkpoint; wake it first", id)
	}
	if sb.State != tartarus.StateTerminating {
		if _, err := a.cfg.Store.Move(ctx, id, sb.State, tartarus.StateTerminating, store.Change{At: a.cfg.Clock.Now().UTC()}); err != nil {
			unlock()
			return nil, err
		}
	}
	unlock()
	return a.term.InitiateShutdown(ctx, id, &o)
}

// DestroyWith ends a sandbox as opts say (nil: at once, at the user's
// request) and waits until it is gone. Destroying a terminated or failed
// sandbox returns it unchanged.
func (a *Agent) DestroyWith(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.Sandbox, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.State.Final() {
		return sb, nil
	}
	if opts == nil {
		opts = &tartarus.ShutdownOptions{Reason: tartarus.ReasonUserRequest}
	}
	return a.terminateAndWait(ctx, id, opts)
}

// terminateAndWait ends a sandbox and waits until it is gone: the
// termination behind Destroy, expiry and drains.
func (a *Agent) terminateAndWait(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.Sandbox, error) {
	ctx = context.WithoutCancel(ctx)
	reason := opts.Reason
	if _, err := a.Terminate(ctx, id, opts); err != nil {
		return nil, err
	}
	st, err := a.term.Wait(ctx, id)
	if err != nil {
		return nil, err
	}
	sb, gerr := a.cfg.Store.Get(ctx, id)
	if gerr != nil {
		return nil, gerr
	}
	if st.Phase == tartarus.PhaseFailed && sb.State != tartarus.StateTerminated {
		return nil, fmt.Errorf("destroy sandbox %s: %s: %w", id, st.ErrorMessage, tartarus.ErrUnavailable)
	}
	a.log.Info("sandbox terminated", "sandbox", id, "reason", reason)
	return sb, nil
}

// Termination reports a sandbox's termination.
func (a *Agent) Termination(ctx context.Context, id string) (*tartarus.TerminationStatus, error) {
	return a.term.Status(ctx, id)
}

// PendingTerminations lists the terminations under way on this node.
func (a *Agent) PendingTerminations(ctx context.Context) ([]*tartarus.TerminationStatus, error) {
	return a.term.ListPending(ctx)
}

// Checkpoint takes a restorable checkpoint of a running sandbox, which
// goes on running.
func (a *Agent) Checkpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return a.term.CheckpointFor(context.WithoutCancel(ctx), id, sb.Tenant, 0)
}

// Checkpoints lists a tenant's checkpoints ("" for every tenant's).
func (a *Agent) Checkpoints(ctx context.Context, tenant string) ([]*tartarus.Checkpoint, error) {
	return a.term.ListCheckpoints(ctx, tenant)
}

// GetCheckpoint returns one checkpoint.
func (a *Agent) GetCheckpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	return a.term.GetCheckpoint(ctx, id)
}

// SignalAll implements thanatos.Target through the runtime's Signal.
func (t termTarget) SignalAll(ctx context.Context, id string, sig syscall.Signal) error {
	sb, err := t.a.cfg.Store.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State.Final() || sb.State == tartarus.StateHibernated {
		return nil // nothing runs to hear it
	}
	rt, err := t.a.runtime(sb.Runtime)
	if err != nil {
		return err
	}
	return rt.Signal(ctx, id, sig)
}

// ActiveWork implements thanatos.Target: the exec and file calls running
// through this agent, plus the sandbox's own processes (a program that
// traps the signal and is still writing its state counts).
func (t termTarget) ActiveWork(ctx context.Context, id string) (int, error) {
	sb, err := t.a.cfg.Store.Get(ctx, id)
	if err != nil {
		return 0, err
	}
	if sb.State.Final() {
		return 0, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s is %s", id, sb.State)
	}
	n := t.a.work.count(id)
	if sb.State == tartarus.StateHibernated {
		return n, nil
	}
	rt, err := t.a.runtime(sb.Runtime)
	if err != nil {
		return n, nil
	}
	if st, err := rt.Stats(ctx, id); err == nil {
		n += max(st.Processes, 0)
	}
	return n, nil
}

// checkpointPrefix is the Nyx key space of checkpoints, per runtime.
const checkpointPrefix = "checkpoint"

// Checkpoint implements thanatos.Target: a snapshot of the running sandbox
// under the checkpoint's id, the sandbox put back as it was.
func (t termTarget) Checkpoint(ctx context.Context, id, ckID string) (thanatos.SnapshotInfo, error) {
	a := t.a
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return thanatos.SnapshotInfo{}, err
	}
	sr, err := a.snapshotter(sb.Runtime, "checkpoint")
	if err != nil {
		return thanatos.SnapshotInfo{}, err
	}
	snap, err := a.pausedSnapshot(ctx, sr, sb.ID, sr.checkpoints, &nyx.CreateOptions{ID: ckID,
		Labels: map[string]string{"purpose": "checkpoint", "sandbox": sb.ID, "template": sb.Template}})
	if err != nil {
		return thanatos.SnapshotInfo{}, err
	}
	return thanatos.SnapshotInfo{Ref: sb.Runtime + "/" + snap.ID, Size: snap.Size}, nil
}

// RemoveCheckpoint implements thanatos.CheckpointRemover.
func (t termTarget) RemoveCheckpoint(ctx context.Context, ref string) error {
	sr, snapID, err := t.a.checkpointRef(ref)
	if err != nil {
		return err
	}
	return sr.checkpoints.Delete(ctx, snapID)
}

// Kill implements thanatos.Target: the sandbox is destroyed in its
// runtime. A runtime that fails records the sandbox failed.
func (t termTarget) Kill(ctx context.Context, id string) error {
	a := t.a
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State.Final() {
		return nil
	}
	rt, err := a.runtime(sb.Runtime)
	if err == nil {
		err = rt.Destroy(ctx, id)
	}
	if err == nil || errors.Is(err, tartarus.ErrNotFound) {
		return nil
	}
	if _, merr := a.cfg.Store.Move(ctx, id, sb.State, tartarus.StateFailed,
		store.Change{At: a.cfg.Clock.Now().UTC(), Error: "destroy: " + err.Error()}); merr != nil {
		a.log.Error("record failed destroy", "sandbox", id, "err", merr)
	}
	return fmt.Errorf("destroy sandbox %s: %w", id, err)
}

// Release implements thanatos.Target: what hibernation kept for the
// sandbox is dropped and the sandbox is recorded terminated.
func (t termTarget) Release(ctx context.Context, id string) error {
	a := t.a
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State.Final() {
		return nil
	}
	a.forget(ctx, sb)
	_, err = a.cfg.Store.Move(ctx, id, sb.State, tartarus.StateTerminated, store.Change{At: a.cfg.Clock.Now().UTC()})
	if err == nil {
		a.heatEnded(ctx, id)
	}
	return err
}

// checkpointRef finds the runtime and Nyx id of a checkpoint's snapshot
// reference ("RUNTIME/ID").
func (a *Agent) checkpointRef(ref string) (*snapRuntime, string, error) {
	name, snapID, ok := strings.Cut(ref, "/")
	if !ok || snapID == "" {
		return nil, "", tartarus.Errorf(tartarus.ErrInvalid, "checkpoint reference %q", ref)
	}
	sr, err := a.snapshotter(name, "checkpoint")
	if err != nil {
		return nil, "", err
	}
	return sr, snapID, nil
}

// workCounter counts the exec and file calls under way per sandbox, which
// a termination waits for while it drains.
type workCounter struct {
	mu sync.Mutex
	n  map[string]int
}

// begin counts one call on id until the returned func is called.
func (w *workCounter) begin(id string) func() {
	w.mu.Lock()
	if w.n == nil {
		w.n = map[string]int{}
	}
	w.n[id]++
	w.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			if w.n[id]--; w.n[id] <= 0 {
				delete(w.n, id)
			}
			w.mu.Unlock()
		})
	}
}

func (w *workCounter) count(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[id]
}

// createFromCheckpoint makes a new sandbox of tenant's from one of its
// checkpoints: the checkpointed sandbox's shape, restored from the
// checkpoint's snapshot, running. Another tenant's checkpoint is not found.
func (a *Agent) createFromCheckpoint(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	ck, err := a.term.GetCheckpoint(ctx, req.FromCheckpoint)
	if err != nil || ck.Tenant != tenant {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "checkpoint %s", req.FromCheckpoint)
	}
	if !ck.Restorable {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "checkpoint %s is not restorable", ck.ID)
	}
	src, err := a.cfg.Store.Get(ctx, ck.SandboxID)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: its sandbox %s: %w", ck.ID, ck.SandboxID, err)
	}
	r := *req
	switch {
	case r.Template != "" && r.Template != src.Template,
		r.Runtime != "" && r.Runtime != src.Runtime,
		r.MemoryMB != 0 && r.MemoryMB != src.MemoryMB,
		r.CPUs != 0 && r.CPUs != src.CPUs:
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "from_checkpoint: the sandbox takes the checkpoint's template, runtime, memory and CPUs (%s, %s, %d MiB, %d)",
			src.Template, src.Runtime, src.MemoryMB, src.CPUs)
	}
	r.Template, r.Runtime, r.MemoryMB, r.CPUs = src.Template, src.Runtime, src.MemoryMB, src.CPUs
	if r.Env == nil {
		r.Env = src.Env
	}
	rt, img, err := a.checkCreate(ctx, &r)
	if err != nil {
		return nil, err
	}
	sr, snapID, err := a.checkpointRef(ck.SnapshotRef)
	if err != nil {
		return nil, err
	}
	if err := a.checkCapacity(ctx, rt, r.MemoryMB, r.CPUs); err != nil {
		return nil, err
	}
	sb := tartarus.NewSandbox(tartarus.NewID("sb-"), tenant, &r, a.cfg.Clock.Now().UTC())
	sb.Runtime, sb.Node = rt.Name(), a.cfg.Node
	sb.Metadata["from_checkpoint"] = ck.ID
	cfg := &tartarus.VMConfig{ID: sb.ID, Template: sb.Template, Image: img, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Env: sb.Env, Network: sb.Network}
	return a.createWith(ctx, sb, func() error {
		_, err := sr.checkpoints.Restore(ctx, snapID, cfg)
		return err
	}, "how", "checkpoint "+ck.ID)
}

// Shutdown modes: what a node does with its sandboxes when its process is
// asked to stop (SIGTERM).
const (
	ShutdownKeep      = "keep"      // leave them running; the next start adopts them
	ShutdownTerminate = "terminate" // end them (reason system_shutdown)
	ShutdownHibernate = "hibernate" // hibernate the running ones; end the rest
)

// Shutdown ends or hibernates every live sandbox of this node as mode says
// (ShutdownKeep does nothing), each termination with grace; it returns when
// all are done or ctx ends.
func (a *Agent) Shutdown(ctx context.Context, mode string, grace time.Duration) error {
	if mode == ShutdownKeep || mode == "" {
		return nil
	}
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node, States: tartarus.LiveStates()})
	if err != nil {
		return err
	}
	a.log.Info("shutting down the node's sandboxes", "mode", mode, "sandboxes", len(live), "grace", grace)
	var wg sync.WaitGroup
	errs := make([]error, len(live))
	for i, sb := range live {
		wg.Go(func() {
			if mode == ShutdownHibernate && sb.State == tartarus.StateRunning {
				if _, err := a.Hibernate(ctx, sb.ID); err == nil {
					return
				}
			}
			if sb.State == tartarus.StateHibernated && mode == ShutdownHibernate {
				return
			}
			if _, err := a.Terminate(ctx, sb.ID, &tartarus.ShutdownOptions{Reason: tartarus.ReasonSystemShutdown, GracePeriod: grace}); err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = a.term.Wait(ctx, sb.ID)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// DrainNode ends every live sandbox of this node (reason node_drain), or
// hibernates the running ones when opts.Hibernate (a single node has no
// other node to move them to: they stay asleep here until woken).
func (a *Agent) DrainNode(ctx context.Context, name string, opts tartarus.DrainOptions) (*tartarus.DrainReport, error) {
	if name != a.cfg.Node {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "node %s (this server is the single node %s)", name, a.cfg.Node)
	}
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node, States: tartarus.LiveStates()})
	if err != nil {
		return nil, err
	}
	rep := tartarus.NewDrainReport(name)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, sb := range live {
		wg.Go(func() {
			var err error
			moved := false
			switch {
			case opts.Hibernate && sb.State == tartarus.StateHibernated:
				moved = true
			case opts.Hibernate && sb.State == tartarus.StateRunning:
				_, err = a.Hibernate(ctx, sb.ID)
				moved = err == nil
			}
			if !moved {
				_, err = a.DestroyWith(ctx, sb.ID, &tartarus.ShutdownOptions{Reason: tartarus.ReasonNodeDrain,
					GracePeriod: time.Duration(opts.GraceS) * time.Second})
			}
			mu.Lock()
			defer mu.Unlock()
			rep.Record(sb.ID, moved, err)
		})
	}
	wg.Wait()
	rep.Sort()
	return rep, nil
}
