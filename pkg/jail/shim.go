package jail

import (
	"encoding/json"

	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The shim recognises itself by its argv[0] and its spec in the environment.
const (
	shimArg0     = "tartarus-jail"
	shimEnv      = "TARTARUS_JAIL_SPEC"
	probeArg0    = "tartarus-jail-probe"
	probeEnv     = "TARTARUS_JAIL_PROBE"
	denySpawnEnv = "TARTARUS_JAIL_DENY_SPAWN"
)

// shimSpec is what Start hands the shim (as JSON in its environment).
type shimSpec struct {
	UID, GID     int
	CgroupProcs  []string
	Root         string
	Mounts       []shimMount
	Devices      []shimDevice
	NetNS        string
	NoFile       int
	NProc        int
	MaxFileBytes int64
	Path         string
	Args         []string
	Env          []string
	Dir          string
	Probe        string
	DenySpawn    bool
	Strict       bool
	StatusFD     int
}

type shimMount struct {
	Source, Target string
	Writable, Dir  bool
}

type shimDevice struct {
	Path  string
	Rdev  uint64
	Mode  uint32
	Owned bool
}

// RunShimIfAsked turns this process into the jail shim when Jail.Start
// started it, and then never returns. Call it first thing in main (and in
// TestMain of tests that start jails). probes are the in-process programs
// a Spec.Probe may name; main passes nil.
func RunShimIfAsked(probes map[string]func() int) {
	if len(os.Args) == 1 && os.Args[0] == probeArg0 {
		runProbe(probes)
	}
	if len(os.Args) == 0 || os.Args[0] != shimArg0 {
		return
	}
	raw, ok := os.LookupEnv(shimEnv)
	if !ok {
		return
	}
	var s shimSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		fmt.Fprintf(os.Stderr, "tartarus-jail: bad spec: %v\n", err)
		os.Exit(120)
	}
	// Every step below works on this thread's credentials and the execve
	// that ends it happens from this thread.
	runtime.LockOSThread()
	status := os.NewFile(uintptr(s.StatusFD), "status")
	syscall.CloseOnExec(s.StatusFD)
	fail := func(err error) {
		fmt.Fprintf(status, "%v\n", err)
		fmt.Fprintf(os.Stderr, "tartarus-jail: %v\n", err)
		os.Exit(121)
	}
	if err := enter(&s); err != nil {
		fail(err)
	}
	// Last, so that the shim's own steps (mounts, setns) are done; the
	// filter stays across the execve and QEMU stacks its own on top.
	if s.Strict {
		if err := installFilter(strictFilter()); err != nil {
			fail(fmt.Errorf("strict seccomp filter: %w", err))
		}
	}
	if s.Probe != "" {
		// A probe is this binary again, execve'd from this thread exactly as
		// QEMU would be, so that every thread of it has the jail's identity.
		if probes[s.Probe] == nil {
			fail(fmt.Errorf("no probe %q", s.Probe))
		}
		env := append([]string{probeEnv + "=" + s.Probe}, s.Env...)
		if s.DenySpawn {
			env = append(env, denySpawnEnv+"=1")
		}
		err := unix.Exec("/proc/self/exe", []string{probeArg0}, env)
		fail(fmt.Errorf("execve probe: %w", err))
	}
	err := unix.Exec(s.Path, s.Args, s.Env)
	fail(fmt.Errorf("execve %s: %w", s.Path, err))
}

// runProbe is the probe's side: already jailed, it adds the spawn filter
// when asked and runs the probe.
func runProbe(probes map[string]func() int) {
	probe := probes[os.Getenv(probeEnv)]
	if probe == nil {
		fmt.Fprintf(os.Stderr, "tartarus-jail: no probe %q\n", os.Getenv(probeEnv))
		os.Exit(122)
	}
	if os.Getenv(denySpawnEnv) == "1" {
		if err := denySpawn(); err != nil {
			fmt.Fprintf(os.Stderr, "tartarus-jail: seccomp: %v\n", err)
			os.Exit(122)
		}
	}
	_ = os.Unsetenv(probeEnv)
	_ = os.Unsetenv(denySpawnEnv)
	os.Exit(probe())
}

