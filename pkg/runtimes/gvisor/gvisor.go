// Package gvisor runs Tartarus sandboxes in gVisor: each sandbox is a runsc
// container (systrap platform, no network) whose root is a template's root
// filesystem under an in-memory overlay, so many sandboxes share one
// read-only unpacked template and a checkpoint holds the sandbox's files
// together with its memory.
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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	// Now is the clock for activity and CPU accounting; nil means time.Now.
	Now func() time.Time
}

// Runtime is the gVisor driver.
type Runtime struct {
	container.SandboxFiles
	opts     Options
	log      *slog.Logger
	now      func() time.Time
	act      *container.Activity
	unpackMu sync.Mutex

	mu  sync.Mutex
	fp  *tartarus.Fingerprint
	cpu map[string]cpuSample
}

type cpuSample struct {
	at    time.Time
	total uint64 // ns
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
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Runtime{opts: opts, log: opts.Log.With("runtime", Name), now: opts.Now,
		act: container.NewActivity(opts.Now), cpu: map[string]cpuSample{}}
	r.SandboxFiles = container.SandboxFiles{Open: r.files}
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

// runscDetached runs a runsc command that leaves a sandbox behind (run or
// restore with --detach). The sandbox inherits the command's stdout and
// stderr, so they go to a file in the sandbox's directory, not to a pipe
// that would never close.
func (r *Runtime) runscDetached(ctx context.Context, id string, args ...string) error {
	logPath := filepath.Join(r.sandboxDir(id), "console.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	start, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.CommandContext(ctx, r.opts.Runsc, append(r.globalFlags(), args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logPath)
		if int64(len(b)) >= start {
			b = b[start:]
		}
		return fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(string(b)))
	}
	return nil
}

// runsc runs one runsc command and returns its stdout.
func (r *Runtime) runsc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.opts.Runsc, append(r.globalFlags(), args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(stderr.String()))
	}
	return out, nil
}

func (r *Runtime) globalFlags() []string {
	return []string{
		"--root=" + filepath.Join(r.opts.StateDir, "runsc"),
		"--platform=" + r.opts.Platform,
		"--network=none",
		// Writes go to memory inside the sandbox: the template stays
		// read-only and shared, and a checkpoint carries the files.
		"--overlay2=root:memory",
	}
}

func lastLines(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 && len(s) > 300 {
		return s[i+1:]
	}
	return s
}

// state is runsc's view of one container.
type state struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// states returns runsc's containers by id.
func (r *Runtime) states(ctx context.Context) (map[string]state, error) {
	out, err := r.runsc(ctx, "list", "--format=json")
	if err != nil {
		return nil, err
	}
	var list []state
	if len(bytes.TrimSpace(out)) > 0 && string(bytes.TrimSpace(out)) != "null" {
		if err := json.Unmarshal(out, &list); err != nil {
			return nil, fmt.Errorf("runsc list: %w", err)
		}
	}
	m := map[string]state{}
	for _, s := range list {
		m[s.ID] = s
	}
	return m, nil
}

// status returns the container's runsc status, or "" when runsc has none.
func (r *Runtime) status(ctx context.Context, id string) (string, error) {
	all, err := r.states(ctx)
	if err != nil {
		return "", err
	}
	return all[id].Status, nil
}

// Fingerprint implements tartarus.Runtime: runsc must exist and run, and
// this process must be root.
func (r *Runtime) Fingerprint(ctx context.Context) (*tartarus.Fingerprint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fp != nil {
		fp := *r.fp
		return &fp, nil
	}
	cpus, mem := container.HostResources()
	fp := &tartarus.Fingerprint{Runtime: Name, Accel: r.opts.Platform, HostCPUs: cpus, HostMemoryMB: mem,
		MaxCPUs: cpus, MaxMemoryMB: mem,
		Capabilities: tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true},
		Details:      map[string]string{"runsc": r.opts.Runsc, "platform": r.opts.Platform, "overlay": "root:memory"}}
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
	r.fp = fp
	c := *fp
	return &c, nil
}

// Create implements tartarus.Runtime: it unpacks the template (once per
// image) and writes the sandbox's OCI bundle; nothing runs yet.
func (r *Runtime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	fp, err := r.Fingerprint(ctx)
	if err != nil {
		return "", err
	}
	if !fp.Available {
		return "", tartarus.Errorf(tartarus.ErrUnavailable, "gvisor: %s", fp.Reason)
	}
	if err := container.CheckLimits(fp, cfg); err != nil {
		return "", err
	}
	if _, err := os.Stat(r.sandboxDir(cfg.ID)); err == nil {
		return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	if err := r.prepare(ctx, cfg); err != nil {
		_ = os.RemoveAll(r.sandboxDir(cfg.ID))
		return "", err
	}
	r.act.Touch(cfg.ID)
	return cfg.ID, nil
}

// prepare writes the sandbox directory: bundle (config.json) and meta.json.
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
	m := &meta{ID: cfg.ID, Template: cfg.Template, RootFS: rootfs, CPUs: cfg.CPUs, MemoryMB: cfg.MemoryMB,
		Env: cfg.Env, CreatedAt: r.now()}
	if m.Template == "" {
		m.Template = cfg.Image.Name
	}
	b, err := json.MarshalIndent(bundleSpec(m), "", "  ")
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

// defaultCaps are Docker's default capabilities: what root in a container
// usually has.
var defaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT",
	"CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP"}

