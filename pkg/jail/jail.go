// Package jail starts a process (QEMU, for the microvm runtime) confined to
// one sandbox: its own unprivileged uid and gid, new mount, pid, ipc, uts and
// network namespaces, a root directory holding only what it needs, no
// capabilities, no new privileges, rlimits and a cgroup with memory, CPU,
// pids and I/O limits.
//
// Threat model: under TCG a guest's code runs inside the QEMU process, so a
// guest that breaks QEMU (a device model bug, a TCG bug) holds whatever QEMU
// holds. The jail makes that as little as possible: no file of the host but
// the sandbox's own directory (writable), its image files and the host's
// /usr (read-only); no other sandbox's disk, sockets or processes; no
// privilege to regain (no capabilities, no_new_privs, and QEMU's own
// seccomp filter, -sandbox, which forbids spawning processes); and a cgroup
// so that it cannot take more memory, CPU or pids than its share.
//
// The mechanism is a re-exec shim, like Firecracker's jailer: Jail.Start
// runs the current binary (/proc/self/exe) as a small sub-command that
// joins the cgroup, builds the root, drops every privilege and then
// execve's the real program, which keeps the shim's pid. Every binary that
// uses Jail.Start must call RunShimIfAsked first thing in main (or in
// TestMain). Because the shim can run an in-process probe instead of
// execve, tests probe the walls with exactly the identity QEMU gets.
package jail

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Defaults. The uid range sits above systemd's container range
// (524288–1879048191, UIDS-GIDS.md) and far above the 100000+ blocks that
// /etc/subuid hands out, and below 2^31 so that no tool sees it negative.
const (
	DefaultUIDBase          = 1_900_000_000
	DefaultUIDCount         = 65536
	DefaultCgroupRoot       = "/sys/fs/cgroup"
	DefaultMemoryOverheadMB = 256 // QEMU itself: heap, TCG translation cache (32 MiB), device buffers, libraries
	DefaultPids             = 256 // QEMU's threads: vCPUs, main loop, RCU, up to 64 block I/O workers
	DefaultIOWeight         = 100
	DefaultNoFile           = 4096
	DefaultMaxFileMB        = 64 << 10
)

// Config configures a Jail.
type Config struct {
	// StateDir holds the uid allocations (StateDir/uids); required. It is
	// the node's state directory so that allocations survive restarts.
	StateDir string
	// UIDBase and UIDCount are the uid (and gid) range; zero means
	// DefaultUIDBase and DefaultUIDCount. Nodes sharing a host need
	// disjoint ranges.
	UIDBase, UIDCount int
	// CgroupRoot is where cgroups are mounted; empty means /sys/fs/cgroup.
	CgroupRoot string
	// CgroupParent is the cgroup directory (relative to each hierarchy)
	// under which every sandbox gets one; empty means
	// "tartarus/<8 hex digits of StateDir's hash>", so two nodes on one
	// host never share one.
	CgroupParent string
	// MemoryOverheadMB is added to the guest's memory for the cgroup's
	// memory limit; zero means DefaultMemoryOverheadMB.
	MemoryOverheadMB int
	// Pids caps the jail's processes and threads; zero means DefaultPids.
	Pids int
	// IOWeight is the cgroup's I/O weight (1–10000 in v2, 10–1000 in
	// v1); zero means DefaultIOWeight. Hosts without an I/O scheduler that
	// weighs have no weight file; then none is set.
	IOWeight int
	// NoFile is RLIMIT_NOFILE; zero means DefaultNoFile.
	NoFile int
}

