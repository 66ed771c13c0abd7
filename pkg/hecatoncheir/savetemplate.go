package hecatoncheir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TemplateAdder is the optional side interface of a Catalog that takes
// new tenant templates (pkg/images implements it).
type TemplateAdder interface {
	// StageTemplate returns an empty directory on the catalog's file
	// system to prepare template name's rootfs.ext4 in.
	StageTemplate(name string) (string, error)
	// AddTemplate installs a staged directory as template img.Name, owned
	// by img.Tenant, booting with base's kernel and initramfs; an existing
	// template of that name is not replaced (ErrAlreadyExists).
	AddTemplate(ctx context.Context, dir string, img, base *tartarus.Image, inputs map[string]string) (*tartarus.Image, error)
	// RemoveTemplate deletes a tenant template.
	RemoveTemplate(ctx context.Context, name string) error
}

// SaveTemplate makes template name, owned by the sandbox's tenant, of
// sandbox id's disk and memory: its disk is flattened into the template's
// root filesystem, and its memory becomes the template's snapshot at the
// sandbox's shape (memory, CPUs, network card or not), so sandboxes
// created from the template at that shape start where this one was, its
// processes running. A create at another shape boots the saved disk. The
// sandbox is paused for the snapshot and then continues as it was.
//
// name is NAME or NAME:TAG: the sandbox is saved as a new version, and the
// tag (latest for a bare NAME) moves to it once it is saved, so a save
// that fails leaves the tag where it was.
func (a *Agent) SaveTemplate(ctx context.Context, id, name string) (*tartarus.Image, error) {
	plain, _, err := images.ParseTemplateRef(name)
	if err != nil {
		return nil, err
	}
	if sb, err := a.cfg.Store.Get(ctx, id); err != nil {
		return nil, err
	} else if old, err := a.cfg.Images.Get(ctx, name); err == nil && old.Tenant != sb.Tenant {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", name)
	}
	made, err := a.SaveTemplateAs(ctx, id, &tartarus.Image{Name: images.VersionName(plain, a.cfg.Clock.Now())})
	if err != nil {
		return nil, err
	}
	tagged, err := a.TagTemplate(ctx, name, made.Name)
	if err != nil {
		a.dropVersion(context.WithoutCancel(ctx), made.Name)
		return nil, fmt.Errorf("save %s as template %s: %w", id, name, err)
	}
	return tagged, nil
}

// Template returns template name as this node has it.
func (a *Agent) Template(ctx context.Context, name string) (*tartarus.Image, error) {
	return a.cfg.Images.Get(ctx, name)
}

