package microvm

import "context"

// DiskFiles returns the sandbox's disk as the host holds it: its qcow2
// overlay (written by QEMU, so by the guest: open it without following
// links) and the template's read-only root filesystem beneath it. The
// quarantine's file-access evidence (pkg/typhon/typhonnode) diffs them.
func (d *Driver) DiskFiles(_ context.Context, id string) (overlay, base string, err error) {
	v, err := d.get(id)
	if err != nil {
		return "", "", err
	}
	return v.path("overlay.qcow2"), v.conf.Image.RootFS, nil
}