// enter confines this process; the order matters (each step needs the
// privileges the later ones take away).
func enter(s *shimSpec) error {
	// 1. The cgroup first, so that everything after is counted.
	for _, p := range s.CgroupProcs {
		if err := os.WriteFile(p, []byte("0"), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", p, err)
		}
	}
	// 2. The network namespace the networking hands in (else the new empty one).
	if s.NetNS != "" {
		fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", s.NetNS, err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("join netns %s: %w", s.NetNS, err)
		}
	}
	capLast, err := lastCap()
	if err != nil {
		return err
	}
	// 3. The root.
	if err := buildRoot(s); err != nil {
		return err
	}
	_ = unix.Sethostname([]byte("tartarus"))
	// 4. Limits (process-wide).
	for _, rl := range []struct {
		res int
		val uint64
	}{
		{unix.RLIMIT_NOFILE, uint64(s.NoFile)},
		{unix.RLIMIT_CORE, 0},
		{unix.RLIMIT_FSIZE, uint64(s.MaxFileBytes)},
		{unix.RLIMIT_NPROC, uint64(s.NProc)},
	} {
		if err := unix.Setrlimit(rl.res, &unix.Rlimit{Cur: rl.val, Max: rl.val}); err != nil {
			return fmt.Errorf("setrlimit %d: %w", rl.res, err)
		}
	}
	// 5. Capabilities: the bounding set while we still may (CAP_SETPCAP),
	// then the ids (which clears permitted and effective), then the rest.
	for c := 0; c <= capLast; c++ {
		if err := allThreadsPrctl(unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := allThreadsPrctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(s.GID, s.GID, s.GID); err != nil {
		return fmt.Errorf("setgid %d: %w", s.GID, err)
	}
	if err := syscall.Setresuid(s.UID, s.UID, s.UID); err != nil {
		return fmt.Errorf("setuid %d: %w", s.UID, err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno == syscall.ENOTSUP {
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return fmt.Errorf("capset: %w", err)
		}
	} else if errno != 0 {
		return fmt.Errorf("capset: %w", errno)
	}
	if err := allThreadsPrctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if err := os.Chdir(s.Dir); err != nil {
		return fmt.Errorf("chdir %s: %w", s.Dir, err)
	}
	return nil
}

// allThreadsPrctl runs prctl on every thread of this process where the Go
// runtime can (no cgo), else on this thread, which is the one that execve's.
func allThreadsPrctl(option int, arg2, arg3 uintptr) error {
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, uintptr(option), arg2, arg3)
	if errno == syscall.ENOTSUP {
		return unix.Prctl(option, arg2, arg3, 0, 0)
	}
	if errno != 0 {
		return errno
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("cap_last_cap: %w", err)
	}
	return n, nil
}

// buildRoot mounts a small tmpfs over s.Root, fills it with the binds,
// devices, /proc and the host's /usr (read-only; QEMU and its libraries and
// firmware live there), and pivots into it.
func buildRoot(s *shimSpec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	r := s.Root
	if err := unix.Mount("tartarus-jail", r, "tmpfs", unix.MS_NOSUID, "size=1m,nr_inodes=1024,mode=0755"); err != nil {
		return fmt.Errorf("mount root tmpfs on %s: %w", r, err)
	}
	mounts := append([]shimMount{}, s.Mounts...)
	for _, sys := range []string{"/usr", "/lib", "/lib64", "/bin"} {
		fi, err := os.Lstat(sys)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0: // merged /usr: /lib -> usr/lib
			dest, err := os.Readlink(sys)
			if err != nil {
				return err
			}
			if err := os.Symlink(dest, filepath.Join(r, sys)); err != nil {
				return fmt.Errorf("symlink %s: %w", sys, err)
			}
		case fi.IsDir():
			mounts = append(mounts, shimMount{Source: sys, Target: sys, Dir: true})
		}
	}
	if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
		mounts = append(mounts, shimMount{Source: "/etc/ld.so.cache", Target: "/etc/ld.so.cache"})
	}
	for _, m := range mounts {
		if err := bindMount(r, m); err != nil {
			return err
		}
	}
	for _, d := range s.Devices {
		p := filepath.Join(r, d.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := unix.Mknod(p, unix.S_IFCHR|d.Mode, int(d.Rdev)); err != nil {
			return fmt.Errorf("mknod %s: %w", d.Path, err)
		}
		if err := unix.Chmod(p, d.Mode); err != nil { // past the umask
			return fmt.Errorf("chmod %s: %w", d.Path, err)
		}
		if d.Owned {
			if err := os.Chown(p, s.UID, s.GID); err != nil {
				return fmt.Errorf("chown %s: %w", d.Path, err)
			}
		}
	}
	// This process is pid 1 of a new pid namespace: its /proc shows only the jail.
	if err := os.MkdirAll(filepath.Join(r, "proc"), 0o755); err != nil {
		return err
	}
	if err := unix.Mount("proc", filepath.Join(r, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	old := filepath.Join(r, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(r, old); err != nil {
		return fmt.Errorf("pivot_root %s: %w", r, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	// Nothing in the root itself is writable; only Writable binds are.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("remount root read-only: %w", err)
	}
	return nil
}

// bindMount binds m.Source at m.Target under root, read-only unless
// Writable, never honouring set-uid bits or device nodes.
func bindMount(root string, m shimMount) error {
	p := filepath.Join(root, m.Target)
	if m.Dir {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := unix.Mount(m.Source, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", m.Source, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	if !m.Writable {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", p, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s: %w", m.Target, err)
	}
	return nil
}
