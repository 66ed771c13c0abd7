package microvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var _ tartarus.TemplateSaver = (*Driver)(nil)

// readSnapConfig reads the vm.json of the snapshot files in dir.
func readSnapConfig(dir string) (*vmConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, snapConfig))
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "not a microvm snapshot: %v", err)
	}
	var c vmConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "%s: %v", snapConfig, err)
	}
	return &c, nil
}

// qemuImg runs the disk tool.
func (d *Driver) qemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// FlattenDisk writes the snapshot's overlay merged with the root filesystem
// it was taken over into out, a raw ext4 image (sparse: qemu-img skips
// zeroes). The overlay is first pointed at the root filesystem that vm.json
// records, so the merge reads only the files this node made.
func (d *Driver) FlattenDisk(ctx context.Context, dir, out string) error {
	snap, err := readSnapConfig(dir)
	if err != nil {
		return err
	}
	disk := filepath.Join(dir, snapDisk)
	if err := d.qemuImg(ctx, "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", snap.Image.RootFS, disk); err != nil {
		return err
	}
	return d.qemuImg(ctx, "convert", "-f", "qcow2", "-O", "raw", disk, out)
}

// RetargetSnapshot replaces the snapshot's overlay with an empty one over
// img.RootFS (which holds everything the old overlay did, flattened) and
// records img as the snapshot's image.
func (d *Driver) RetargetSnapshot(ctx context.Context, dir string, img *tartarus.Image) (*tartarus.SnapshotInfo, error) {
	snap, err := readSnapConfig(dir)
	if err != nil {
		return nil, err
	}
	fresh := filepath.Join(dir, "disk-new.qcow2")
	if err := d.qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img.RootFS, fresh); err != nil {
		return nil, err
	}
	if err := os.Rename(fresh, filepath.Join(dir, snapDisk)); err != nil {
		return nil, err
	}
	snap.Image = *img
	snap.Template = img.Name
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, snapConfig), b, 0o600); err != nil {
		return nil, err
	}
	return &tartarus.SnapshotInfo{
		Template:    img.Name,
		ImageDigest: img.Digest,
		MemoryBytes: int64(snap.MemoryMB) << 20,
		CPUs:        snap.CPUs,
		Files:       snapFiles(dir),
		Created:     d.clock.Now().UTC(),
	}, nil
}

// snapFiles lists the snapshot files in dir.
func snapFiles(dir string) []string {
	files := []string{snapMemory, snapDisk, snapConfig}
	if _, err := os.Lstat(filepath.Join(dir, snapRAM)); err == nil {
		files = append(files, snapRAM)
	}
	return files
}
