// Package gvisor runs Tartarus sandboxes in gVisor: each sandbox is a runsc
// container (systrap platform) whose root is a template's root filesystem
// under an in-memory overlay, so many sandboxes share one read-only
// unpacked template and a checkpoint holds the sandbox's files together
// with its memory.
//
// gVisor's own network stack is off (--network=none) unless the sandbox
// asks for a network: then runsc runs with --network=sandbox inside the
// guest namespace pkg/netns builds for it, and the egress policy,
// connection log and limits apply as for a microVM. The init's output goes
// nowhere and runsc's own output is cut to its tail once the sandbox runs,
// so nothing a sandbox prints fills the host's disk.
//
// It implements tartarus.Runtime and tartarus.Snapshotter (through runsc
// checkpoint and restore). runsc is built by scripts/runsc.sh.
//
// gVisor's restore kills every process started through `runsc exec` and
// their children (runsc/boot/restore.go), so commands are started by the
// sandbox's init instead and `runsc exec` only runs a shim that hands them
// over (spawn.go): files, memory and every process survive a snapshot and
// restore, except the shims of commands that were running at the time.
package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Name is the runtime's name as users choose it.
const Name = "gvisor"

// DefaultRunsc is where scripts/runsc.sh puts the binary.
const DefaultRunsc = "/var/cache/tartarus/bin/runsc"

// Options configures a Runtime.
type Options struct {
	// StateDir holds runsc's state, the bundles and the unpacked templates
	// (required). A new Runtime over the same StateDir recovers its sandboxes.
	StateDir string
	// Runsc is the runsc binary; empty means "runsc" on PATH, else DefaultRunsc.
	Runsc string
	// Platform is runsc's platform; empty means "systrap" (the kvm platform
	// does not work on nested hosts).
	Platform string
	Log      *slog.Logger
	// Clock is the time source for activity and CPU accounting; nil means
	// clock.System{}.
	Clock clock.Clock
	// Networks, when set, gives sandboxes asking for one a network of
	// their own (pkg/netns); nil: only loopback.
	Networks container.Networks
}

// Runtime is the gVisor driver. Fingerprint, Exec and the file methods are
// the shared ones of container.Base, over this driver's probe and exec
// (spawn.go); Signal is its own.
type Runtime struct {
	*container.Base
	opts     Options
	nets     container.NetworkState
	unpackMu sync.Mutex
}

var (
	_ tartarus.Runtime     = (*Runtime)(nil)
	_ tartarus.Snapshotter = (*Runtime)(nil)
)

// New returns a gVisor runtime over opts.StateDir, creating it.
func New(opts Options) (*Runtime, error) {
	if opts.StateDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "gvisor: no state directory")
	}
	dir, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	opts.StateDir = dir
	for _, d := range []string{"runsc", "images", "sandboxes"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("gvisor: %w", err)
		}
	}
	if opts.Runsc == "" {
		if p, err := exec.LookPath("runsc"); err == nil {
			opts.Runsc = p
		} else {
			opts.Runsc = DefaultRunsc
		}
	}
	if opts.Platform == "" {
		opts.Platform = "systrap"
	}
	r := &Runtime{opts: opts, nets: container.NetworkState{Dir: filepath.Join(dir, "networks")}}
	r.Base = container.NewBase(container.BaseConfig{Name: Name, Log: opts.Log, Clock: opts.Clock, Open: r.open, Probe: r.probe})
	return r, nil
}

// Name implements tartarus.Runtime.
func (r *Runtime) Name() string { return Name }

