package hecatoncheir

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// A shared template's memory snapshots travel with it: a saved sandbox's
// running processes, a build's START process. The agent that made the
// version uploads each of its template snapshots (the runtime's files,
// checked out of Nyx, as a zstd tar); an agent that fetches the version
// installs them in its own Nyx key space, pointed at its own copy of the
// root filesystem (tartarus.TemplateSaver's RetargetSnapshot), under the
// id a create at that shape looks for.

// maxSnapshotFiles bounds the files of one shared snapshot.
const maxSnapshotFiles = 16

// sharedSnapshotKey is the shared store's key of one snapshot of tenant's
// version.
func sharedSnapshotKey(tenant, version, runtime, snapID string) string {
	return "templates/" + tenant + "/" + version + "/snapshot-" + runtime + "-" + snapID + ".tar.zst"
}

// shareSnapshots uploads img's template snapshots.
func (a *Agent) shareSnapshots(ctx context.Context, img *tartarus.Image) ([]wire.SharedSnapshot, error) {
	var out []wire.SharedSnapshot
	for name, sr := range a.snaps {
		list, err := sr.templates.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, s := range list {
			if s.Labels["template"] != img.Name || s.Labels["digest"] != img.Digest || s.Labels["format"] != templateSnapshotFormat {
				continue
			}
			shared, err := a.shareSnapshot(ctx, sr, img, s)
			if err != nil {
				return nil, fmt.Errorf("snapshot %s: %w", s.ID, err)
			}
			shared.Runtime = name
			out = append(out, shared)
		}
	}
	return out, nil
}

func (a *Agent) shareSnapshot(ctx context.Context, sr *snapRuntime, img *tartarus.Image, s *nyx.Snapshot) (wire.SharedSnapshot, error) {
	dir, err := os.MkdirTemp(a.cfg.SnapshotTempDir, "share-")
	if err != nil {
		return wire.SharedSnapshot{}, err
	}
	defer os.RemoveAll(dir)
	if _, err := sr.templates.Fetch(ctx, s.ID, dir); err != nil {
		return wire.SharedSnapshot{}, err
	}
	obj, err := a.upload(ctx, sharedSnapshotKey(img.Tenant, img.Name, sr.rt.Name(), s.ID), func(w io.Writer) error {
		return tarFiles(w, dir)
	})
	if err != nil {
		return wire.SharedSnapshot{}, err
	}
	return wire.SharedSnapshot{MemoryMB: int(s.MemoryBytes >> 20), CPUs: s.CPUs, Network: strings.HasSuffix(s.ID, "-net"), Object: obj}, nil
}

// tarFiles writes the regular files of dir (no subdirectories) as a tar.
func tarFiles(w io.Writer, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if err := addFile(tw, filepath.Join(dir, e.Name()), e.Name()); err != nil {
			return err
		}
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, file, name string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: st.Size(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// untarFiles unpacks a tarFiles stream into dir: regular files with plain
// names only (the sender is another node: nothing else is written).
func untarFiles(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if n >= maxSnapshotFiles || h.Typeflag != tar.TypeReg || h.Name == "" || h.Name != filepath.Base(h.Name) || strings.HasPrefix(h.Name, ".") {
			return tartarus.Errorf(tartarus.ErrInvalid, "snapshot archive: entry %q refused (plain file names only, at most %d)", h.Name, maxSnapshotFiles)
		}
		f, err := os.OpenFile(filepath.Join(dir, h.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = writeSparse(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
}

// fetchedSnapshot is a shared snapshot downloaded and checked, waiting to
// be installed.
type fetchedSnapshot struct {
	sr  *snapRuntime
	s   wire.SharedSnapshot
	dir string
}

// fetchSnapshots downloads st's snapshots for the runtimes this node
// snapshots with, into directories under SnapshotTempDir that the caller
// removes; a damaged one fails the fetch.
func (a *Agent) fetchSnapshots(ctx context.Context, st *wire.SharedTemplate) ([]fetchedSnapshot, error) {
	var out []fetchedSnapshot
	for _, s := range st.Snapshots {
		sr := a.snaps[s.Runtime]
		if sr == nil {
			continue
		}
		if !strings.HasPrefix(s.Object.Key, "templates/"+st.Image.Tenant+"/"+st.Image.Name+"/snapshot-") {
			return out, tartarus.Errorf(tartarus.ErrInvalid, "template %s: snapshot stored under %q, not its own key", st.Image.Name, s.Object.Key)
		}
		dir, err := os.MkdirTemp(a.cfg.SnapshotTempDir, "fetch-")
		if err != nil {
			return out, err
		}
		out = append(out, fetchedSnapshot{sr: sr, s: s, dir: dir})
		if err := a.download(ctx, s.Object, func(r io.Reader) error { return untarFiles(r, dir) }); err != nil {
			return out, err
		}
	}
	return out, nil
}

// installSnapshots makes the fetched snapshots made's template snapshots
// on this node. A snapshot that cannot be installed is logged and left
// out: creates at its shape boot the template instead.
func (a *Agent) installSnapshots(ctx context.Context, made *tartarus.Image, snaps []fetchedSnapshot) {
	for _, f := range snaps {
		err := a.installSnapshot(ctx, made, f)
		if err != nil {
			a.log.Warn("install a shared template snapshot", "template", made.Name, "runtime", f.s.Runtime,
				"memory_mb", f.s.MemoryMB, "cpus", f.s.CPUs, "err", err)
		}
	}
}

func (a *Agent) installSnapshot(ctx context.Context, made *tartarus.Image, f fetchedSnapshot) error {
	saver, ok := f.sr.snap.(tartarus.TemplateSaver)
	if !ok {
		return errors.New("the runtime cannot retarget a snapshot")
	}
	snapID, ok := templateSnapshotID(made, f.s.MemoryMB, f.s.CPUs, f.s.Network)
	if !ok {
		return errors.New("the template has no digest")
	}
	if _, err := f.sr.templates.Get(ctx, snapID); err == nil {
		return nil
	}
	info, err := saver.RetargetSnapshot(ctx, f.dir, made)
	if err != nil {
		return err
	}
	_, err = f.sr.templates.CreateFromFiles(ctx, "shared", f.dir, info, &nyx.CreateOptions{ID: snapID,
		Labels: map[string]string{"purpose": "template", "template": made.Name, "digest": made.Digest, "format": templateSnapshotFormat}})
	return err
}
