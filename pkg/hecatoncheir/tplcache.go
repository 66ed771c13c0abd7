package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The template cache keeps each template snapshot's files unpacked in
// Config.TemplateCacheDir/<runtime>/<snapshot id>, filled once from a
// checksum-verified Nyx fetch. A create then copies the files (sparsely:
// guest memory is mostly holes) into a fresh directory for the
// Snapshotter's Restore, which may move or change them, instead of
// fetching, verifying and decompressing the stored snapshot each time.
// The Erebus copy stays the durable one; a cache directory whose marker
// file is missing (a crash mid-fill) is filled again.

const cacheMarker = ".complete"

// readOnlyFiles is the optional side interface of a Snapshotter whose
// Restore only reads some of its snapshot files: the template cache links
// those into the restore directory instead of copying them (when the two
// directories share a file system).
type readOnlyFiles interface {
	ReadOnlySnapshotFiles() []string
}

// restoreTemplate creates sandbox cfg.ID from template snapshot snapID.
func (a *Agent) restoreTemplate(ctx context.Context, sr *snapRuntime, snapID string, cfg *tartarus.VMConfig) error {
	if a.cfg.TemplateCacheDir == "" {
		_, err := sr.templates.Restore(ctx, snapID, cfg)
		return err
	}
	src, err := a.templateFiles(ctx, sr, snapID)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(a.cfg.SnapshotTempDir, "restore-")
	if err != nil {
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	defer os.RemoveAll(dir)
	ents, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	var readOnly []string
	if ro, ok := sr.snap.(readOnlyFiles); ok {
		readOnly = ro.ReadOnlySnapshotFiles()
	}
	for _, e := range ents {
		if e.Name() == cacheMarker || !e.Type().IsRegular() {
			continue
		}
		if slices.Contains(readOnly, e.Name()) && os.Link(filepath.Join(src, e.Name()), filepath.Join(dir, e.Name())) == nil {
			continue
		}
		if err := copySparse(filepath.Join(src, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("restore %s: copy %s: %w", cfg.ID, e.Name(), err)
		}
	}
	if err := sr.snap.Restore(ctx, cfg, dir); err != nil {
		return fmt.Errorf("restore %s from template snapshot %s: %w", cfg.ID, snapID, err)
	}
	return nil
}

// templateFiles returns the cache directory of snapID, filling it first
// if needed.
func (a *Agent) templateFiles(ctx context.Context, sr *snapRuntime, snapID string) (string, error) {
	dir := filepath.Join(a.cfg.TemplateCacheDir, sr.rt.Name(), snapID)
	if _, err := os.Stat(filepath.Join(dir, cacheMarker)); err == nil {
		return dir, nil
	}
	unlock := a.lock("template-cache/" + sr.rt.Name() + "/" + snapID)
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, cacheMarker)); err == nil {
		return dir, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if _, err := sr.templates.Fetch(context.WithoutCancel(ctx), snapID, dir); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, cacheMarker), nil, 0o600); err != nil {
		return "", err
	}
	return dir, nil
}

// dropTemplateFiles removes the cache directory of a deleted snapshot.
func (a *Agent) dropTemplateFiles(sr *snapRuntime, snapID string) {
	if a.cfg.TemplateCacheDir == "" {
		return
	}
	dir := filepath.Join(a.cfg.TemplateCacheDir, sr.rt.Name(), snapID)
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn("remove cached template snapshot", "dir", dir, "err", err)
	}
}

// copySparse copies src to a new file dst, skipping the holes of src so
// that dst has the same holes.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	size := st.Size()
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			out.Close()
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			out.Close()
			return err
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			out.Close()
			return err
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			out.Close()
			return err
		}
		if _, err := io.CopyN(out, in, hole-data); err != nil {
			out.Close()
			return err
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