func baseEnv(m *meta) []string {
	return container.EnvList([]string{container.DefaultPath, "HOME=/root", "HOSTNAME=" + m.ID}, m.Env)
}

func process(args, env []string, cwd string) *specs.Process {
	caps := slices.Clone(defaultCaps)
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
		Process:  process([]string{"/bin/sh", "-c", initScript}, baseEnv(m), "/"),
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
	m.StartedAt = r.now()
	if err := r.saveMeta(m); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	r.act.Touch(id)
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
	switch st {
	case "running":
		return m, nil
	case "paused":
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is paused", id)
	case "":
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is not started", id)
	}
	return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, st)
}

// Exec implements tartarus.Runtime through runsc exec.
func (r *Runtime) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	m, err := r.requireRunning(ctx, id)
	if err != nil {
		return nil, err
	}
	end := r.act.Begin(id)
	defer end()
	return r.exec(ctx, m, req)
}

// exec runs req as a child of the sandbox's init (see spawn.go), through
// the shim; a timeout or cancel kills the command's process group.
func (r *Runtime) exec(ctx context.Context, m *meta, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	if len(req.Cmd) == 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "exec: empty command")
	}
	if err := tartarus.ValidEnv(req.Env); err != nil {
		return nil, err
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	name := newCommandName()
	shim := *req
	shim.Cmd = []string{"sh", "-c", shimScript, "sh", name, commandScript(req, cwd)}
	shim.Env, shim.Cwd = nil, "/"
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
	b, err := json.Marshal(process(req.Cmd, container.EnvList(baseEnv(m), req.Env), cwd))
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
	cmd.Stdout = struct{ io.Writer }{orDiscard(req.Stdout)}
	cmd.Stderr = struct{ io.Writer }{orDiscard(req.Stderr)}
	// A background process of the command may keep the output open after
	// the command ended; stop waiting for it after a moment.
	cmd.WaitDelay = time.Second
	start := r.now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec in %s: %w", m.ID, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var timeout <-chan time.Time
	if req.Timeout > 0 {
		t := time.NewTimer(req.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	res := &tartarus.ExecResult{}
	var werr error
	select {
	case werr = <-done:
	case <-timeout:
		res.TimedOut = true
		kill()
		werr = <-done
	case <-ctx.Done():
		kill()
		<-done
		return nil, fmt.Errorf("exec in %s: %w", m.ID, ctx.Err())
	}
	res.Duration = r.now().Sub(start)
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) && !errors.Is(werr, exec.ErrWaitDelay) {
		return nil, fmt.Errorf("exec in %s: %w", m.ID, werr)
	}
	res.ExitCode = cmd.ProcessState.ExitCode()
	if res.TimedOut {
		res.ExitCode = 128 + int(syscall.SIGKILL)
	}
	if res.ExitCode > 128 {
		res.Signal = syscall.Signal(res.ExitCode - 128).String()
	}
	return res, nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
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
		r.log.Warn("exec: no pid to kill", "sandbox", id)
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
// every command Exec started.
func (r *Runtime) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	name, err := container.SignalName(sig)
	if err != nil {
		return err
	}
	m, err := r.requireRunning(ctx, id)
	if err != nil {
		return err
	}
	res, err := r.runscExec(ctx, m, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", signalScript, "sh", name}}, nil)
	if err != nil {
		return fmt.Errorf("signal %s: %w", id, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("signal %s: exit code %d", id, res.ExitCode)
	}
	return nil
}

// Pause implements tartarus.Runtime: runsc pause (idempotent).
func (r *Runtime) Pause(ctx context.Context, id string) error {
	return r.pauseResume(ctx, id, "pause", "paused", "running")
}

// Resume implements tartarus.Runtime: runsc resume (idempotent).
func (r *Runtime) Resume(ctx context.Context, id string) error {
	return r.pauseResume(ctx, id, "resume", "running", "paused")
}

func (r *Runtime) pauseResume(ctx context.Context, id, verb, target, from string) error {
	if _, err := r.loadMeta(id); err != nil {
		return err
	}
	st, err := r.status(ctx, id)
	if err != nil {
		return err
	}
	switch st {
	case target:
		return nil
	case from:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "%s %s: sandbox is %s", verb, id, firstNonEmpty(st, "not started"))
	}
	if _, err := r.runsc(context.WithoutCancel(ctx), verb, id); err != nil {
		return fmt.Errorf("%s %s: %w", verb, id, err)
	}
	r.act.Touch(id)
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
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
	r.act.Forget(id)
	r.mu.Lock()
	delete(r.cpu, id)
	r.mu.Unlock()
	return nil
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
	in := &tartarus.Instance{ID: m.ID, Template: m.Template, CPUs: m.CPUs, MemoryMB: m.MemoryMB,
		Pid: max(st.Pid, 0), StartedAt: m.StartedAt, IdleSince: r.act.IdleSince(m.ID)}
	switch st.Status {
	case "running":
		in.State = tartarus.InstanceRunning
	case "paused":
		in.State = tartarus.InstancePaused
	case "", "creating", "created":
		in.State = tartarus.InstanceCreated
	default:
		in.State = tartarus.InstanceStopped
	}
	return in
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
			adopted = append(adopted, r.instance(m, st))
			delete(states, e.Name())
			continue
		}
		r.log.Info("recover: removing sandbox that no longer runs", "sandbox", e.Name(), "status", st.Status)
		if err := r.Destroy(ctx, e.Name()); err != nil {
			r.log.Warn("recover: cleanup failed", "sandbox", e.Name(), "err", err)
		}
		delete(states, e.Name())
	}
	// runsc containers without a sandbox directory are leftovers too.
	for id := range states {
		_, _ = r.runsc(ctx, "delete", "--force", id)
	}
	return adopted, nil
}