// meta is what the driver records about one sandbox, in its directory.
type meta struct {
	ID        string            `json:"id"`
	Template  string            `json:"template"`
	RootFS    string            `json:"rootfs"`
	CPUs      int               `json:"cpus"`
	MemoryMB  int               `json:"memory_mb"`
	Env       map[string]string `json:"env,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	StartedAt time.Time         `json:"started_at,omitzero"`
}

func (r *Runtime) sandboxDir(id string) string {
	return filepath.Join(r.opts.StateDir, "sandboxes", id)
}

func (r *Runtime) loadMeta(id string) (*meta, error) {
	if !tartarus.ValidName(id) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %q", id)
	}
	b, err := os.ReadFile(filepath.Join(r.sandboxDir(id), "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	m := &meta{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("sandbox %s: meta.json: %w", id, err)
	}
	return m, nil
}

func (r *Runtime) saveMeta(m *meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(r.sandboxDir(m.ID), "meta.json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

// probe is the fingerprint (container.ProbeFunc): runsc must exist and
// run, and this process must be root. The answer is kept either way.
func (r *Runtime) probe(ctx context.Context) (*tartarus.Fingerprint, bool) {
	cpus, mem := container.HostResources()
	fp := &tartarus.Fingerprint{Runtime: Name, Accel: r.opts.Platform, HostCPUs: cpus, HostMemoryMB: mem,
		MaxCPUs: cpus, MaxMemoryMB: mem,
		Capabilities: tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true,
			Network: r.opts.Networks != nil},
		Details: map[string]string{"runsc": r.opts.Runsc, "platform": r.opts.Platform, "overlay": "root:memory",
			"userns":     "the sentry runs as nobody in user namespaces of its own (runsc's sandbox)",
			"seccomp":    "runsc's own filter on the sentry and gofer",
			"disk_limit": "the sandbox's writes live in its memory (overlay root:memory), within its memory limit",
			"log":        "the init's output is discarded; runsc's output is cut to its tail once the sandbox runs"},
		Jail: &tartarus.JailInfo{Enabled: true, CgroupVersion: container.CgroupVersion(), Seccomp: true}}
	if r.opts.Networks == nil {
		fp.Details["network"] = "no network: this node was started without a network uplink"
	}
	out, err := exec.CommandContext(ctx, r.opts.Runsc, "--version").CombinedOutput()
	switch {
	case os.Geteuid() != 0:
		fp.Reason = "runsc needs root"
	case err != nil:
		fp.Reason = fmt.Sprintf("runsc at %s does not run (build it with scripts/runsc.sh): %v", r.opts.Runsc, err)
	default:
		fp.Available = true
		fp.Details["version"] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return fp, true
}

// Create implements tartarus.Runtime: it unpacks the template (once per
// image) and writes the sandbox's OCI bundle; nothing runs yet.
func (r *Runtime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	if err := r.CheckCreate(ctx, cfg); err != nil {
		return "", err
	}
	if _, err := os.Stat(r.sandboxDir(cfg.ID)); err == nil {
		return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	if err := r.prepare(ctx, cfg); err != nil {
		r.unprepare(ctx, cfg.ID)
		return "", err
	}
	r.Activity.Touch(cfg.ID)
	return cfg.ID, nil
}

// unprepare removes what a failed prepare left: the sandbox's directory
// and network.
func (r *Runtime) unprepare(ctx context.Context, id string) {
	_ = os.RemoveAll(r.sandboxDir(id))
	if err := r.nets.Destroy(context.WithoutCancel(ctx), r.opts.Networks, id); err != nil {
		r.Log.Warn("failed create: network not removed", "sandbox", id, "err", err)
	}
}

// prepare writes the sandbox directory: bundle (config.json) and meta.json,
// and builds its network if it asks for one.
func (r *Runtime) prepare(ctx context.Context, cfg *tartarus.VMConfig) error {
	r.unpackMu.Lock()
	rootfs, err := container.UnpackImage(ctx, cfg.Image, filepath.Join(r.opts.StateDir, "images"))
	r.unpackMu.Unlock()
	if err != nil {
		return fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	dir := r.sandboxDir(cfg.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	guestNS, err := r.nets.Create(ctx, r.opts.Networks, Name, cfg.ID, cfg.Network)
	if err != nil {
		return err
	}
	m := &meta{ID: cfg.ID, Template: container.TemplateName(cfg), RootFS: rootfs, CPUs: cfg.CPUs, MemoryMB: cfg.MemoryMB,
		Env: cfg.Env, CreatedAt: r.Clock.Now()}
	spec := bundleSpec(m)
	if guestNS != "" {
		withNetwork(spec, guestNS, r.nets.ResolvConfPath(cfg.ID))
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	if err := r.saveMeta(m); err != nil {
		return fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	return nil
}

func process(args, env []string, cwd string) *specs.Process {
	// Docker's default capabilities: what root in a container usually has.
	caps := slices.Clone(container.DefaultCaps)
	return &specs.Process{
		Args: args, Env: env, Cwd: cwd,
		User:         specs.User{UID: 0, GID: 0},
		Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
	}
}

func bundleSpec(m *meta) *specs.Spec {
	mem := int64(m.MemoryMB) << 20
	period := uint64(100000)
	quota := int64(m.CPUs) * int64(period)
	return &specs.Spec{
		Version:  specs.Version,
		Process:  process([]string{"/bin/sh", "-c", initScript}, container.BaseEnv(m.ID, m.Env), "/"),
		Root:     &specs.Root{Path: m.RootFS},
		Hostname: m.ID,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network"}},
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &mem},
				CPU:    &specs.LinuxCPU{Period: &period, Quota: &quota},
			},
		},
	}
}

// withNetwork puts the sandbox in the guest namespace at guestNS, with its
// resolver in /etc/resolv.conf.
func withNetwork(spec *specs.Spec, guestNS, resolvConf string) {
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			spec.Linux.Namespaces[i].Path = guestNS
		}
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: resolvConf,
		Options: []string{"bind", "ro"}})
}

// Start implements tartarus.Runtime: runsc run --detach.
func (r *Runtime) Start(ctx context.Context, id string) error {
	m, err := r.loadMeta(id)
	if err != nil {
		return err
	}
	st, err := r.status(ctx, id)
	if err != nil {
		return err
	}
	switch st {
	case "running", "paused":
		return nil
	case "":
	default:
		// A stopped container cannot start again; clear it and boot anew.
		_, _ = r.runsc(context.WithoutCancel(ctx), "delete", "--force", id)
	}
	// The sandbox must outlive the request that started it.
	if err := r.runscDetached(context.WithoutCancel(ctx), id, "run", "--detach", "--bundle", r.sandboxDir(id), id); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	if err := r.waitInit(ctx, m); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	m.StartedAt = r.Clock.Now()
	if err := r.saveMeta(m); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	r.Activity.Touch(id)
	return nil
}

// requireRunning returns the sandbox's meta when it runs; a paused sandbox
// is ErrFailedPrecondition.
func (r *Runtime) requireRunning(ctx context.Context, id string) (*meta, error) {
	m, err := r.loadMeta(id)
	if err != nil {
		return nil, err
	}
	st, err := r.status(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := container.RequireRunning(id, st); err != nil {
		return nil, err
	}
	return m, nil
}

// open returns the exec of a running sandbox (container.OpenFunc): through
// the sandbox's init, so the command survives a checkpoint (spawn.go).
func (r *Runtime) open(ctx context.Context, id string) (container.ExecFunc, error) {
	m, err := r.requireRunning(ctx, id)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		return r.exec(ctx, m, req)
	}, nil
}

// openDirect returns the plain `runsc exec` of a running sandbox, outside
// the init; it serves Signal.
func (r *Runtime) openDirect(ctx context.Context, id string) (container.ExecFunc, error) {
	m, err := r.requireRunning(ctx, id)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		return r.runscExec(ctx, m, req, nil)
	}, nil
}

// exec runs req as a child of the sandbox's init (see spawn.go), through
// the shim; a timeout or cancel kills the command's process group.
func (r *Runtime) exec(ctx context.Context, m *meta, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	cwd, err := container.CheckExec(req)
	if err != nil {
		return nil, err
	}
	if req.User != "" {
		// The user is looked up in the template's tree, not the sandbox's
		// overlay: users added inside the sandbox are not seen by name.
		u, err := container.LookupUser(m.RootFS, req.User)
		if err != nil {
			return nil, fmt.Errorf("exec in %s: %w", m.ID, err)
		}
		if u.UID != 0 || u.GID != 0 {
			// The init spawns commands as root: a command of another user
			// runs under `runsc exec` itself, which sets its user (so it
			// does not survive a hibernation, as the init's children do).
			direct := *req
			direct.Cwd = cwd
			return r.runscExecAs(ctx, m, &direct, nil, u)
		}
	}
	name := newCommandName()
	shim := *req
	shim.Cmd = []string{"sh", "-c", shimScript, "sh", name, commandScript(req, cwd)}
	shim.Env, shim.Cwd, shim.User = nil, "/", ""
	res, err := r.runscExec(ctx, m, &shim, func() { r.killSpawned(m, name) })
	if err == nil && res.ExitCode == 125 {
		return nil, fmt.Errorf("exec in %s: the sandbox's init could not start the command", m.ID)
	}
	return res, err
}

// runscExec runs req directly under `runsc exec`; kill, when not nil, is
// how a timeout or cancel ends the command (nil: kill the exec'd process's
// group, which it leads in gVisor).
func (r *Runtime) runscExec(ctx context.Context, m *meta, req *tartarus.ExecRequest, kill func()) (*tartarus.ExecResult, error) {
	return r.runscExecAs(ctx, m, req, kill, nil)
}

// runscExecAs is runscExec as user u (nil: root), with u's HOME unless
// req sets one.
func (r *Runtime) runscExecAs(ctx context.Context, m *meta, req *tartarus.ExecRequest, kill func(), u *container.User) (*tartarus.ExecResult, error) {
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	tmp, err := os.MkdirTemp(r.sandboxDir(m.ID), "exec-")
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", m.ID, err)
	}
	defer os.RemoveAll(tmp)
	pj := filepath.Join(tmp, "process.json")
	env := req.Env
	if _, ok := env["HOME"]; u != nil && !ok {
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		env["HOME"] = u.Home
	}
	p := process(req.Cmd, container.EnvList(container.BaseEnv(m.ID, m.Env), env), cwd)
	if u != nil {
		p.User = specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.Groups}
		if u.UID != 0 {
			// As Docker does: a user other than root gets no capabilities.
			p.Capabilities.Effective, p.Capabilities.Permitted = nil, nil
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(pj, b, 0o600); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(tmp, "pid")
	if kill == nil {
		kill = func() { r.killGroup(m.ID, pidFile) }
	}
	cmd := exec.Command(r.opts.Runsc, append(r.globalFlags(), "exec", "--process", pj, "--internal-pid-file", pidFile, m.ID)...)
	// Always through pipes: a file handed to runsc as it is would be
	// written by the sandbox at its own offsets.
	if req.Stdin != nil {
		cmd.Stdin = struct{ io.Reader }{req.Stdin}
	}
	cmd.Stdout = struct{ io.Writer }{container.OrDiscard(req.Stdout)}
	cmd.Stderr = struct{ io.Writer }{container.OrDiscard(req.Stderr)}
	// A background process of the command may keep the output open after
	// the command ended; stop waiting for it after a moment.
	cmd.WaitDelay = time.Second
	start := r.Clock.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec in %s: %w", m.ID, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	werr, timedOut, err := container.Wait(ctx, req.Timeout, done, kill)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", m.ID, err)
	}
	took := r.Clock.Now().Sub(start)
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) && !errors.Is(werr, exec.ErrWaitDelay) {
		return nil, fmt.Errorf("exec in %s: %w", m.ID, werr)
	}
	return container.ExitResult(cmd.ProcessState.ExitCode(), timedOut, took), nil
}

// killGroup kills the process group led by the exec'd process whose
// sandbox pid is in pidFile.
func (r *Runtime) killGroup(id, pidFile string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pid int
	for ctx.Err() == nil {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pid <= 1 {
		r.Log.Warn("exec: no pid to kill", "sandbox", id)
		return
	}
	m, err := r.loadMeta(id)
	if err != nil {
		return
	}
	kill := &tartarus.ExecRequest{Cmd: []string{"kill", "-s", "KILL", "--", "-" + strconv.Itoa(pid)}}
	if res, err := r.runscExec(ctx, m, kill, nil); err != nil || res.ExitCode != 0 {
		// Not a group leader after all (or already gone): the process alone.
		_, _ = r.runsc(ctx, "kill", "--pid", strconv.Itoa(pid), id, "KILL")
	}
}

// Signal implements tartarus.Runtime: sig goes to the process group of
// every command Exec started (the commands are the init's children, which
// container.Base's kill -1 would miss from a `runsc exec` of its own).
func (r *Runtime) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	return container.Signal(ctx, id, sig, signalScript, r.openDirect)
}

// Pause implements tartarus.Runtime: runsc pause (idempotent).
func (r *Runtime) Pause(ctx context.Context, id string) error {
	return r.pauseResume(ctx, id, true)
}

// Resume implements tartarus.Runtime: runsc resume (idempotent).
func (r *Runtime) Resume(ctx context.Context, id string) error {
	return r.pauseResume(ctx, id, false)
}

func (r *Runtime) pauseResume(ctx context.Context, id string, pause bool) error {
	if _, err := r.loadMeta(id); err != nil {
		return err
	}
	st, err := r.status(ctx, id)
	if err != nil {
		return err
	}
	return r.PauseResume(id, pause, st, func() error {
		verb := "resume"
		if pause {
			verb = "pause"
		}
		_, err := r.runsc(context.WithoutCancel(ctx), verb, id)
		return err
	})
}

// Destroy implements tartarus.Runtime. It runs to the end even when ctx is
// already cancelled.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	if !tartarus.ValidName(id) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	st, err := r.status(ctx, id)
	if err != nil {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	if st != "" {
		if _, err := r.runsc(ctx, "delete", "--force", id); err != nil {
			return fmt.Errorf("destroy %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(r.sandboxDir(id)); err != nil {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	r.Forget(id)
	return r.nets.Destroy(ctx, r.opts.Networks, id)
}

// List implements tartarus.Runtime.
func (r *Runtime) List(ctx context.Context) ([]*tartarus.Instance, error) {
	states, err := r.states(ctx)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(r.opts.StateDir, "sandboxes"))
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	var out []*tartarus.Instance
	for _, e := range ents {
		m, err := r.loadMeta(e.Name())
		if err != nil {
			continue
		}
		out = append(out, r.instance(m, states[m.ID]))
	}
	return out, nil
}

func (r *Runtime) instance(m *meta, st state) *tartarus.Instance {
	return &tartarus.Instance{ID: m.ID, Template: m.Template, CPUs: m.CPUs, MemoryMB: m.MemoryMB, State: container.InstanceState(st.Status),
		Pid: max(st.Pid, 0), StartedAt: m.StartedAt, IdleSince: r.Activity.IdleSince(m.ID)}
}

// Recover implements tartarus.Runtime: sandboxes runsc still runs (or
// holds paused) are adopted; the rest are deleted.
func (r *Runtime) Recover(ctx context.Context) ([]*tartarus.Instance, error) {
	states, err := r.states(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	ents, err := os.ReadDir(filepath.Join(r.opts.StateDir, "sandboxes"))
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	var adopted []*tartarus.Instance
	for _, e := range ents {
		m, err := r.loadMeta(e.Name())
		st := states[e.Name()]
		if err == nil && (st.Status == "running" || st.Status == "paused") {
			if err := r.nets.Recover(ctx, r.opts.Networks, m.ID); err != nil {
				r.Log.Warn("recover: network not re-attached", "sandbox", m.ID, "err", err)
			}
			adopted = append(adopted, r.instance(m, st))
			delete(states, e.Name())
			continue
		}
		r.Log.Info("recover: removing sandbox that no longer runs", "sandbox", e.Name(), "status", st.Status)
		if err := r.Destroy(ctx, e.Name()); err != nil {
			r.Log.Warn("recover: cleanup failed", "sandbox", e.Name(), "err", err)
		}
		delete(states, e.Name())
	}
	// runsc containers without a sandbox directory are leftovers too.
	for id := range states {
		_, _ = r.runsc(ctx, "delete", "--force", id)
	}
	return adopted, nil
}

// events is the part of `runsc events --stats` this driver reads.
type events struct {
	Data struct {
		CPU struct {
			Usage struct {
				Total uint64 `json:"total"`
			} `json:"usage"`
		} `json:"cpu"`
		Memory struct {
			Usage struct {
				Usage uint64 `json:"usage"`
			} `json:"usage"`
		} `json:"memory"`
		Pids struct {
			Current int `json:"current"`
		} `json:"pids"`
	} `json:"data"`
}

// Stats implements tartarus.Runtime from runsc events --stats; CPUPercent
// is measured since the previous Stats call (0 on the first).
func (r *Runtime) Stats(ctx context.Context, id string) (*tartarus.Stats, error) {
	m, err := r.loadMeta(id)
	if err != nil {
		return nil, err
	}
	out, err := r.runsc(ctx, "events", "--stats", id)
	if err != nil {
		return nil, fmt.Errorf("stats %s: %w", id, err)
	}
	var ev events
	if err := json.Unmarshal(out, &ev); err != nil {
		return nil, fmt.Errorf("stats %s: %w", id, err)
	}
	st := &tartarus.Stats{MemoryUsedMB: int(ev.Data.Memory.Usage.Usage >> 20), MemoryTotalMB: m.MemoryMB,
		Processes: ev.Data.Pids.Current}
	r.FillStats(id, st, ev.Data.CPU.Usage.Total)
	return st, nil
}