// SaveTemplateAs is SaveTemplate with the new template's description and
// defaults (Env, WorkDir, User, BuildMS) taken from spec; spec.Name names
// it. The owner is always the sandbox's tenant.
func (a *Agent) SaveTemplateAs(ctx context.Context, id string, spec *tartarus.Image) (*tartarus.Image, error) {
	name := spec.Name
	adder, ok := a.cfg.Images.(TemplateAdder)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "save as template: this node's template catalog takes no new templates")
	}
	if _, err := a.cfg.Images.Get(ctx, name); err == nil {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", name)
	} else if !errors.Is(err, tartarus.ErrNotFound) {
		return nil, err
	}
	// The work outlives a cancelled request, so that nothing is left half made.
	ctx = context.WithoutCancel(ctx)
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.State != tartarus.StateRunning && sb.State != tartarus.StatePaused {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s; only a running or paused sandbox is saved as a template", id, sb.State)
	}
	sr, err := a.snapshotter(sb.Runtime, "save as template")
	if err != nil {
		return nil, err
	}
	saver, ok := sr.snap.(tartarus.TemplateSaver)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "save as template: runtime %s cannot turn a snapshot into a template", sb.Runtime)
	}
	base, err := a.cfg.Images.Get(ctx, sb.Template)
	if err != nil {
		return nil, fmt.Errorf("save %s as template %s: its template %s: %w", id, name, sb.Template, err)
	}
	stage, err := adder.StageTemplate(name)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage) // gone already once installed

	start := a.cfg.Clock.Now()
	// The memory snapshot holds what the guest has not written back yet,
	// but a sandbox created at another shape boots the disk alone: flush.
	if res, err := sr.rt.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"sync"}, Timeout: time.Minute}); err != nil || res.ExitCode != 0 {
		a.log.Warn("sync before saving a sandbox as a template", "sandbox", id, "err", err, "result", res)
	}
	snap, err := a.pausedSnapshot(ctx, sr, id, sr.forks, &nyx.CreateOptions{Compression: nyx.CompressionNone,
		Labels: map[string]string{"purpose": "save", "sandbox": id}}, sb.State)
	if err != nil {
		return nil, fmt.Errorf("save %s as template %s: %w", id, name, err)
	}
	defer func() {
		if err := sr.forks.Delete(ctx, snap.ID); err != nil {
			a.log.Warn("delete the snapshot of a saved sandbox", "snapshot", snap.ID, "err", err)
		}
	}()
	files, err := os.MkdirTemp(a.cfg.SnapshotTempDir, "save-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(files)
	if _, err := sr.forks.Fetch(ctx, snap.ID, files); err != nil {
		return nil, fmt.Errorf("save %s as template %s: %w", id, name, err)
	}
	if err := saver.FlattenDisk(ctx, files, filepath.Join(stage, "rootfs.ext4")); err != nil {
		return nil, fmt.Errorf("save %s as template %s: flatten disk: %w", id, name, err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "saved\n%s\n%s\n%s\n", name, base.Digest, snap.Checksum)
	img := &tartarus.Image{Name: name, Tenant: sb.Tenant, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)),
		Description: spec.Description, Env: spec.Env, WorkDir: spec.WorkDir, User: spec.User, BuildMS: spec.BuildMS}
	if img.Description == "" {
		img.Description = fmt.Sprintf("sandbox %s saved (from %s)", id, sb.Template)
	}
	inputs := map[string]string{"saved_from": id, "parent": sb.Template, "parent_digest": base.Digest, "snapshot": snap.Checksum,
		"memory_mb": strconv.Itoa(sb.MemoryMB), "cpus": strconv.Itoa(sb.CPUs)}
	made, err := adder.AddTemplate(ctx, stage, img, base, inputs)
	if err != nil {
		return nil, fmt.Errorf("save %s as template %s: %w", id, name, err)
	}
	// The memory snapshot becomes the template's snapshot at this shape.
	undo := func(err error) error {
		if rerr := adder.RemoveTemplate(ctx, name); rerr != nil {
			a.log.Error("remove a half-saved template", "template", name, "err", rerr)
		}
		return fmt.Errorf("save %s as template %s: %w", id, name, err)
	}
	info, err := saver.RetargetSnapshot(ctx, files, made)
	if err != nil {
		return nil, undo(err)
	}
	snapID, ok := templateSnapshotID(made, sb.MemoryMB, sb.CPUs, sb.Network != nil)
	if !ok {
		return nil, undo(errors.New("the new template has no digest"))
	}
	if _, err := sr.templates.CreateFromFiles(ctx, id, files, info, &nyx.CreateOptions{ID: snapID,
		Labels: map[string]string{"purpose": "template", "template": made.Name, "digest": made.Digest, "format": templateSnapshotFormat}}); err != nil {
		return nil, undo(err)
	}
	a.log.Info("sandbox saved as a template", "sandbox", id, "template", name, "tenant", sb.Tenant,
		"snapshot", snapID, "took", a.cfg.Clock.Now().Sub(start))
	return made, nil
}

// DeleteTemplate removes tenant template name and its snapshots. It is
// refused (ErrFailedPrecondition) while a sandbox that is not over uses
// it, and for a built-in template.
func (a *Agent) DeleteTemplate(ctx context.Context, name string) error {
	adder, ok := a.cfg.Images.(TemplateAdder)
	if !ok {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "delete template: this node's template catalog removes no templates")
	}
	img, err := a.cfg.Images.Get(ctx, name)
	if err != nil {
		return err
	}
	if img.Tenant == "" {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is built in", name)
	}
	if img.Name != name {
		// A tag: it goes, and its version once nothing else needs it.
		return a.untag(ctx, name, img)
	}
	if tagged, err := a.versionTagged(ctx, name); err != nil {
		return err
	} else if tagged {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is tagged; delete its tags", name)
	}
	unlock := a.lock("template-delete/" + name)
	defer unlock()
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{States: tartarus.LiveStates()})
	if err != nil {
		return err
	}
	users := 0
	for _, sb := range live {
		if sb.Template == name {
			users++
		}
	}
	if users > 0 {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is used by %d sandbox(es); delete it once they end", name, users)
	}
	for _, sr := range a.snaps {
		list, err := sr.templates.List(ctx)
		if err != nil {
			return err
		}
		for _, s := range list {
			if s.Labels["template"] != name {
				continue
			}
			if err := sr.templates.Delete(ctx, s.ID); err != nil {
				return fmt.Errorf("delete template %s: snapshot %s: %w", name, s.ID, err)
			}
			a.dropTemplateFiles(sr, s.ID)
		}
	}
	return adder.RemoveTemplate(ctx, name)
}