// Files returns the file helper over this sandbox's exec.
func (r *Runtime) files(ctx context.Context, id string) (container.Files, func(), error) {
	m, err := r.requireRunning(ctx, id)
	if err != nil {
		return container.Files{}, nil, err
	}
	end := r.act.Begin(id)
	return container.Files{Exec: func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		return r.exec(ctx, m, req)
	}}, end, nil
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
	now := r.now()
	st := &tartarus.Stats{MemoryUsedMB: int(ev.Data.Memory.Usage.Usage >> 20), MemoryTotalMB: m.MemoryMB,
		Processes: ev.Data.Pids.Current}
	if t := r.act.IdleSince(id); t != nil {
		st.LastActivityAt = *t
	} else {
		st.LastActivityAt = now
	}
	r.mu.Lock()
	if prev, ok := r.cpu[id]; ok && now.After(prev.at) && ev.Data.CPU.Usage.Total >= prev.total {
		st.CPUPercent = float64(ev.Data.CPU.Usage.Total-prev.total) / float64(now.Sub(prev.at).Nanoseconds()) * 100
	}
	r.cpu[id] = cpuSample{at: now, total: ev.Data.CPU.Usage.Total}
	r.mu.Unlock()
	return st, nil
}

// Snapshot implements tartarus.Snapshotter: runsc checkpoint (memory,
// processes and the in-memory overlay holding the sandbox's file changes)
// into dir, after which the sandbox is left paused.
func (r *Runtime) Snapshot(ctx context.Context, id string, dir string) (*tartarus.SnapshotInfo, error) {
	m, err := r.loadMeta(id)
	if err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx)
	st, err := r.status(ctx, id)
	if err != nil {
		return nil, err
	}
	switch st {
	case "paused":
		// runsc checkpoints a running container; the resume-checkpoint-pause
		// window is a few milliseconds.
		if _, err := r.runsc(ctx, "resume", id); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
		}
	case "running":
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "snapshot %s: sandbox is %s", id, firstNonEmpty(st, "not started"))
	}
	created := r.now()
	if _, err := r.runsc(ctx, "checkpoint", "--leave-running", "--image-path="+dir, id); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if _, err := r.runsc(ctx, "pause", id); err != nil {
		return nil, fmt.Errorf("snapshot %s: pause after checkpoint: %w", id, err)
	}
	info := &tartarus.SnapshotInfo{Template: m.Template, MemoryBytes: int64(m.MemoryMB) << 20, CPUs: m.CPUs, Created: created}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	for _, e := range ents {
		info.Files = append(info.Files, e.Name())
	}
	return info, nil
}

// Restore implements tartarus.Snapshotter: a new sandbox cfg.ID from a
// checkpoint, running. cfg.Image must be the template the snapshot was
// taken from.
func (r *Runtime) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	fp, err := r.Fingerprint(ctx)
	if err != nil {
		return err
	}
	if err := container.CheckLimits(fp, cfg); err != nil {
		return err
	}
	if _, err := os.Stat(r.sandboxDir(cfg.ID)); err == nil {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	if err := r.prepare(ctx, cfg); err != nil {
		_ = os.RemoveAll(r.sandboxDir(cfg.ID))
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if err := r.runscDetached(ctx, cfg.ID, "restore", "--detach", "--image-path="+dir, "--bundle", r.sandboxDir(cfg.ID), cfg.ID); err != nil {
		_ = r.Destroy(ctx, cfg.ID)
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	m, err := r.loadMeta(cfg.ID)
	if err != nil {
		return err
	}
	m.StartedAt = r.now()
	if err := r.saveMeta(m); err != nil {
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	r.act.Touch(cfg.ID)
	return nil
}
