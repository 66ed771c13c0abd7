// Package microvm runs sandboxes as QEMU "microvm" virtual machines: a
// Debian kernel booted straight from its uncompressed vmlinux, the guest
// agent in the initramfs, and a copy-on-write qcow2 overlay of the
// template's read-only root filesystem.
//
// KVM is used where it really boots a guest (a short probe, cached on disk
// per host kernel and QEMU version); otherwise QEMU's TCG emulates the CPU.
// The host talks to the guest agent over a virtio-serial port on a unix
// socket, and to QEMU over QMP (package qmp).
//
// QEMU outlives the node agent: each sandbox's state directory
// (Config.StateDir/<id>/) holds config.json, qemu.pid, qmp.sock,
// agent.sock, console.sock, console.log, qemu.log and overlay.qcow2, so
// that Recover in a restarted agent can find and adopt every VM that still
// runs. With Config.Jail, QEMU runs confined (package jail) and the files it
// writes (overlay and sockets) move to <id>/jail/, its uid's own (jail.go). QEMU runs in
// its own session, so a dying agent's terminal or process group takes no VM
// with it; a service manager that kills the whole control group (systemd's
// default KillMode) still would, so a unit running the agent wants
// KillMode=process.
package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm/qmp"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Name is the runtime's name as users choose it.
const Name = "microvm"

var _ tartarus.Runtime = (*Driver)(nil)

// Config configures the driver.
type Config struct {
	// StateDir holds one directory per sandbox (required).
	StateDir string
	Log      *slog.Logger
	// QEMU is the emulator binary; empty means qemu-system-x86_64.
	QEMU string
	// QEMUImg is the disk tool; empty means qemu-img.
	QEMUImg string
	// Accel is "auto" (the default: KVM when the probe boots, else TCG),
	// "kvm" or "tcg".
	Accel string
	// BootTimeout bounds one boot attempt, until the guest agent answers;
	// zero means 30 s.
	BootTimeout time.Duration
	// BootRetries is how many more attempts follow a boot that timed out;
	// zero means 2, negative means none.
	BootRetries int
	// ProbeImage is what the KVM probe boots. Without it, "auto" uses TCG.
	ProbeImage *tartarus.Image
	// ProbeCache is the file that keeps the KVM probe's result (keyed by
	// host kernel and QEMU version); empty means StateDir/.kvm-probe.json.
	ProbeCache string
	// TBSizeMB is TCG's translation cache size; zero means 32 MiB.
	TBSizeMB int
	// KernelArgs are added to the guest kernel's command line.
	KernelArgs []string
	// Clock is the time source for idle times and timestamps; nil means
	// clock.System{}.
	Clock clock.Clock
	// Networks, when set, gives sandboxes a NIC on a TAP device in their
	// own network namespace (see network.go); nil means only lo.
	Networks Networks
	// ConsoleMaxBytes caps the guest's console log, console.log, which
	// rotates once to console.log.1, and QEMU's own, qemu.log, likewise;
	// zero means DefaultConsoleMaxBytes.
	ConsoleMaxBytes int64
	// Jail confines each sandbox's QEMU (its own uid, namespaces, root,
	// cgroup, seccomp); nil runs QEMU unconfined, as root.
	Jail *jail.Jail
	// CopyMemory turns mapped memory off (see mapped.go): booted
	// sandboxes get plain RAM, so their snapshots (template snapshots)
	// hold the memory in the migration stream and every restore reads
	// it. Snapshots that have a memory file still restore mapped.
	CopyMemory bool
}

// Validate reports every problem with the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	if c.StateDir == "" {
		errs = append(errs, errors.New("state dir is required (StateDir)"))
	}
	switch c.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("accel %q: want auto, kvm or tcg", c.Accel))
	}
	if c.BootTimeout < 0 {
		errs = append(errs, errors.New("boot timeout must not be negative (BootTimeout)"))
	}
	if c.TBSizeMB < 0 {
		errs = append(errs, errors.New("tb size must not be negative (TBSizeMB)"))
	}
	if c.ConsoleMaxBytes < 0 {
		errs = append(errs, errors.New("console cap must not be negative (ConsoleMaxBytes)"))
	}
	if err := errors.Join(errs...); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "microvm config: %v", err)
	}
	return nil
}

