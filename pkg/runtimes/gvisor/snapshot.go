package gvisor

import (
	"context"
	"fmt"
	"os"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Snapshot implements tartarus.Snapshotter: runsc checkpoint (memory,
// processes and the in-memory overlay holding the sandbox's file changes)
// into dir, after which the sandbox is left paused.
func (r *Runtime) Snapshot(ctx context.Context, id string, dir string) (*tartarus.SnapshotInfo, error) {
	m, err := r.loadMeta(id)
	if err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx)
	st, err := r.status(ctx, id)
	if err != nil {
		return nil, err
	}
	switch st {
	case "paused":
		// runsc checkpoints a running container; the resume-checkpoint-pause
		// window is a few milliseconds.
		if _, err := r.runsc(ctx, "resume", id); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
		}
	case "running":
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "snapshot %s: sandbox is %s", id, container.StateName(st))
	}
	created := r.Clock.Now()
	if _, err := r.runsc(ctx, "checkpoint", "--leave-running", "--image-path="+dir, id); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if _, err := r.runsc(ctx, "pause", id); err != nil {
		return nil, fmt.Errorf("snapshot %s: pause after checkpoint: %w", id, err)
	}
	info := &tartarus.SnapshotInfo{Template: m.Template, MemoryBytes: int64(m.MemoryMB) << 20, CPUs: m.CPUs, Created: created}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	for _, e := range ents {
		info.Files = append(info.Files, e.Name())
	}
	return info, nil
}

// Restore implements tartarus.Snapshotter: a new sandbox cfg.ID from a
// checkpoint, running. cfg.Image must be the template the snapshot was
// taken from.
func (r *Runtime) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	fp, err := r.Fingerprint(ctx)
	if err != nil {
		return err
	}
	if err := container.CheckLimits(fp, cfg); err != nil {
		return err
	}
	if _, err := os.Stat(r.sandboxDir(cfg.ID)); err == nil {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	if err := r.prepare(ctx, cfg); err != nil {
		r.unprepare(ctx, cfg.ID)
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if err := r.runscDetached(ctx, cfg.ID, "restore", "--detach", "--image-path="+dir, "--bundle", r.sandboxDir(cfg.ID), cfg.ID); err != nil {
		_ = r.Destroy(ctx, cfg.ID)
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	m, err := r.loadMeta(cfg.ID)
	if err != nil {
		return err
	}
	m.StartedAt = r.Clock.Now()
	if err := r.saveMeta(m); err != nil {
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	r.Activity.Touch(cfg.ID)
	return nil
}
