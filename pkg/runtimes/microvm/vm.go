package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm/qmp"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// guestConn is what the driver needs from the guest agent's client
// (pkg/guest). It is an interface so that the driver's own unit tests can
// stand in for a guest.
type guestConn interface {
	Sync(ctx context.Context, now time.Time, entropy []byte) error
	SyncHostname(ctx context.Context, now time.Time, entropy []byte, hostname string) error
	Info() guest.Info
	Exec(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error)
	SignalAll(ctx context.Context, sig syscall.Signal) error
	SignalProcesses(ctx context.Context, sig syscall.Signal) (int, error)
	ReadFile(ctx context.Context, path string) (io.ReadCloser, error)
	WriteFile(ctx context.Context, path string, mode os.FileMode, r io.Reader) error
	ListFiles(ctx context.Context, path string) ([]tartarus.FileInfo, error)
	Stats(ctx context.Context) (*tartarus.Stats, error)
	Close() error
	Done() <-chan struct{}
}

// guestDialer meets the guest agent on conn (the virtio-serial socket),
// syncing its clock (and hostname) as sync says.
type guestDialer func(ctx context.Context, conn io.ReadWriteCloser, log *slog.Logger, sync guestSync) (guestConn, error)

// guestSync is what the first sync of a guest session sets: the clock, and
// the hostname unless empty (a restored guest carries its snapshot's).
type guestSync struct {
	now      time.Time
	hostname string
}