// hostReserveMB is memory left to the host when computing the largest sandbox.
const hostReserveMB = 1024

// Driver is the microvm Runtime.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	clock  clock.Clock
	dial   guestDialer
	tscKHz int
	fp     tartarus.Fingerprint

	// ram keeps the sealed memories of template snapshots.
	ram *ramCache

	mu  sync.Mutex
	vms map[string]*vm
}

// New checks the host (QEMU present, KVM usable or not) and returns a driver.
// A host that cannot run microVMs still gets a driver, whose Fingerprint
// says why and whose Create fails with ErrUnavailable.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.QEMUImg == "" {
		cfg.QEMUImg = "qemu-img"
	}
	if cfg.Accel == "" {
		cfg.Accel = "auto"
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 30 * time.Second
	}
	if cfg.BootRetries == 0 {
		cfg.BootRetries = 2
	}
	if cfg.TBSizeMB == 0 {
		cfg.TBSizeMB = 32
	}
	if cfg.ConsoleMaxBytes == 0 {
		cfg.ConsoleMaxBytes = DefaultConsoleMaxBytes
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = stateDir
	if cfg.ProbeCache == "" {
		cfg.ProbeCache = filepath.Join(stateDir, ".kvm-probe.json")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("microvm: state dir: %w", err)
	}
	d := &Driver{
		cfg:   cfg,
		log:   cfg.Log.With("runtime", Name),
		clock: cfg.Clock,
		dial:  dialGuest,
		ram:   newRAMCache(),
		vms:   map[string]*vm{},
	}
	d.fp = d.fingerprint(ctx)
	d.fp.Jail = &tartarus.JailInfo{}
	if j := cfg.Jail; j != nil {
		info := j.Info()
		d.fp.Jail = &tartarus.JailInfo{Enabled: true, UIDRange: info.UIDRange, CgroupVersion: info.CgroupVersion, Seccomp: true}
	}
	return d, nil
}

// Name implements tartarus.Runtime: "microvm".
func (d *Driver) Name() string { return Name }

// Fingerprint reports what New found; it does no I/O.
func (d *Driver) Fingerprint(ctx context.Context) (*tartarus.Fingerprint, error) {
	fp := d.fp
	fp.Details = map[string]string{}
	for k, v := range d.fp.Details {
		fp.Details[k] = v
	}
	return &fp, nil
}

func (d *Driver) fingerprint(ctx context.Context) tartarus.Fingerprint {
	fp := tartarus.Fingerprint{
		Runtime:  d.Name(),
		HostCPUs: runtime.NumCPU(),
		MaxCPUs:  runtime.NumCPU(),
		Capabilities: tartarus.Capabilities{
			Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true,
			Network: d.provisioner() != nil,
		},
		Details: map[string]string{},
	}
	if mem, err := hostMemoryMB(); err == nil {
		fp.HostMemoryMB = mem
		fp.MaxMemoryMB = max(mem-hostReserveMB, tartarus.MinMemoryMB)
	}
	var missing []string
	for _, tool := range []string{d.cfg.QEMU, d.cfg.QEMUImg} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		fp.Reason = "not installed: " + strings.Join(missing, ", ") + " (scripts/deps.sh installs them)"
		return fp
	}
	version, err := qemuVersion(ctx, d.cfg.QEMU)
	if err != nil {
		fp.Reason = err.Error()
		return fp
	}
	fp.Details["qemu"] = version
	tsc, err := hostTSCkHz()
	if err != nil {
		fp.Reason = "host TSC frequency unknown: " + err.Error()
		return fp
	}
	d.tscKHz = tsc
	fp.Accel, fp.Details["accel_reason"] = d.chooseAccel(ctx, version)
	fp.Available = true
	if fp.Accel == "tcg" {
		// Available, but slower than it could be: say why.
		fp.Reason = fp.Details["accel_reason"]
	}
	return fp
}

