package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/jail"
)

// A jailed sandbox's state directory splits in two: the host's files
// (config.json, qemu.pid, qemu.log) stay in <dir>, owned by root, and the
// files QEMU writes live in <dir>/jail, owned by the sandbox's uid and the
// only writable directory in its jail. QEMU could replace anything in its
// directory with a symlink, so the host never follows links there.
const jailSubdir = "jail"

// qemuFiles are the files QEMU itself writes (or creates).
var qemuFiles = []string{"overlay.qcow2", "qmp.sock", "agent.sock", "console.sock"}

// qemuSandbox is -sandbox: QEMU's own seccomp filter, installed before the
// guest runs. spawn=deny is why snapshots migrate to a passed descriptor.
const qemuSandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// fileSlackMB is what a QEMU-written file may exceed its payload by:
// qcow2 metadata, a snapshot's device state.
const fileSlackMB = 128

// sandboxDirEnv is in a jailed QEMU's environment: with no -pidfile (QEMU is
// pid 1 of its namespace and would write "1"), it is how the host tells
// which state directory a QEMU belongs to.
const sandboxDirEnv = "TARTARUS_SANDBOX_DIR"

// jailDir is where QEMU's own files live.
func (v *vm) jailDir() string { return filepath.Join(v.dir, jailSubdir) }

// prepareJail makes the sandbox's QEMU directory its uid's own. A
// sandbox made with the jail off (its overlay in <dir>) moves to the jailed
// layout first.
func (d *Driver) prepareJail(v *vm) (int, error) {
	uid, err := d.cfg.Jail.UID(v.id)
	if err != nil {
		return 0, err
	}
	jd := v.jailDir()
	if err := os.MkdirAll(jd, 0o700); err != nil {
		return 0, err
	}
	if !v.conf.Jailed {
		old := filepath.Join(v.dir, "overlay.qcow2")
		if err := os.Rename(old, filepath.Join(jd, "overlay.qcow2")); err != nil && !os.IsNotExist(err) {
			return 0, err
		}
		v.conf.Jailed = true
		if err := v.saveConfig(); err != nil {
			return 0, err
		}
	}
	// 0700 and the sandbox's uid: the host (root) and this sandbox only.
	if err := os.Chown(jd, uid, uid); err != nil {
		return 0, err
	}
	if err := os.Chmod(jd, 0o700); err != nil {
		return 0, err
	}
	if err := os.Lchown(v.path("overlay.qcow2"), uid, uid); err != nil && !os.IsNotExist(err) {
		return 0, err
	}
	return uid, nil
}

// startJailed starts QEMU in the sandbox's jail and records its pid.
func (d *Driver) startJailed(ctx context.Context, v *vm, args []string, files []*os.File, logf *os.File) (*exec.Cmd, error) {
	if _, err := d.prepareJail(v); err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	spec, err := d.jailSpec(v, args)
	if err != nil {
		return nil, err
	}
	spec.Stdout, spec.Stderr, spec.ExtraFiles = logf, logf, files
	p, err := d.cfg.Jail.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(v.path("qemu.pid"), []byte(strconv.Itoa(p.Cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = p.Cmd.Process.Kill()
		_ = p.Cmd.Wait()
		return nil, err
	}
	return p.Cmd, nil
}

// jailSpec is how the sandbox's QEMU is jailed (the probes of the tests
// start with the same spec).
func (d *Driver) jailSpec(v *vm, args []string) (*jail.Spec, error) {
	qemu, err := exec.LookPath(d.cfg.QEMU)
	if err != nil {
		return nil, err
	}
	qemu, err = filepath.Abs(qemu)
	if err != nil {
		return nil, err
	}
	img := v.conf.Image
	// With a network, QEMU joins the sandbox's namespace to open its TAP.
	_, _, netnsPath := d.netArgs(v.conf.ID)
	binds := []jail.Bind{{Source: v.jailDir(), Writable: true}}
	for _, f := range []string{img.Kernel, img.Initrd, img.RootFS} {
		binds = append(binds, jail.Bind{Source: f})
	}
	if !strings.HasPrefix(qemu, "/usr/") {
		binds = append(binds, jail.Bind{Source: qemu})
	}
	// The largest files QEMU writes are the disk overlay, whose virtual
	// size is the template's root filesystem (qcow2 metadata on top is
	// small), and a snapshot's memory; RLIMIT_FSIZE holds QEMU to them
	// even if the guest takes it over.
	rootfs, err := os.Stat(img.RootFS)
	if err != nil {
		return nil, err
	}
	maxFileMB := int(max(rootfs.Size()>>20, int64(v.conf.MemoryMB))) + fileSlackMB
	devices := []string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"}
	if v.conf.Accel == "kvm" || slices.Contains(args, "kvm") {
		devices = append(devices, "/dev/kvm")
	}
	if netnsPath != "" {
		devices = append(devices, "/dev/net/tun") // to open the sandbox's TAP, which its uid owns
	}
	return &jail.Spec{
		ID: v.id, Root: filepath.Join(v.dir, "root"),
		Binds: binds, Devices: devices,
		CPUs: v.conf.CPUs, MemoryMB: v.conf.MemoryMB, MaxFileMB: maxFileMB,
		// argv[0] as configured, as an unjailed QEMU has it: tools
		// (and tests) find QEMU by its command line.
		Path: qemu, Args: append([]string{d.cfg.QEMU}, args...),
		Env:   []string{sandboxDirEnv + "=" + v.dir},
		Dir:   v.jailDir(),
		NetNS: netnsPath,
		// Stacked under QEMU's own -sandbox filter: QEMU keeps its TAP
		// (opened from /dev/net/tun, not a socket) and its Unix chardevs.
		StrictSeccomp: v.conf.StrictSeccomp,
	}, nil
}

// ourQEMU reports whether pid is the QEMU this driver started for the
// sandbox id in dir, jailed or not.
func ourQEMU(pid int, id, dir string) bool {
	argv := procCmdline(pid)
	if isOurQEMU(argv, id, dir) {
		return true
	}
	if !isJailedQEMU(argv, id) {
		return false
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	return slices.ContainsFunc(bytes.Split(env, []byte{0}), func(b []byte) bool { return string(b) == sandboxDirEnv+"="+dir })
}

// isJailedQEMU reports whether argv is a jailed QEMU named for the sandbox.
func isJailedQEMU(argv []string, id string) bool {
	if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "qemu") {
		return false
	}
	var name, sandbox bool
	for i := 0; i+1 < len(argv); i++ {
		switch argv[i] {
		case "-name":
			name = argv[i+1] == qemuName(id)
		case "-sandbox":
			sandbox = argv[i+1] == qemuSandbox
		}
	}
	return name && sandbox
}

// readTail reads a file the host wrote or QEMU may have replaced,
// never through a symlink, and at most limit bytes from its end.
func readTail(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	off := max(fi.Size()-limit, 0)
	buf := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(buf, off)
	if n == len(buf) {
		err = nil
	}
	return buf[:n], err
}

// releaseJail frees the sandbox's uid and cgroup once its QEMU is gone.
func (d *Driver) releaseJail(id string) {
	if d.cfg.Jail == nil {
		return
	}
	if err := d.cfg.Jail.Remove(id); err != nil {
		d.log.Warn("jail: cannot release", "sandbox", id, "err", err)
	}
}