// Validate reports every problem with the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	if c.StateDir == "" {
		errs = append(errs, errors.New("state dir is required (StateDir)"))
	}
	if c.UIDBase < 0 || c.UIDCount < 0 {
		errs = append(errs, errors.New("uid range must not be negative (UIDBase, UIDCount)"))
	}
	if c.UIDBase != 0 && c.UIDBase < 1000 {
		errs = append(errs, fmt.Errorf("uid base %d: must not overlap system users (at least 1000)", c.UIDBase))
	}
	if int64(c.UIDBase)+int64(c.UIDCount) > 1<<31-1 {
		errs = append(errs, fmt.Errorf("uid range %d+%d: must end below 2^31", c.UIDBase, c.UIDCount))
	}
	if c.MemoryOverheadMB < 0 || c.Pids < 0 || c.IOWeight < 0 || c.NoFile < 0 {
		errs = append(errs, errors.New("limits must not be negative (MemoryOverheadMB, Pids, IOWeight, NoFile)"))
	}
	if strings.Contains(c.CgroupParent, "..") {
		errs = append(errs, fmt.Errorf("cgroup parent %q: no '..'", c.CgroupParent))
	}
	if err := errors.Join(errs...); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "jail config: %v", err)
	}
	return nil
}

// Jail starts confined processes, one sandbox each.
type Jail struct {
	cfg  Config
	uids *uidAllocator
	cg   *cgroups

	// cgMu orders making a sandbox's cgroup against removing the empty
	// parent after the last one.
	cgMu sync.Mutex
}

// Info is what a jail shows operators (GET /v1/nodes).
type Info struct {
	UIDRange      string // "1900000000-1900065535"
	CgroupVersion string // "v1" or "v2"
	CgroupParent  string
}

// New checks that this host can jail (root, cgroups) and returns a Jail.
func New(cfg Config) (*Jail, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "jail: needs root (runs as uid %d)", os.Geteuid())
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = DefaultUIDBase
	}
	if cfg.UIDCount == 0 {
		cfg.UIDCount = DefaultUIDCount
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = DefaultCgroupRoot
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = stateDir
	if cfg.CgroupParent == "" {
		sum := sha256.Sum256([]byte(stateDir))
		cfg.CgroupParent = "tartarus/" + hex.EncodeToString(sum[:4])
	}
	if cfg.MemoryOverheadMB == 0 {
		cfg.MemoryOverheadMB = DefaultMemoryOverheadMB
	}
	if cfg.Pids == 0 {
		cfg.Pids = DefaultPids
	}
	if cfg.IOWeight == 0 {
		cfg.IOWeight = DefaultIOWeight
	}
	if cfg.NoFile == 0 {
		cfg.NoFile = DefaultNoFile
	}
	cg, err := detectCgroups(cfg.CgroupRoot, cfg.CgroupParent)
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "jail: %v", err)
	}
	uids, err := newUIDAllocator(filepath.Join(stateDir, "uids"), cfg.UIDBase, cfg.UIDCount)
	if err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	return &Jail{cfg: cfg, uids: uids, cg: cg}, nil
}

// Info describes the jail.
func (j *Jail) Info() Info {
	return Info{
		UIDRange:      fmt.Sprintf("%d-%d", j.cfg.UIDBase, j.cfg.UIDBase+j.cfg.UIDCount-1),
		CgroupVersion: j.cg.version,
		CgroupParent:  j.cg.parent,
	}
}

// UID returns the sandbox's uid (also its gid), allocating one if it has
// none. The caller makes the files the jailed process writes its own.
func (j *Jail) UID(id string) (int, error) { return j.uids.allocate(id) }

// Remove frees what the sandbox holds: its cgroup and its uid. Its jailed
// processes must be gone.
func (j *Jail) Remove(id string) error {
	err := errors.Join(j.cg.remove(id), j.uids.release(id))
	j.removeParentIfIdle()
	return err
}

// removeParentIfIdle removes the cgroup parent once no sandbox holds a
// uid here, so a node (or a test) leaves no empty cgroups behind.
func (j *Jail) removeParentIfIdle() {
	j.cgMu.Lock()
	defer j.cgMu.Unlock()
	if len(j.uids.ids()) == 0 {
		j.cg.removeParent()
	}
}

