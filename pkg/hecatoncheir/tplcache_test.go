package hecatoncheir

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// linkingSnapshotter records the inode of every file Restore is given.
type linkingSnapshotter struct {
	tartarus.Snapshotter
	inodes map[string]uint64
}

func (s *linkingSnapshotter) ReadOnlySnapshotFiles() []string { return []string{"memory.ram"} }

func (s *linkingSnapshotter) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		s.inodes[e.Name()] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return nil
}

// TestRestoreTemplateLinksReadOnlyFiles: the files the Snapshotter only
// reads are linked from the template cache, the others copied.
func TestRestoreTemplateLinksReadOnlyFiles(t *testing.T) {
	dir := t.TempDir()
	cache, tmp := filepath.Join(dir, "cache"), filepath.Join(dir, "tmp")
	src := filepath.Join(cache, "microvm", "snap-1")
	if err := os.MkdirAll(src, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for _, name := range []string{"memory.ram", "disk.qcow2", cacheMarker} {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want[name] = fi.Sys().(*syscall.Stat_t).Ino
	}
	snap := &linkingSnapshotter{inodes: map[string]uint64{}}
	rt := &fakeNamed{name: "microvm"}
	a := &Agent{cfg: Config{TemplateCacheDir: cache, SnapshotTempDir: tmp}}
	sr := &snapRuntime{rt: rt, snap: snap}
	if err := a.restoreTemplate(context.Background(), sr, "snap-1", &tartarus.VMConfig{ID: "sb-1"}); err != nil {
		t.Fatal(err)
	}
	if got := snap.inodes["memory.ram"]; got != want["memory.ram"] {
		t.Errorf("memory.ram was copied (inode %d, cache's %d), want it linked", got, want["memory.ram"])
	}
	if got := snap.inodes["disk.qcow2"]; got == 0 || got == want["disk.qcow2"] {
		t.Errorf("disk.qcow2 inode %d (cache's %d), want a copy", got, want["disk.qcow2"])
	}
	if _, ok := snap.inodes[cacheMarker]; ok {
		t.Error("the cache's marker reached the restore")
	}
}

// fakeNamed is a Runtime that only has a name.
type fakeNamed struct {
	tartarus.Runtime
	name string
}

func (f *fakeNamed) Name() string { return f.name }
