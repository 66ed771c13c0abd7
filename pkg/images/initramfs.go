package images

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

// moduleSigMagic ends a module file that carries an appended signature.
const moduleSigMagic = "~Module signature appended~\n"

// stripModuleSignature drops a module's appended signature. Checking it
// (SHA-256 and RSA) is the slowest part of loading a module under TCG, and it
// proves nothing here: the host took the modules from the Debian package
// apt verified, and the guest kernel (CONFIG_MODULE_SIG_FORCE unset, no
// lockdown) loads unsigned modules, only marking itself tainted.
func stripModuleSignature(b []byte) []byte {
	// Before the magic: struct module_signature, 12 bytes, ending in the
	// signature's big-endian length; the signature precedes it.
	const infoLen = 12
	if !bytes.HasSuffix(b, []byte(moduleSigMagic)) || len(b) < len(moduleSigMagic)+infoLen {
		return b
	}
	end := len(b) - len(moduleSigMagic)
	sigLen := int(binary.BigEndian.Uint32(b[end-4 : end]))
	start := end - infoLen - sigLen
	if sigLen <= 0 || start < 0 {
		return b
	}
	return b[:start]
}

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
		b, err := os.ReadFile(filepath.Join(k.moduleDir(), m))
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		b = stripModuleSignature(b)
		if err := w.File("modules/"+m, 0o644, int64(len(b)), bytes.NewReader(b)); err != nil {
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
