package hecatoncheir

import (
	"context"
	"fmt"
	"maps"

	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// MaxFork bounds the copies one fork call makes.
const MaxFork = 16

// Fork makes count independent copies of a running (or paused) sandbox,
// files and processes included, and returns them running. The original is
// paused for the moment of the snapshot and then continues as it was.
// count is 1 to MaxFork; the copies must fit the node's capacity.
func (a *Agent) Fork(ctx context.Context, id string, count int) ([]*tartarus.Sandbox, error) {
	if count < 1 || count > MaxFork {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "count %d: must be between 1 and %d", count, MaxFork)
	}
	ids := make([]string, count)
	for i := range ids {
		ids[i] = tartarus.NewID("sb-")
	}
	return a.forkInto(ctx, id, ids)
}

// forkInto makes one copy of sandbox id for each of ids (1 to MaxFork
// new ids), as Fork describes.
func (a *Agent) forkInto(ctx context.Context, id string, ids []string) ([]*tartarus.Sandbox, error) {
	count := len(ids)
	ctx = context.WithoutCancel(ctx)
	parent, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if parent.State != tartarus.StateRunning && parent.State != tartarus.StatePaused {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s; only running or paused sandboxes fork", id, parent.State)
	}
	sr, err := a.snapshotter(parent.Runtime, "fork")
	if err != nil {
		return nil, err
	}
	if err := a.checkCapacity(ctx, sr.rt, count*parent.MemoryMB, count*parent.CPUs); err != nil {
		return nil, fmt.Errorf("fork %s into %d: %w", id, count, err)
	}
	img, err := a.cfg.Images.Get(ctx, parent.Template)
	if err != nil {
		return nil, fmt.Errorf("fork %s: template %s: %w", id, parent.Template, err)
	}

	snap, err := a.forkSnapshot(ctx, sr, parent)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := sr.forks.Delete(ctx, snap.ID); err != nil {
			a.log.Warn("delete fork snapshot", "snapshot", snap.ID, "err", err)
		}
	}()

	var made []*tartarus.Sandbox
	for _, childID := range ids {
		now := a.cfg.Clock.Now().UTC()
		md := maps.Clone(parent.Metadata)
		if md == nil {
			md = map[string]string{}
		}
		md["forked_from"] = parent.ID
		child := &tartarus.Sandbox{
			ID: childID, Tenant: parent.Tenant, Template: parent.Template, Runtime: parent.Runtime,
			State: tartarus.StateCreating, Node: a.cfg.Node, CPUs: parent.CPUs, MemoryMB: parent.MemoryMB,
			Env: parent.Env, Metadata: md, CreatedAt: now, UpdatedAt: now,
			ExpiresAt: now.Add(parent.ExpiresAt.Sub(parent.CreatedAt)), LastActivityAt: now,
			AutoHibernateS: parent.AutoHibernateS, Network: parent.Network,
		}
		cfg := &tartarus.VMConfig{ID: child.ID, Template: child.Template, Image: img, CPUs: child.CPUs, MemoryMB: child.MemoryMB, Env: child.Env, Network: child.Network}
		sb, err := a.createWith(ctx, child, func() error {
			_, err := sr.forks.Restore(ctx, snap.ID, cfg)
			return err
		})
		if err != nil {
			for _, m := range made {
				if _, derr := a.Destroy(ctx, m.ID); derr != nil {
					a.log.Error("destroy fork after a failed fork", "sandbox", m.ID, "err", derr)
				}
			}
			return nil, fmt.Errorf("fork %s: %w", id, err)
		}
		made = append(made, sb)
	}
	a.log.Info("sandbox forked", "sandbox", id, "count", count)
	return made, nil
}

// forkSnapshot snapshots the parent under its lock and puts it back as it
// was. A parent that cannot be resumed afterwards is recorded failed.
func (a *Agent) forkSnapshot(ctx context.Context, sr *snapRuntime, parent *tartarus.Sandbox) (*nyx.Snapshot, error) {
	snap, err := a.pausedSnapshot(ctx, sr, parent.ID, sr.forks, &nyx.CreateOptions{Compression: nyx.CompressionNone,
		Labels: map[string]string{"purpose": "fork", "sandbox": parent.ID}}, parent.State)
	if err != nil {
		return nil, fmt.Errorf("fork %s: %w", parent.ID, err)
	}
	return snap, nil
}

// pausedSnapshot snapshots sandbox id into mgr under the sandbox's lock
// and puts it back as it was (running or paused). want, if not empty, is
// the state the sandbox must still be in. A sandbox that cannot be resumed
// afterwards is recorded failed.
func (a *Agent) pausedSnapshot(ctx context.Context, sr *snapRuntime, id string, mgr *nyx.Manager, opts *nyx.CreateOptions, want ...tartarus.State) (*nyx.Snapshot, error) {
	unlock := a.lock(id)
	defer unlock()
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(want) > 0 && sb.State != want[0] {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s became %s", sb.ID, sb.State)
	}
	if sb.State == tartarus.StateHibernated || sb.State.Final() || sb.State == tartarus.StateCreating {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s; only a live sandbox is snapshotted", sb.ID, sb.State)
	}
	a.touch(ctx, sb.ID)
	wasPaused := sb.State == tartarus.StatePaused
	snap, err := mgr.CreateFromRunning(ctx, sb.ID, opts)
	var resumeErr error
	if !wasPaused {
		// The Snapshotter leaves it paused, even after some failures.
		resumeErr = sr.rt.Resume(ctx, sb.ID)
	}
	if err != nil {
		if resumeErr != nil {
			a.log.Error("resume after a failed snapshot", "sandbox", sb.ID, "err", resumeErr)
		}
		if tartarus.ClassOf(err).Err == nil {
			err = fmt.Errorf("%w (%w)", err, tartarus.ErrUnavailable)
		}
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if resumeErr != nil {
		if _, merr := a.cfg.Store.Move(ctx, sb.ID, sb.State, tartarus.StateFailed,
			store.Change{At: a.cfg.Clock.Now().UTC(), Error: "resume after snapshot: " + resumeErr.Error()}); merr != nil {
			a.log.Error("record failed resume", "sandbox", sb.ID, "err", merr)
		}
		_ = mgr.Delete(ctx, snap.ID)
		return nil, fmt.Errorf("resume after snapshot: %w", resumeErr)
	}
	return snap, nil
}
