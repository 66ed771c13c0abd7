//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
)

// bootConfig is what the kernel command line says about the guest.
type bootConfig struct {
	Root      string // block device of the root file system
	FSType    string
	RootFlags string // file-system specific mount options
	Hostname  string
	Debug     bool
	Net       *netConfig // nil: the sandbox has no network (only lo)
	NetErr    error      // a tartarus.net value that did not parse
}

// parseCmdline reads the tartarus.* parameters of a kernel command line.
func parseCmdline(s string) bootConfig {
	c := bootConfig{Root: "/dev/vda", FSType: "ext4", Hostname: "tartarus"}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "tartarus.root":
			if v != "" {
				c.Root = v
			}
		case "tartarus.rootfstype":
			if v != "" {
				c.FSType = v
			}
		case "tartarus.rootflags":
			c.RootFlags = v
		case "tartarus.hostname":
			if v != "" {
				c.Hostname = v
			}
		case "tartarus.debug":
			c.Debug = v == "" || v == "1" || v == "true"
		case "tartarus.net":
			if n, err := parseNet(v); err != nil {
				c.NetErr = err
			} else {
				c.Net = &n
			}
		}
	}
	return c
}

// rootWait bounds the wait for the root block device to appear.
const rootWait = 10 * time.Second

// runInit is PID 1: boot, then serve the host forever.
func runInit() {
	started := time.Now()
	// The kernel delivers to PID 1 only signals it handles, and Go's
	// handlers exit on most of them, so a stray `kill 1` in the sandbox
	// would panic the kernel. Catch and drop them rather than ignore them:
	// an ignored signal stays ignored across exec, and then no command in
	// the sandbox could be stopped with SIGTERM (or see SIGPIPE). SIGCHLD
	// is the reaper's.
	dropped := make(chan os.Signal, 16)
	signal.Notify(dropped, unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGTERM, unix.SIGUSR1,
		unix.SIGUSR2, unix.SIGPIPE, unix.SIGALRM, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU)
	go func() {
		for range dropped {
		}
	}()
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

	// /dev first: the console lives there.
	devErr := mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755")
	// Never write the console synchronously: after a snapshot restore the
	// serial port can stall (its transmit interrupt lost), and a blocked log
	// call would hang the agent.
	console := newDropWriter(openConsole(), 256)
	level := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: level, ReplaceAttr: uptimeAttr}))
	log = log.With("component", "tartarus-guest")

	b := &booter{log: log, started: started}
	if devErr != nil {
		b.fail(devErr)
	}
	cfg, initramfs := b.run(level)

	reaper := agent.NewReaper(log)
	a := agent.New(agent.Options{
		Logger:      log,
		SetClock:    true,
		SeedRNG:     true,
		SetHostname: true,
		Reaper:      reaper,
		BootError:   b.errText(),
		OnSync:      cfg.Net.check,
	})
	log.Info("boot done", "ms", ms(time.Since(started)), "steps", b.steps.String(),
		"kernel_uptime_s", fmt.Sprintf("%.3f", uptime().Seconds()), "hostname", cfg.Hostname, "error", b.errText())

	go freeInitramfs(initramfs, log)
	servePort(context.Background(), a, log, func() (string, error) { return findVirtioPort(portName) })
	for {
		time.Sleep(time.Hour) // unreachable; PID 1 must never return
	}
}

// booter runs the boot steps, recording their times and the first error.
type booter struct {
	log     *slog.Logger
	started time.Time
	last    time.Time
	steps   strings.Builder
	errs    []error
}

func (b *booter) fail(err error) {
	b.log.Error("boot step failed", "err", err)
	b.errs = append(b.errs, err)
}

func (b *booter) errText() string {
	if len(b.errs) == 0 {
		return ""
	}
	return errors.Join(b.errs...).Error()
}

// step records how long the step that just ended took.
func (b *booter) step(name string) {
	now := time.Now()
	if b.last.IsZero() {
		b.last = b.started
	}
	if b.steps.Len() > 0 {
		b.steps.WriteByte(',')
	}
	fmt.Fprintf(&b.steps, "%s:%.1fms", name, float64(now.Sub(b.last).Microseconds())/1000)
	b.last = now
}

// run mounts the initramfs's pseudo file systems, loads modules, mounts
// the root file system and switches to it. Failures are recorded and the
// boot goes on as far as it can: the host learns of them through Info.
func (b *booter) run(level *slog.LevelVar) (bootConfig, *os.Root) {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		if err := mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			b.fail(err)
		}
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		b.fail(fmt.Errorf("read kernel command line: %w", err))
	}
	cfg := parseCmdline(string(raw))
	if cfg.Debug {
		level.Set(slog.LevelDebug)
	}
	b.step("mounts")

	n, err := loadModules("/modules", b.log)
	if err != nil {
		b.fail(err)
	}
	b.step(fmt.Sprintf("modules(%d)", n))

	var initramfs *os.Root
	if err := waitFor(cfg.Root, rootWait); err != nil {
		b.fail(err)
	} else {
		b.step("rootdev")
		initramfs, err = switchRoot(cfg, b.step)
		if err != nil {
			b.fail(err)
		}
		b.step("pivot")
	}
	// Even a guest that could not switch root gets its name and lo.
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		b.fail(fmt.Errorf("set hostname: %w", err))
	}
	if err := loopbackUp(); err != nil {
		b.log.Warn("loopback not up", "err", err) // optional
	}
	if cfg.NetErr != nil {
		b.fail(cfg.NetErr)
	}
	if cfg.Net != nil {
		if err := cfg.Net.apply(); err != nil {
			b.fail(err)
		}
	}
	b.step("net")
	return cfg, initramfs
}