func qemuVersion(ctx context.Context, qemu string) (string, error) {
	out, err := exec.CommandContext(ctx, qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", qemu, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

var _ tartarus.RuntimeCloser = (*Driver)(nil)

// Close lets go of every VM without stopping it, as a node agent does when
// it exits: the VMs keep running for the next agent's Recover.
func (d *Driver) Close() error {
	d.mu.Lock()
	vms := d.vms
	d.vms = map[string]*vm{}
	d.mu.Unlock()
	for _, v := range vms {
		v.disconnect()
	}
	return nil
}

// validID keeps ids usable as one path element.
func validID(id string) error {
	if len(id) == 0 || len(id) > 64 || id[0] == '.' {
		return tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %q: want 1-64 characters of A-Z a-z 0-9 . _ -, not starting with '.'", id)
	}
	for _, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %q: want 1-64 characters of A-Z a-z 0-9 . _ -", id)
		}
	}
	return nil
}

func (d *Driver) get(id string) (*vm, error) {
	d.mu.Lock()
	v := d.vms[id]
	d.mu.Unlock()
	if v == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return v, nil
}

// Create writes the sandbox's state directory and disk overlay.
func (d *Driver) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	return d.create(ctx, cfg, true)
}

// create makes the state directory; with overlay, also a fresh disk overlay
// (Restore brings the snapshot's instead).
func (d *Driver) create(ctx context.Context, cfg *tartarus.VMConfig, overlay bool) (string, error) {
	if !d.fp.Available {
		return "", tartarus.Errorf(tartarus.ErrUnavailable, "microvm: %s", d.fp.Reason)
	}
	if err := d.checkConfig(cfg); err != nil {
		return "", err
	}
	if cfg.StrictSeccomp && d.cfg.Jail == nil {
		// The filter is installed by the jail's shim; never pretend.
		return "", tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s: the strict seccomp filter needs the jail, which is off on this node", cfg.ID)
	}
	dir := filepath.Join(d.cfg.StateDir, cfg.ID)
	d.mu.Lock()
	if d.vms[cfg.ID] != nil {
		d.mu.Unlock()
		return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		d.mu.Unlock()
		if os.IsExist(err) {
			return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s (state directory %s)", cfg.ID, dir)
		}
		return "", fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	v := &vm{id: cfg.ID, dir: dir, log: d.log.With("sandbox", cfg.ID), state: tartarus.InstanceCreated, lastCall: d.clock.Now()}
	d.vms[cfg.ID] = v
	d.mu.Unlock()

	v.conf = vmConfig{ID: cfg.ID, Template: cfg.Template, Image: *cfg.Image, CPUs: cfg.CPUs, MemoryMB: cfg.MemoryMB,
		Env: cfg.Env, DiskIOPS: max(cfg.DiskIOPS, 0), Accel: d.fp.Accel, CreatedAt: d.clock.Now().UTC(),
		Jailed: d.cfg.Jail != nil, Network: cfg.Network, StrictSeccomp: cfg.StrictSeccomp}
	err := d.createNetwork(ctx, cfg)
	if err == nil && v.conf.Jailed {
		_, err = d.prepareJail(v)
	}
	if err == nil {
		if overlay {
			err = d.prepare(context.WithoutCancel(ctx), v)
		} else {
			err = v.saveConfig()
		}
		if err != nil {
			_ = d.destroyNetwork(context.WithoutCancel(ctx), cfg.ID)
		}
	}
	if err != nil {
		d.forget(v)
		_ = os.RemoveAll(dir)
		d.releaseJail(cfg.ID)
		return "", fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	return cfg.ID, nil
}

func (d *Driver) checkConfig(cfg *tartarus.VMConfig) error {
	if cfg == nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "no sandbox config")
	}
	if err := validID(cfg.ID); err != nil {
		return err
	}
	img := cfg.Image
	if img == nil || img.Kernel == "" || img.Initrd == "" || img.RootFS == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "sandbox %s: template %q has no kernel, initrd and root filesystem", cfg.ID, cfg.Template)
	}
	for _, f := range []string{img.Kernel, img.Initrd, img.RootFS} {
		if _, err := os.Stat(f); err != nil {
			return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s: template %s: %v", cfg.ID, img.Name, err)
		}
	}
	switch {
	case cfg.CPUs < 1:
		return tartarus.Errorf(tartarus.ErrInvalid, "sandbox %s: cpus %d: must be at least 1", cfg.ID, cfg.CPUs)
	case cfg.CPUs > d.fp.MaxCPUs:
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "sandbox %s: cpus %d: this host gives at most %d", cfg.ID, cfg.CPUs, d.fp.MaxCPUs)
	case cfg.MemoryMB < tartarus.MinMemoryMB:
		return tartarus.Errorf(tartarus.ErrInvalid, "sandbox %s: memory %d MiB: must be at least %d", cfg.ID, cfg.MemoryMB, tartarus.MinMemoryMB)
	case cfg.MemoryMB > d.fp.MaxMemoryMB:
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "sandbox %s: memory %d MiB: this host gives at most %d MiB", cfg.ID, cfg.MemoryMB, d.fp.MaxMemoryMB)
	}
	return tartarus.ValidEnv(cfg.Env)
}

