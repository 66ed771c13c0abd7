package images

import (
	"fmt"
	"os"
	"path/filepath"
)

// writeInitramfs writes an uncompressed newc initramfs to dst: /init is the
// guest agent, /modules holds the kernel modules and /modules/load their
// load order. It is left uncompressed because under TCG the kernel copies
// an uncompressed archive faster than it inflates a gzip one (see
// docs/BENCHMARKS.md).
func writeInitramfs(dst, agent string, k *kernelInfo) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	w := newCPIOWriter(f)
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "modules"} {
		if err := w.Dir(d, 0o755); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's stdio before anything mounts devtmpfs.
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := addFile(w, "init", agent, 0o755); err != nil {
		return err
	}
	for _, m := range k.Modules {
		if err := addFile(w, "modules/"+m, filepath.Join(k.moduleDir(), m), 0o644); err != nil {
			return err
		}
	}
	if err := addFile(w, "modules/load", filepath.Join(k.moduleDir(), "load"), 0o644); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

func addFile(w *cpioWriter, name, src string, perm os.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("initramfs %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initramfs %s: %s is not a regular file", name, src)
	}
	return w.File(name, perm, st.Size(), f)
}