// vmConfig is a sandbox's config.json: what Recover needs to adopt it.
type vmConfig struct {
	ID        string            `json:"id"`
	Template  string            `json:"template"`
	Image     tartarus.Image    `json:"image"`
	CPUs      int               `json:"cpus"`
	MemoryMB  int               `json:"memory_mb"`
	Env       map[string]string `json:"env,omitempty"`
	DiskIOPS  int               `json:"disk_iops,omitempty"`
	Accel     string            `json:"accel"`
	CreatedAt time.Time         `json:"created_at"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	// Jailed sandboxes keep QEMU's files in <dir>/jail (see jail.go). It
	// is the layout, set once a jail has run the sandbox; with the jail
	// off later, QEMU runs unconfined in the same layout.
	Jailed bool `json:"jailed,omitempty"`
	// Network is the sandbox's network as created (nil: only lo).
	Network *tartarus.NetworkSpec `json:"network,omitempty"`
	// StrictSeccomp jails QEMU under the stricter filter (jail.go); it is
	// what the VMConfig of the last create or restore said.
	StrictSeccomp bool `json:"strict_seccomp,omitempty"`
	// MemoryDigest, in a snapshot's vm.json only, is the SHA-256 of
	// its memory file (mapped.go); empty when the stream holds the RAM.
	MemoryDigest string `json:"memory_digest,omitempty"`
}

// vm is one sandbox.
type vm struct {
	id   string
	dir  string
	log  *slog.Logger
	conf vmConfig

	// op serialises lifecycle operations (start, pause, resume, destroy).
	op sync.Mutex

	mu        sync.Mutex
	state     tartarus.InstanceState
	pid       int
	exited    chan struct{} // closed when a QEMU this process started exits; nil when adopted
	qmp       *qmp.Client
	console   *consoleReader
	guest     guestConn
	startedAt time.Time
	busy      int
	lastCall  time.Time
	guestLast time.Time
	// calls counts calls into the guest other than stats; stats is the
	// last stats answer (see guestStats).
	calls int
	stats statsCache
	// asking is the stats question to the guest under way, if any.
	asking *statsAsk
	// ram is the memory file of a sandbox this driver booted with mapped
	// memory (QEMU maps it shared); nil otherwise.
	ram *os.File
}

func (v *vm) path(name string) string {
	if v.conf.Jailed && slices.Contains(qemuFiles, name) {
		return filepath.Join(v.jailDir(), name)
	}
	return filepath.Join(v.dir, name)
}

func (v *vm) saveConfig() error {
	b, err := json.MarshalIndent(v.conf, "", "  ")
	if err != nil {
		return err
	}
	tmp := v.path("config.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, v.path("config.json"))
}

func (v *vm) loadConfig() error {
	b, err := os.ReadFile(v.path("config.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &v.conf); err != nil {
		return fmt.Errorf("config.json: %w", err)
	}
	if v.conf.ID != v.id {
		return fmt.Errorf("config.json names %q, not %q", v.conf.ID, v.id)
	}
	return nil
}

func (v *vm) readPid() (int, error) {
	b, err := os.ReadFile(v.path("qemu.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (v *vm) getState() tartarus.InstanceState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state
}

func (v *vm) setState(s tartarus.InstanceState) {
	v.mu.Lock()
	v.state = s
	v.mu.Unlock()
}

func (v *vm) touch(now time.Time) {
	v.mu.Lock()
	v.lastCall = now
	v.mu.Unlock()
}

func (v *vm) sawGuestActivity(t time.Time) {
	v.mu.Lock()
	if t.After(v.guestLast) {
		v.guestLast = t
	}
	v.mu.Unlock()
}

// refreshActivity asks a running guest when it last did something,
// briefly; a quiet guest's last answer stands (see guestStats), so a List
// does not wake every sandbox.
func (d *Driver) refreshActivity(ctx context.Context, v *vm) {
	v.mu.Lock()
	g, running := v.guest, v.state == tartarus.InstanceRunning
	v.mu.Unlock()
	if !running || g == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, _ = d.guestStats(ctx, v, g, 0) // it records the guest's activity
}

// crashed reports a sandbox that should run but whose QEMU is gone (a guest
// panic ends QEMU: -no-reboot with panic=-1).
func (v *vm) crashed() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	up := v.state == tartarus.InstanceRunning || v.state == tartarus.InstancePaused
	return up && v.pid > 0 && !alive(v.pid)
}

func (v *vm) instance() *tartarus.Instance {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := &tartarus.Instance{
		ID: v.id, Template: v.conf.Template, State: v.state, CPUs: v.conf.CPUs, MemoryMB: v.conf.MemoryMB,
		Pid: v.pid, StartedAt: v.startedAt,
	}
	if (in.State == tartarus.InstanceRunning || in.State == tartarus.InstancePaused) && v.pid > 0 && !alive(v.pid) {
		in.State = tartarus.InstanceStopped
	}
	if v.busy == 0 {
		idle := v.lastCall
		if v.guestLast.After(idle) {
			idle = v.guestLast
		}
		in.IdleSince = &idle
	}
	return in
}

// consoleTail returns the last n lines of the guest's serial console and QEMU's own messages.
func (v *vm) consoleTail(n int) string {
	var parts []string
	for _, f := range []string{"console.log", "qemu.log"} {
		// Only the tail: the guest writes the console, and it may be large.
		b, err := readTail(v.path(f), 64<<10)
		if len(b) < 64<<10 {
			// Just rotated: the older file holds the lines before.
			if old, oerr := readTail(v.path(f+".1"), 64<<10-int64(len(b))); oerr == nil {
				b, err = append(old, b...), nil
			}
		}
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		parts = append(parts, "["+f+"]\n"+strings.Join(lines, "\n"))
	}
	if len(parts) == 0 {
		return "(empty)"
	}
	return strings.Join(parts, "\n")
}

// qemuName is the -name QEMU runs under; Recover recognises its processes by it.
func qemuName(id string) string { return "tartarus-" + id }

// qemuArgs builds the QEMU command line for one boot.
func (d *Driver) qemuArgs(v *vm, accel string) []string {
	c := v.conf
	cmdline := []string{
		"console=ttyS0", fmt.Sprintf("tsc_early_khz=%d", d.tscKHz), "reboot=k", "panic=-1", "quiet",
		// The TSC as the clocksource, trusted: under a loaded host the
		// jiffies watchdog (microvm has no HPET or ACPI PM timer) marked
		// it unstable, the guest fell back to refined-jiffies, which is
		// not good enough for high resolution timers, and kept its
		// periodic tick (see the -cpu comment below).
		"tsc=reliable",
		"tartarus.root=/dev/vda", "tartarus.rootfstype=ext4", "tartarus.hostname=" + c.ID,
	}
	netArgs, netKernelArg, _ := d.netArgs(c.ID)
	if netKernelArg != "" {
		cmdline = append(cmdline, netKernelArg)
	}
	if accel != "kvm" {
		// QEMU 7.2's TCG finds translated code by virtual address, so a
		// process whose libraries land somewhere new (ASLR) is translated
		// afresh: a dynamically linked /usr/bin/true took 120-140 ms in
		// the guest with ASLR and 18-29 ms without. The sandbox's walls
		// are the VM's, not its address layout.
		cmdline = append(cmdline, "norandmaps")
	}
	cmdline = append(cmdline, d.cfg.KernelArgs...)
	drive := "id=root,file=" + v.path("overlay.qcow2") + ",format=qcow2,if=none,discard=unmap"
	if c.DiskIOPS > 0 {
		// QEMU's block throttling: the resource class's disk IOPS.
		drive += ",throttling.iops-total=" + strconv.Itoa(c.DiskIOPS)
	}
	args := []string{
		"-name", qemuName(c.ID),
		"-machine", "microvm",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-monitor", "none",
		"-m", strconv.Itoa(c.MemoryMB),
		"-smp", strconv.Itoa(c.CPUs),
		"-kernel", c.Image.Kernel,
		"-initrd", c.Image.Initrd,
		"-append", strings.Join(cmdline, " "),
		"-chardev", "socket,id=console,path=" + v.path("console.sock") + ",server=on,wait=off",
		"-serial", "chardev:console",
		"-drive", drive,
		"-device", "virtio-blk-device,drive=root",
		"-chardev", "socket,id=agent,path=" + v.path("agent.sock") + ",server=on,wait=off",
		"-device", "virtio-serial-device,max_ports=2",
		"-device", "virtserialport,chardev=agent,name=tartarus",
		"-qmp", "unix:" + v.path("qmp.sock") + ",server=on,wait=off",
	}
	if d.cfg.Jail != nil {
		args = append(args, "-sandbox", qemuSandbox)
	} else {
		args = append(args, "-pidfile", v.path("qemu.pid"))
	}
	args = append(args, netArgs...)
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		// ARAT (the local APIC timer keeps running in deep idle states):
		// without it the guest's only tick device needs a broadcast
		// device, which microvm lacks, so the guest never goes tickless
		// and TCG emulates its 250 Hz tick in every idle sandbox.
		args = append(args, "-accel", fmt.Sprintf("tcg,tb-size=%d", d.cfg.TBSizeMB), "-cpu", "qemu64,+arat")
	}
	return args
}

// boot starts QEMU once and waits up to timeout for the guest agent.
func (d *Driver) boot(ctx context.Context, v *vm, accel string, timeout time.Duration) error {
	t0 := time.Now()
	bootCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var files []*os.File
	var extra []string
	if !d.cfg.CopyMemory {
		ram, err := newRAMFile(v.id, int64(v.conf.MemoryMB)<<20)
		if err != nil {
			return err
		}
		v.mu.Lock()
		old := v.ram
		v.ram = ram // stop closes it
		v.mu.Unlock()
		if old != nil {
			old.Close() // a failed attempt's
		}
		files, extra = []*os.File{ram}, ramArgs(3, v.conf.MemoryMB, true)
	}
	if err := d.launch(bootCtx, v, accel, files, extra...); err != nil {
		return timeoutErr(ctx, err, timeout)
	}
	tQMP := time.Since(t0)
	if err := d.connectGuest(bootCtx, v, timeout); err != nil {
		v.stop(context.WithoutCancel(ctx))
		return timeoutErr(ctx, err, timeout)
	}
	if err := d.markRunning(v, accel); err != nil {
		v.stop(context.WithoutCancel(ctx))
		return err
	}
	v.log.Info("booted", "pid", v.pid, "accel", accel, "qmp_ms", tQMP.Milliseconds(), "guest_ms", time.Since(t0).Milliseconds())
	return nil
}

// timeoutErr turns a boot deadline (not the caller's) into ErrTimeout.
func timeoutErr(ctx context.Context, err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return tartarus.Errorf(tartarus.ErrTimeout, "guest agent did not answer within %s", timeout)
	}
	return err
}

// launch starts QEMU with the sandbox's arguments plus extra and connects
// to its QMP socket; files become QEMU's fds 3, 4, …. On failure QEMU is
// stopped again.
func (d *Driver) launch(ctx context.Context, v *vm, accel string, files []*os.File, extra ...string) error {
	for _, f := range []string{"qmp.sock", "agent.sock", "console.sock", "qemu.pid"} {
		_ = os.Remove(v.path(f))
	}
	logf, logDone, err := startQEMULog(v.path("qemu.log"), d.cfg.ConsoleMaxBytes, v.log)
	if err != nil {
		return err
	}
	var cmd *exec.Cmd
	if d.cfg.Jail != nil {
		cmd, err = d.startJailed(ctx, v, append(d.qemuArgs(v, accel), extra...), files, logf)
	} else {
		cmd = exec.Command(d.cfg.QEMU, append(d.qemuArgs(v, accel), extra...)...)
		cmd.Stdout = logf
		cmd.Stderr = logf
		cmd.ExtraFiles = files
		// Its own session: QEMU outlives this process and its terminal.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		_, _, nsPath := d.netArgs(v.conf.ID)
		err = startIn(nsPath, cmd)
	}
	logf.Close()
	if err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // reap: no zombies
		// QEMU's last words reach qemu.log before anyone reads its tail.
		select {
		case <-logDone:
		case <-time.After(time.Second):
		}
		close(exited)
	}()
	v.mu.Lock()
	v.pid, v.exited = cmd.Process.Pid, exited
	v.mu.Unlock()
	q, err := dialWhenReady(ctx, v.path("qmp.sock"), exited, func(ctx context.Context, path string) (*qmp.Client, error) {
		return qmp.Dial(ctx, path)
	})
	if err != nil {
		v.stop(context.WithoutCancel(ctx))
		return fmt.Errorf("qmp: %w", err)
	}
	con, err := startConsole(ctx, v, exited, d.cfg.ConsoleMaxBytes)
	if err != nil {
		q.Close()
		v.stop(context.WithoutCancel(ctx))
		return err
	}
	v.mu.Lock()
	v.qmp, v.console = q, con
	v.mu.Unlock()
	return nil
}

// markRunning records a sandbox whose guest answered.
func (d *Driver) markRunning(v *vm, accel string) error {
	now := d.clock.Now()
	v.mu.Lock()
	v.state = tartarus.InstanceRunning
	v.startedAt = now
	v.mu.Unlock()
	v.conf.StartedAt = now.UTC()
	v.conf.Accel = accel
	return v.saveConfig()
}

// dialWhenReady retries dial until the socket QEMU creates accepts, QEMU
// exits, or ctx ends. QEMU binds the socket before it listens, so a refused
// connection means "not yet" as much as a missing file does.
func dialWhenReady[T any](ctx context.Context, path string, exited <-chan struct{}, dial func(context.Context, string) (T, error)) (T, error) {
	var zero T
	delay := time.Millisecond
	for {
		if _, err := os.Stat(path); err == nil {
			c, err := dial(ctx, path)
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
				return c, err
			}
		}
		select {
		case <-exited:
			return zero, errors.New("qemu exited during start")
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Millisecond)
	}
}

// connectGuest opens the agent socket and runs the guest handshake.
func (d *Driver) connectGuest(ctx context.Context, v *vm, timeout time.Duration) error {
	return d.connectGuestSync(ctx, v, timeout, guestSync{now: time.Now()})
}

// connectGuestSync is connectGuest with the session's first sync as given.
func (d *Driver) connectGuestSync(ctx context.Context, v *vm, timeout time.Duration, sync guestSync) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var nd net.Dialer
	conn, err := dialWhenReady(ctx, v.path("agent.sock"), v.exited, func(ctx context.Context, path string) (net.Conn, error) {
		return nd.DialContext(ctx, "unix", path)
	})
	if err != nil {
		return fmt.Errorf("guest agent socket: %w", err)
	}
	g, err := d.dial(ctx, conn, v.log, sync)
	if err != nil {
		conn.Close()
		return fmt.Errorf("guest agent: %w", err)
	}
	v.mu.Lock()
	v.guest = g
	v.stats = statsCache{} // a new session: ask it afresh
	v.mu.Unlock()
	return nil
}

// stop ends QEMU: QMP quit, then SIGKILL, and waits until it is gone.
func (v *vm) stop(ctx context.Context) {
	v.mu.Lock()
	q, g, pid, exited, con, ram := v.qmp, v.guest, v.pid, v.exited, v.console, v.ram
	v.qmp, v.guest, v.console, v.ram = nil, nil, nil, nil
	defer con.close() // after QEMU is gone: its last words are logged
	if ram != nil {
		defer ram.Close() // after QEMU is gone, so the memory goes with it
	}
	v.state = tartarus.InstanceStopped
	v.mu.Unlock()
	if g != nil {
		_ = g.Close()
	}
	if q != nil {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		_, _ = q.Execute(qctx, "quit", nil)
		cancel()
		q.Close()
	}
	gone := func(timeout time.Duration) bool {
		if exited != nil {
			select {
			case <-exited:
				return true
			case <-time.After(timeout):
				return false
			}
		}
		return waitGone(pid, timeout)
	}
	// Signal only our QEMU, never a process that reused its pid.
	kill := func(sig syscall.Signal) {
		if exited != nil {
			select {
			case <-exited:
				return
			default:
			}
		} else if !ourQEMU(pid, v.id, v.dir) {
			return
		}
		_ = syscall.Kill(pid, sig)
	}
	if pid <= 0 {
		return
	}
	grace := 2 * time.Second
	if q == nil {
		// No monitor to ask: QEMU treats SIGTERM as a request to quit.
		kill(syscall.SIGTERM)
		grace = 500 * time.Millisecond
	}
	if !gone(grace) {
		v.log.Warn("qemu did not quit; killing it", "pid", pid)
		kill(syscall.SIGKILL)
		gone(5 * time.Second)
	}
}

// disconnect closes the driver's connections and leaves QEMU running.
func (v *vm) disconnect() {
	v.mu.Lock()
	q, g, con, ram := v.qmp, v.guest, v.console, v.ram
	v.qmp, v.guest, v.console, v.ram = nil, nil, nil, nil
	v.mu.Unlock()
	con.close()
	if ram != nil {
		_ = ram.Close() // QEMU keeps its own mapping
	}
	if g != nil {
		_ = g.Close()
	}
	if q != nil {
		_ = q.Close()
	}
}