// prepare makes the overlay and writes config.json.
func (d *Driver) prepare(ctx context.Context, v *vm) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "create", "-q", "-f", "qcow2", "-F", "raw",
		"-b", v.conf.Image.RootFS, v.path("overlay.qcow2")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return v.saveConfig()
}

func (d *Driver) forget(v *vm) {
	d.mu.Lock()
	if d.vms[v.id] == v {
		delete(d.vms, v.id)
	}
	d.mu.Unlock()
}

// Start boots the sandbox and returns once its guest agent answers. A boot
// that does not finish within BootTimeout is killed and tried again, up to
// BootRetries times.
func (d *Driver) Start(ctx context.Context, id string) error {
	v, err := d.get(id)
	if err != nil {
		return err
	}
	v.op.Lock()
	defer v.op.Unlock()
	if v.crashed() {
		v.log.Warn("qemu is gone; booting again", "pid", v.pid)
		v.stop(context.WithoutCancel(ctx))
	}
	switch st := v.getState(); st {
	case tartarus.InstanceRunning:
		return nil
	case tartarus.InstanceCreated, tartarus.InstanceStopped:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "start sandbox %s: it is %s", id, st)
	}
	attempts := 1 + max(d.cfg.BootRetries, 0)
	var errs []error
	for i := 1; i <= attempts; i++ {
		err := d.boot(ctx, v, v.conf.Accel, d.cfg.BootTimeout)
		if err == nil {
			v.touch(d.clock.Now())
			return nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", i, err))
		v.log.Warn("boot failed", "attempt", i, "err", err)
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("start sandbox %s: %w\nconsole:\n%s", id, errors.Join(errs...), v.consoleTail(20))
}

// Exec runs a command in the guest.
func (d *Driver) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	if req == nil || len(req.Cmd) == 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "exec in sandbox %s: no command", id)
	}
	v, g, done, err := d.begin(id)
	if err != nil {
		return nil, err
	}
	defer done()
	r := *req
	if len(v.conf.Env) > 0 {
		r.Env = make(map[string]string, len(v.conf.Env)+len(req.Env))
		for k, val := range v.conf.Env {
			r.Env[k] = val
		}
		for k, val := range req.Env {
			r.Env[k] = val
		}
	}
	res, err := g.Exec(ctx, &r)
	if err != nil {
		return nil, fmt.Errorf("exec in sandbox %s: %w", id, err)
	}
	return res, nil
}

// Signal sends sig to every process the sandbox's commands started.
func (d *Driver) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	_, g, done, err := d.begin(id)
	if err != nil {
		return err
	}
	defer done()
	// Every guest process but the agent hears it, daemons that left their
	// exec's process group too; a guest from before that call knows only
	// its exec's process groups.
	if _, err := g.SignalProcesses(ctx, sig); err == nil {
		return nil
	} else if !errors.Is(err, tartarus.ErrNotImplemented) {
		return fmt.Errorf("signal sandbox %s: %w", id, err)
	}
	if err := g.SignalAll(ctx, sig); err != nil {
		return fmt.Errorf("signal sandbox %s: %w", id, err)
	}
	return nil
}

// ReadFile streams a file out of the guest.
func (d *Driver) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	_, g, done, err := d.begin(id)
	if err != nil {
		return nil, err
	}
	defer done()
	rc, err := g.ReadFile(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("read %s in sandbox %s: %w", path, id, err)
	}
	return rc, nil
}