// mount mounts fstype on target, creating target; an existing mount there
// is fine.
func mount(src, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	if err := unix.Mount(src, target, fstype, flags, data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// openConsole returns /dev/console, also as our stdin/stdout/stderr, or
// stderr as the kernel gave it if there is no console.
func openConsole() io.Writer {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return os.Stderr
	}
	for _, fd := range []int{1, 2} {
		_ = unix.Dup3(int(f.Fd()), fd, 0)
	}
	if null, err := os.Open("/dev/null"); err == nil {
		_ = unix.Dup3(int(null.Fd()), 0, 0)
		null.Close()
	}
	return f
}

// uptimeAttr stamps log lines with the kernel's uptime, as dmesg does,
// instead of a wall clock the host has not set yet.
func uptimeAttr(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.String("t", fmt.Sprintf("%.6f", uptime().Seconds()))
	}
	return a
}

func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// loadModules loads the modules listed in dir/load, one file name per line
// in load order. Modules already loaded (or built in) are fine. It returns
// how many it loaded and every failure.
func loadModules(dir string, log *slog.Logger) (int, error) {
	f, err := os.Open(filepath.Join(dir, "load"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // a kernel with everything built in
	}
	if err != nil {
		return 0, fmt.Errorf("modules: %w", err)
	}
	defer f.Close()
	var errs []error
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.HasPrefix(name, "#") {
			continue
		}
		start := time.Now()
		if err := loadModule(filepath.Join(dir, filepath.Base(name))); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
		log.Debug("module loaded", "name", name, "ms", ms(time.Since(start)))
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("modules: read list: %w", err))
	}
	return n, errors.Join(errs...)
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// waitFor waits for path to exist.
func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within %v", path, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// switchRoot mounts the root file system on /newroot, moves /dev, /proc
// and /sys into it, makes /newroot the root and mounts the rest (devpts,
// /dev/shm, /tmp, /run). It returns a handle on the old initramfs root for
// freeInitramfs.
func switchRoot(cfg bootConfig, step func(string)) (*os.Root, error) {
	const newRoot = "/newroot"
	if err := mount(cfg.Root, newRoot, cfg.FSType, 0, cfg.RootFlags); err != nil {
		return nil, fmt.Errorf("mount root: %w", err)
	}
	step("mountroot")
	initramfs := openInitramfs()
	fail := func(err error) (*os.Root, error) {
		if initramfs != nil {
			initramfs.Close()
		}
		return nil, fmt.Errorf("switch root: %w", err)
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		dst := newRoot + m
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fail(err)
		}
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			return fail(fmt.Errorf("move %s: %w", m, err))
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fail(err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fail(fmt.Errorf("move %s to /: %w", newRoot, err))
	}
	if err := unix.Chroot("."); err != nil {
		return fail(fmt.Errorf("chroot: %w", err))
	}
	if err := unix.Chdir("/"); err != nil {
		return fail(err)
	}
	var errs []error
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		if err := mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, err)
		}
	}
	for link, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, err)
		}
	}
	// The switch itself worked: the initramfs may be freed even if a
	// secondary mount failed.
	return initramfs, errors.Join(errs...)
}

// openInitramfs returns the initramfs root, to free after the switch, or
// nil when / is not a ramfs or tmpfs (never delete a real disk).
func openInitramfs() *os.Root {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil || (st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC) {
		return nil
	}
	r, err := os.OpenRoot("/")
	if err != nil {
		return nil
	}
	return r
}

// freeInitramfs deletes the initramfs's files (the agent binary, modules)
// through a handle opened before the switch, so their memory returns to the
// guest, as switch_root does. It runs after boot, off the critical path.
func freeInitramfs(r *os.Root, log *slog.Logger) {
	if r == nil {
		return
	}
	defer r.Close()
	start := time.Now()
	d, err := r.Open(".")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if err := r.RemoveAll(n); err != nil {
			log.Debug("free initramfs", "name", n, "err", err)
		}
	}
	log.Debug("initramfs freed", "ms", ms(time.Since(start)))
}

// loopbackUp sets the lo interface up.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// dropWriter hands writes to a goroutine and drops them when it falls
// behind, so a stalled console never blocks the caller.
type dropWriter struct {
	ch      chan []byte
	dropped atomic.Int64 // lines dropped since start; the writer reports the growth
}

func newDropWriter(w io.Writer, queue int) *dropWriter {
	d := &dropWriter{ch: make(chan []byte, queue)}
	go func() {
		var reported int64
		for b := range d.ch {
			if n := d.dropped.Load(); n > reported {
				fmt.Fprintf(w, "tartarus-guest: %d log lines dropped\n", n-reported)
				reported = n
			}
			_, _ = w.Write(b)
		}
	}()
	return d
}

func (d *dropWriter) Write(p []byte) (int, error) {
	select {
	case d.ch <- bytes.Clone(p):
	default:
		d.dropped.Add(1)
	}
	return len(p), nil
}