// Reconcile frees the uid and cgroup of every sandbox not in live: after
// a restart, a sandbox that is gone holds nothing.
func (j *Jail) Reconcile(live []string) error {
	keep := map[string]bool{}
	for _, id := range live {
		keep[id] = true
	}
	var errs []error
	for _, id := range j.uids.ids() {
		if !keep[id] {
			errs = append(errs, j.uids.release(id))
		}
	}
	for _, id := range j.cg.names() {
		if !keep[id] {
			errs = append(errs, j.cg.remove(id))
		}
	}
	j.removeParentIfIdle()
	return errors.Join(errs...)
}

// Bind makes a host file or directory visible in the jail.
type Bind struct {
	Source string // host path
	Target string // path in the jail; empty means the same as Source
	// Writable leaves the bind writable; otherwise it is read-only.
	Writable bool
}

// Spec is one jailed process.
type Spec struct {
	// ID names the sandbox: its uid allocation and its cgroup.
	ID string
	// Root is a host directory that the jail's root is mounted over (a
	// small tmpfs holding only Binds, Devices, /proc and the host's /usr);
	// it is created if missing and stays empty on the host.
	Root  string
	Binds []Bind
	// Devices are host device nodes (/dev/kvm, /dev/urandom) recreated in
	// the jail at the same path; /dev/kvm is made the sandbox uid's own.
	Devices []string
	// NetNS is a network namespace to join (a path such as
	// /run/netns/x); empty means a new, empty one.
	NetNS string
	// CPUs and MemoryMB size the cgroup: a CPU quota of CPUs plus a
	// quarter CPU for QEMU's own threads (its main loop: disk, console), so
	// that a hostile 1-vCPU guest on a 2-core host leaves its neighbours
	// most of the other core; memory of MemoryMB plus the configured
	// overhead.
	CPUs, MemoryMB int
	// MaxFileMB is RLIMIT_FSIZE, a guard on the largest file the process
	// writes; zero means DefaultMaxFileMB.
	MaxFileMB int
	// Path is the program, as seen in the jail; Args its argv (with
	// argv[0]); Env its whole environment; Dir its working directory.
	Path string
	Args []string
	Env  []string
	Dir  string
	// Probe, when set, runs the named in-process probe (given to
	// RunShimIfAsked) instead of Path, with the same identity. Tests only.
	Probe string
	// DenySpawn installs the shim's own seccomp filter that denies
	// execve, fork and non-thread clones, the equivalent of QEMU's
	// -sandbox spawn=deny, for a probe (QEMU installs its own).
	DenySpawn bool
	// StrictSeccomp installs, just before the execve, a seccomp filter
	// that answers EPERM to socket() of any family but AF_UNIX, to ptrace,
	// process_vm_readv/writev, bpf, perf_event_open, the keyrings,
	// userfaultfd, mounts, namespaces (unshare, setns, clone with a
	// namespace flag), kernel modules, kexec and personality (seccomp.go).
	// QEMU stacks its own -sandbox filter on top. For quarantined sandboxes.
	StrictSeccomp bool

	Stdout, Stderr *os.File
	// ExtraFiles become the process's descriptors 3, 4, ….
	ExtraFiles []*os.File
}

// Validate reports every problem with the spec at once.
func (s *Spec) Validate() error {
	var errs []error
	if s.ID == "" || strings.ContainsAny(s.ID, "/\x00") || s.ID == "." || s.ID == ".." {
		errs = append(errs, fmt.Errorf("id %q: want one path element", s.ID))
	}
	if !filepath.IsAbs(s.Root) {
		errs = append(errs, fmt.Errorf("root %q: want an absolute path", s.Root))
	}
	if s.Path == "" && s.Probe == "" {
		errs = append(errs, errors.New("no program (Path) and no Probe"))
	}
	if s.CPUs < 1 || s.MemoryMB < 1 {
		errs = append(errs, fmt.Errorf("cpus %d, memory %d MiB: both must be positive", s.CPUs, s.MemoryMB))
	}
	for _, b := range s.Binds {
		if !filepath.IsAbs(b.Source) || (b.Target != "" && !filepath.IsAbs(b.Target)) {
			errs = append(errs, fmt.Errorf("bind %q→%q: want absolute paths", b.Source, b.Target))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "jail spec: %v", err)
	}
	return nil
}