// WriteFile streams r into a file in the guest.
func (d *Driver) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	_, g, done, err := d.begin(id)
	if err != nil {
		return err
	}
	defer done()
	if err := g.WriteFile(ctx, path, mode, r); err != nil {
		return fmt.Errorf("write %s in sandbox %s: %w", path, id, err)
	}
	return nil
}

// ListFiles lists a directory in the guest.
func (d *Driver) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	_, g, done, err := d.begin(id)
	if err != nil {
		return nil, err
	}
	defer done()
	fi, err := g.ListFiles(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("list %s in sandbox %s: %w", path, id, err)
	}
	return fi, nil
}

// Stats asks the guest for its resource use.
func (d *Driver) Stats(ctx context.Context, id string) (*tartarus.Stats, error) {
	v, g, done, err := d.begin(id)
	if err != nil {
		return nil, err
	}
	defer done()
	v.mu.Lock()
	v.calls-- // begin counted this one; a stats call does not stir the guest
	v.mu.Unlock()
	st, err := d.guestStats(ctx, v, g, 1)
	if err != nil {
		return nil, fmt.Errorf("stats of sandbox %s: %w", id, err)
	}
	return st, nil
}

// begin checks that the sandbox runs and marks it busy until done is called.
func (d *Driver) begin(id string) (*vm, guestConn, func(), error) {
	v, err := d.get(id)
	if err != nil {
		return nil, nil, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.state == tartarus.InstancePaused:
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is paused", id)
	case v.state != tartarus.InstanceRunning || v.guest == nil:
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, v.state)
	}
	v.busy++
	v.calls++
	v.lastCall = d.clock.Now()
	return v, v.guest, func() {
		v.mu.Lock()
		v.busy--
		v.lastCall = d.clock.Now()
		v.mu.Unlock()
	}, nil
}

// Pause stops the guest's vCPUs (QMP stop). Pausing a paused sandbox is a no-op.
func (d *Driver) Pause(ctx context.Context, id string) error {
	v, err := d.get(id)
	if err != nil {
		return err
	}
	v.op.Lock()
	defer v.op.Unlock()
	switch st := v.getState(); st {
	case tartarus.InstancePaused:
		return nil
	case tartarus.InstanceRunning:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "pause sandbox %s: it is %s", id, st)
	}
	if _, err := v.qmp.Execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("pause sandbox %s: %w", id, err)
	}
	v.setState(tartarus.InstancePaused)
	v.touch(d.clock.Now())
	return nil
}

// Resume continues a paused sandbox (QMP cont) and resets the guest's clock,
// which stood still while paused.
func (d *Driver) Resume(ctx context.Context, id string) error {
	v, err := d.get(id)
	if err != nil {
		return err
	}
	v.op.Lock()
	defer v.op.Unlock()
	switch st := v.getState(); st {
	case tartarus.InstanceRunning:
		return nil
	case tartarus.InstancePaused:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "resume sandbox %s: it is %s", id, st)
	}
	if _, err := v.qmp.Execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("resume sandbox %s: %w", id, err)
	}
	if v.guest == nil { // adopted while paused: meet the guest now
		if err := d.connectGuest(ctx, v, d.cfg.BootTimeout); err != nil {
			return fmt.Errorf("resume sandbox %s: %w", id, err)
		}
	} else if err := v.guest.Sync(ctx, d.clock.Now(), nil); err != nil {
		v.log.Warn("clock sync after resume failed", "err", err)
	}
	v.setState(tartarus.InstanceRunning)
	v.touch(d.clock.Now())
	return nil
}

// Destroy stops QEMU (QMP quit, then SIGKILL) and removes the sandbox's
// state directory. It works without a live driver entry too, so remains
// found on disk are cleaned up, and it ignores ctx's cancellation.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	d.mu.Lock()
	v := d.vms[id]
	d.mu.Unlock()
	dir := filepath.Join(d.cfg.StateDir, id)
	if v != nil {
		v.op.Lock()
		defer v.op.Unlock()
		v.stop(ctx)
		d.forget(v)
	}
	killAll(id, dir)
	// The network goes once QEMU (which holds the TAP device) is gone.
	nerr := d.destroyNetwork(ctx, id)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	d.releaseJail(id)
	return nerr
}