// Process is a started jailed process.
type Process struct {
	Cmd *exec.Cmd
	UID int
}

// Start starts spec's program jailed and returns once the shim has
// execve'd it (or the probe has started); a failure in the shim comes back
// as the error. The process runs in its own session, so it outlives the
// caller; the caller waits for it (Cmd.Wait) to reap it.
func (j *Jail) Start(ctx context.Context, spec *Spec) (*Process, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	uid, err := j.uids.allocate(spec.ID)
	if err != nil {
		return nil, err
	}
	j.cgMu.Lock()
	procs, err := j.cg.create(spec.ID, limits{
		memoryBytes: int64(spec.MemoryMB+j.cfg.MemoryOverheadMB) << 20,
		cpuQuotaUS:  int64(spec.CPUs)*cpuPeriodUS + cpuPeriodUS/4,
		pids:        j.cfg.Pids,
		ioWeight:    j.cfg.IOWeight,
	})
	j.cgMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("jail %s: %w", spec.ID, err)
	}
	if err := os.MkdirAll(spec.Root, 0o755); err != nil {
		return nil, fmt.Errorf("jail %s: %w", spec.ID, err)
	}
	ss := shimSpec{
		UID: uid, GID: uid, CgroupProcs: procs, Root: spec.Root, NetNS: spec.NetNS,
		NoFile: j.cfg.NoFile, NProc: j.cfg.Pids, MaxFileBytes: int64(cmp0(spec.MaxFileMB, DefaultMaxFileMB)) << 20,
		Path: spec.Path, Args: spec.Args, Env: spec.Env, Dir: cmpS(spec.Dir, "/"),
		Probe: spec.Probe, DenySpawn: spec.DenySpawn, Strict: spec.StrictSeccomp,
		StatusFD: 3 + len(spec.ExtraFiles),
	}
	for _, b := range spec.Binds {
		fi, err := os.Stat(b.Source)
		if err != nil {
			return nil, fmt.Errorf("jail %s: bind: %w", spec.ID, err)
		}
		ss.Mounts = append(ss.Mounts, shimMount{Source: b.Source, Target: cmpS(b.Target, b.Source), Writable: b.Writable, Dir: fi.IsDir()})
	}
	for _, dev := range spec.Devices {
		var st syscall.Stat_t
		if err := syscall.Stat(dev, &st); err != nil {
			return nil, fmt.Errorf("jail %s: device: %w", spec.ID, err)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "jail %s: %s is not a character device", spec.ID, dev)
		}
		// Shared devices stay as the host has them (0666 for null, zero,
		// urandom); a root-only device (/dev/kvm) becomes the sandbox's own.
		d := shimDevice{Path: dev, Rdev: st.Rdev, Mode: st.Mode & 0o777}
		if st.Mode&0o006 == 0 {
			d.Mode, d.Owned = 0o600, true
		}
		ss.Devices = append(ss.Devices, d)
	}
	b, err := json.Marshal(ss)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{shimArg0}
	cmd.Env = []string{shimEnv + "=" + string(b)}
	cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	cmd.ExtraFiles = append(append([]*os.File{}, spec.ExtraFiles...), w)
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS)
	if spec.NetNS == "" {
		flags |= syscall.CLONE_NEWNET
	}
	// Its own session: the jailed process outlives this one and its terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: flags}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("jail %s: start shim: %w", spec.ID, err)
	}
	// The status pipe closes on execve (close-on-exec) or carries the
	// shim's error; bounded, since the shim is still ours but be safe.
	if dl, ok := ctx.Deadline(); ok {
		_ = r.SetReadDeadline(dl)
	} else {
		_ = r.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	msg, rerr := io.ReadAll(io.LimitReader(r, 4096))
	if len(msg) > 0 || rerr != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if len(msg) == 0 {
			msg = []byte(rerr.Error())
		}
		return nil, fmt.Errorf("jail %s: %s", spec.ID, strings.TrimSpace(string(msg)))
	}
	return &Process{Cmd: cmd, UID: uid}, nil
}

func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func cmpS(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