// killAll SIGKILLs every process that is our QEMU for the sandbox and waits for it.
func killAll(id, dir string) {
	for _, pid := range processesOf(id, dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
}

// List returns the sandboxes this driver holds.
func (d *Driver) List(ctx context.Context) ([]*tartarus.Instance, error) {
	d.mu.Lock()
	vms := make([]*vm, 0, len(d.vms))
	for _, v := range d.vms {
		vms = append(vms, v)
	}
	d.mu.Unlock()
	out := make([]*tartarus.Instance, 0, len(vms))
	for _, v := range vms {
		d.refreshActivity(ctx, v)
		out = append(out, v.instance())
	}
	return out, nil
}

// Recover adopts the sandboxes whose QEMU still runs and removes the state
// of those whose QEMU is gone (or never started).
func (d *Driver) Recover(ctx context.Context) ([]*tartarus.Instance, error) {
	ents, err := os.ReadDir(d.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	var adopted []*tartarus.Instance
	var errs []error
	for _, e := range ents {
		id := e.Name()
		if !e.IsDir() || validID(id) != nil {
			continue
		}
		d.mu.Lock()
		held := d.vms[id]
		d.mu.Unlock()
		if held != nil {
			adopted = append(adopted, held.instance())
			continue
		}
		v, err := d.adopt(ctx, id)
		if err == nil {
			if err = d.recoverNetwork(ctx, v); err != nil {
				v.qmp.Close()
				d.forget(v)
				err = fmt.Errorf("network: %w", err)
			}
		}
		if err != nil {
			d.log.Warn("recover: cleaning up sandbox", "sandbox", id, "reason", err)
			if err := d.Destroy(ctx, id); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		adopted = append(adopted, v.instance())
	}
	if d.cfg.Jail != nil {
		// A uid or cgroup whose sandbox is gone is free again.
		live := make([]string, 0, len(adopted))
		for _, in := range adopted {
			live = append(live, in.ID)
		}
		if err := d.cfg.Jail.Reconcile(live); err != nil {
			errs = append(errs, fmt.Errorf("recover: jail: %w", err))
		}
	}
	return adopted, errors.Join(errs...)
}

// adopt reconnects to a sandbox's running QEMU and guest agent.
func (d *Driver) adopt(ctx context.Context, id string) (*vm, error) {
	dir := filepath.Join(d.cfg.StateDir, id)
	v := &vm{id: id, dir: dir, log: d.log.With("sandbox", id)}
	if err := v.loadConfig(); err != nil {
		return nil, err
	}
	pid, err := v.readPid()
	if err != nil {
		return nil, fmt.Errorf("never started or no pid file: %w", err)
	}
	if !alive(pid) || !ourQEMU(pid, id, dir) {
		return nil, fmt.Errorf("qemu pid %d is gone", pid)
	}
	v.pid = pid
	ctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	q, err := qmp.Dial(ctx, v.path("qmp.sock"))
	if err != nil {
		return nil, err
	}
	v.qmp = q
	if con, err := startConsole(ctx, v, nil, d.cfg.ConsoleMaxBytes); err != nil {
		v.log.Warn("adopt: no console", "err", err) // older QEMU with a file console
	} else {
		v.console = con
	}
	ret, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		v.disconnect()
		return nil, err
	}
	var status struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(ret, &status); err != nil {
		v.disconnect()
		return nil, fmt.Errorf("query-status: %w", err)
	}
	v.state = tartarus.InstancePaused
	if status.Running {
		if err := d.connectGuest(ctx, v, d.cfg.BootTimeout); err != nil {
			v.disconnect()
			return nil, err
		}
		v.state = tartarus.InstanceRunning
	}
	v.startedAt = v.conf.StartedAt
	v.lastCall = d.clock.Now()
	d.mu.Lock()
	d.vms[id] = v
	d.mu.Unlock()
	v.log.Info("adopted", "pid", pid, "state", v.state)
	return v, nil
}
