// Package fake is an in-process tartarus.Runtime for unit tests of the layers
// above a runtime (the node agent and the API). It is not isolation: a
// sandbox is a directory, and Exec runs the command as a host process.
//
// Files live under StateDir/<id>/fs and are not visible to Exec (which runs
// on the host's file system), so tests must not cross-check the two. The
// fake passes the conformance suite in pkg/runtimes/runtimetest, which keeps
// its behaviour honest to the Runtime contract.
package fake

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Config configures a fake runtime.
type Config struct {
	// StateDir holds one directory per sandbox. A new Runtime over the same
	// StateDir adopts the sandboxes recorded there (see Recover).
	StateDir string
	// Name defaults to "fake".
	Name string
	// Capabilities defaults to everything but snapshots. With Snapshot,
	// the runtime's Snapshot and Restore (tartarus.Snapshotter) work.
	Capabilities *tartarus.Capabilities
	// MaxCPUs and MaxMemoryMB per sandbox default to 4 and 2048.
	MaxCPUs     int
	MaxMemoryMB int
	// StartHook, when set, runs at the beginning of Start; an error from it
	// fails Start (to test the node agent's failure paths).
	StartHook func(ctx context.Context, id string) error
	Log       *slog.Logger
	// Clock is the time source for idle and start times; nil means
	// clock.System{}.
	Clock clock.Clock
}

// Runtime is the fake runtime.
type Runtime struct {
	cfg  Config
	caps tartarus.Capabilities

	mu    sync.Mutex
	boxes map[string]*box
}

var _ tartarus.Runtime = (*Runtime)(nil)

type box struct {
	inst       instance
	busy       int
	lastActive time.Time
	groups     map[int]bool // process group ids of running execs
}

// instance is what is persisted in StateDir/<id>/instance.json.
type instance struct {
	ID        string                 `json:"id"`
	Template  string                 `json:"template"`
	State     tartarus.InstanceState `json:"state"`
	CPUs      int                    `json:"cpus"`
	MemoryMB  int                    `json:"memory_mb"`
	Env       map[string]string      `json:"env"`
	StartedAt time.Time              `json:"started_at"`
}

// New returns a fake runtime over cfg.StateDir.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("fake runtime: StateDir is required")
	}
	if cfg.Name == "" {
		cfg.Name = "fake"
	}
	if cfg.MaxCPUs == 0 {
		cfg.MaxCPUs = 4
	}
	if cfg.MaxMemoryMB == 0 {
		cfg.MaxMemoryMB = 2048
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	caps := tartarus.Capabilities{Pause: true, Signal: true, Files: true, Recover: true}
	if cfg.Capabilities != nil {
		caps = *cfg.Capabilities
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("fake runtime: %w", err)
	}
	return &Runtime{cfg: cfg, caps: caps, boxes: map[string]*box{}}, nil
}

// Name implements tartarus.Runtime.
func (r *Runtime) Name() string { return r.cfg.Name }

// Fingerprint implements tartarus.Runtime.
func (r *Runtime) Fingerprint(context.Context) (*tartarus.Fingerprint, error) {
	return &tartarus.Fingerprint{
		Runtime: r.cfg.Name, Available: true, Accel: "host-process",
		HostCPUs: r.cfg.MaxCPUs, HostMemoryMB: r.cfg.MaxMemoryMB,
		MaxCPUs: r.cfg.MaxCPUs, MaxMemoryMB: r.cfg.MaxMemoryMB,
		Capabilities: r.caps,
		Details:      map[string]string{"note": "fake runtime for unit tests; no isolation"},
	}, nil
}

func (r *Runtime) dir(id string) string { return filepath.Join(r.cfg.StateDir, id) }

// Create implements tartarus.Runtime.
func (r *Runtime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	switch {
	case cfg.ID == "" || !tartarus.ValidName(cfg.ID):
		return "", tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %q", cfg.ID)
	case cfg.Image == nil:
		return "", tartarus.Errorf(tartarus.ErrInvalid, "sandbox %s: no image", cfg.ID)
	case cfg.CPUs > r.cfg.MaxCPUs:
		return "", tartarus.Errorf(tartarus.ErrResourceExhausted, "cpus %d: this host allows at most %d", cfg.CPUs, r.cfg.MaxCPUs)
	case cfg.MemoryMB > r.cfg.MaxMemoryMB:
		return "", tartarus.Errorf(tartarus.ErrResourceExhausted, "memory_mb %d: this host allows at most %d", cfg.MemoryMB, r.cfg.MaxMemoryMB)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.boxes[cfg.ID]; ok {
		return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	if err := os.MkdirAll(filepath.Join(r.dir(cfg.ID), "fs"), 0o700); err != nil {
		return "", fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	b := &box{inst: instance{ID: cfg.ID, Template: cfg.Template, State: tartarus.InstanceCreated,
		CPUs: cfg.CPUs, MemoryMB: cfg.MemoryMB, Env: cfg.Env}, lastActive: r.cfg.Clock.Now(), groups: map[int]bool{}}
	if err := r.save(b); err != nil {
		return "", err
	}
	r.boxes[cfg.ID] = b
	return cfg.ID, nil
}

func (r *Runtime) save(b *box) error {
	data, err := json.Marshal(b.inst)
	if err != nil {
		return err
	}
	p := filepath.Join(r.dir(b.inst.ID), "instance.json")
	if err := os.WriteFile(p+".tmp", data, 0o600); err != nil {
		return fmt.Errorf("save sandbox %s: %w", b.inst.ID, err)
	}
	return os.Rename(p+".tmp", p)
}

// get returns a sandbox's box; the caller holds r.mu.
func (r *Runtime) get(id string) (*box, error) {
	b, ok := r.boxes[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return b, nil
}

// Start implements tartarus.Runtime.
func (r *Runtime) Start(ctx context.Context, id string) error {
	if r.cfg.StartHook != nil {
		if err := r.cfg.StartHook(ctx, id); err != nil {
			return fmt.Errorf("start sandbox %s: %w", id, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.get(id)
	if err != nil {
		return err
	}
	switch b.inst.State {
	case tartarus.InstanceRunning:
		return nil
	case tartarus.InstanceCreated:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, b.inst.State)
	}
	b.inst.State = tartarus.InstanceRunning
	b.inst.StartedAt = r.cfg.Clock.Now().UTC()
	return r.save(b)
}

// Exec implements tartarus.Runtime. The command runs on the host in its own
// process group, with the sandbox's environment.
func (r *Runtime) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	if len(req.Cmd) == 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "exec: empty command")
	}
	r.mu.Lock()
	b, err := r.get(id)
	if err == nil && b.inst.State != tartarus.InstanceRunning {
		err = tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, b.inst.State)
	}
	if err != nil {
		r.mu.Unlock()
		return nil, err
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	for k, v := range b.inst.Env {
		env = append(env, k+"="+v)
	}
	for k, v := range req.Env {
		env = append(env, k+"="+v) // later entries win in os/exec
	}
	b.busy++
	r.mu.Unlock()

	defer func() {
		r.mu.Lock()
		b.busy--
		b.lastActive = r.cfg.Clock.Now()
		r.mu.Unlock()
	}()

	runCtx := ctx
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(runCtx, req.Cmd[0], req.Cmd[1:]...)
	cmd.Env = env
	cmd.Dir = req.Cwd
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = req.Stdin, req.Stdout, req.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if req.User != "" {
		uid, gid, err := container.NumericUser(r.Name(), req.User)
		if err != nil {
			return nil, err
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	start := r.cfg.Clock.Now()
	// Start under the lock so that a Signal or Pause called as soon as the
	// command's first output arrives already sees its process group.
	r.mu.Lock()
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "exec %q: %v", req.Cmd[0], err)
	}
	pgid := cmd.Process.Pid
	b.groups[pgid] = true
	r.mu.Unlock()
	waitErr := cmd.Wait()
	r.mu.Lock()
	delete(b.groups, pgid)
	r.mu.Unlock()
	// Leave nothing of the group behind (background children of a shell).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)

	res := &tartarus.ExecResult{Duration: time.Since(start)}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("exec in sandbox %s: %w", id, ctx.Err())
	}
	if runCtx.Err() != nil {
		res.TimedOut, res.ExitCode, res.Signal = true, 137, "SIGKILL"
		return res, nil
	}
	var ee *exec.ExitError
	switch {
	case waitErr == nil:
	case errors.As(waitErr, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			res.ExitCode = 128 + int(ws.Signal())
			res.Signal = unix.SignalName(ws.Signal())
		} else {
			res.ExitCode = ws.ExitStatus()
		}
	default:
		return nil, fmt.Errorf("exec in sandbox %s: %w", id, waitErr)
	}
	return res, nil
}

func (r *Runtime) signalGroups(id string, sig syscall.Signal, need func(tartarus.Capabilities) bool, what string) error {
	if !need(r.caps) {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "%s: runtime %s", what, r.cfg.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.get(id)
	if err != nil {
		return err
	}
	for pgid := range b.groups {
		_ = syscall.Kill(-pgid, sig)
	}
	return nil
}

// Signal implements tartarus.Runtime.
func (r *Runtime) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	return r.signalGroups(id, sig, func(c tartarus.Capabilities) bool { return c.Signal }, "signal")
}

// Pause implements tartarus.Runtime: running commands are stopped with
// SIGSTOP and new Execs fail with ErrFailedPrecondition until Resume.
func (r *Runtime) Pause(ctx context.Context, id string) error {
	return r.setPaused(id, true)
}

// Resume implements tartarus.Runtime.
func (r *Runtime) Resume(ctx context.Context, id string) error {
	return r.setPaused(id, false)
}

func (r *Runtime) setPaused(id string, pause bool) error {
	if !r.caps.Pause {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "pause: runtime %s", r.cfg.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.get(id)
	if err != nil {
		return err
	}
	from, to, sig := tartarus.InstanceRunning, tartarus.InstancePaused, syscall.SIGSTOP
	if !pause {
		from, to, sig = to, from, syscall.SIGCONT
	}
	switch b.inst.State {
	case to:
		return nil
	case from:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, b.inst.State)
	}
	for pgid := range b.groups {
		_ = syscall.Kill(-pgid, sig)
	}
	b.inst.State = to
	return r.save(b)
}

// Destroy implements tartarus.Runtime.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	r.mu.Lock()
	if b, ok := r.boxes[id]; ok {
		for pgid := range b.groups {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			_ = syscall.Kill(-pgid, syscall.SIGCONT)
		}
		delete(r.boxes, id)
	}
	r.mu.Unlock()
	if !tartarus.ValidName(id) {
		return nil
	}
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	return nil
}

// Lose makes a sandbox vanish without the runtime's knowledge, as a VM does
// when its host reboots; tests use it to exercise reconciliation.
func (r *Runtime) Lose(id string) error {
	r.mu.Lock()
	delete(r.boxes, id)
	r.mu.Unlock()
	return os.RemoveAll(r.dir(id))
}

// List implements tartarus.Runtime.
func (r *Runtime) List(ctx context.Context) ([]*tartarus.Instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*tartarus.Instance, 0, len(r.boxes))
	for _, b := range r.boxes {
		in := &tartarus.Instance{ID: b.inst.ID, Template: b.inst.Template, State: b.inst.State,
			CPUs: b.inst.CPUs, MemoryMB: b.inst.MemoryMB, StartedAt: b.inst.StartedAt}
		if b.busy == 0 {
			t := b.lastActive
			in.IdleSince = &t
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Recover implements tartarus.Runtime: sandboxes recorded as running or
// paused are adopted; those never started are removed.
func (r *Runtime) Recover(ctx context.Context) ([]*tartarus.Instance, error) {
	if !r.caps.Recover {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "recover: runtime %s", r.cfg.Name)
	}
	entries, err := os.ReadDir(r.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	r.mu.Lock()
	for _, e := range entries {
		id := e.Name()
		if _, ok := r.boxes[id]; ok || !e.IsDir() {
			continue
		}
		var in instance
		data, err := os.ReadFile(filepath.Join(r.dir(id), "instance.json"))
		if err == nil {
			err = json.Unmarshal(data, &in)
		}
		if err != nil || in.ID != id || (in.State != tartarus.InstanceRunning && in.State != tartarus.InstancePaused) {
			r.cfg.Log.Info("recover: removing remains", "sandbox", id)
			_ = os.RemoveAll(r.dir(id))
			continue
		}
		r.boxes[id] = &box{inst: in, lastActive: r.cfg.Clock.Now(), groups: map[int]bool{}}
	}
	r.mu.Unlock()
	return r.List(ctx)
}

// fsPath maps an absolute sandbox path into the sandbox's directory.
func (r *Runtime) fsPath(id, p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "path %q: must be absolute and clean", p)
	}
	if !r.caps.Files {
		return "", tartarus.Errorf(tartarus.ErrNotImplemented, "files: runtime %s", r.cfg.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.get(id)
	if err != nil {
		return "", err
	}
	if b.inst.State != tartarus.InstanceRunning {
		return "", tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, b.inst.State)
	}
	b.lastActive = r.cfg.Clock.Now()
	return filepath.Join(r.dir(id), "fs", filepath.FromSlash(p)), nil
}

func fileErr(id, p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s: %s", id, p)
	}
	return fmt.Errorf("sandbox %s: %s: %w", id, p, err)
}

// ReadFile implements tartarus.Runtime.
func (r *Runtime) ReadFile(ctx context.Context, id, p string) (io.ReadCloser, error) {
	hp, err := r.fsPath(id, p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(hp)
	if err != nil {
		return nil, fileErr(id, p, err)
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "sandbox %s: %s is a directory", id, p)
	}
	return f, nil
}

// WriteFile implements tartarus.Runtime.
func (r *Runtime) WriteFile(ctx context.Context, id, p string, mode os.FileMode, src io.Reader) error {
	hp, err := r.fsPath(id, p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
		return fileErr(id, p, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(hp), ".upload-*")
	if err != nil {
		return fileErr(id, p, err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, src)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), mode.Perm())
	}
	if err == nil {
		err = os.Rename(tmp.Name(), hp)
	}
	if err != nil {
		return fileErr(id, p, err)
	}
	return nil
}

// ListFiles implements tartarus.Runtime.
func (r *Runtime) ListFiles(ctx context.Context, id, p string) ([]tartarus.FileInfo, error) {
	hp, err := r.fsPath(id, p)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(hp)
	if err != nil {
		return nil, fileErr(id, p, err)
	}
	out := make([]tartarus.FileInfo, 0, len(entries))
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, tartarus.FileInfo{Name: e.Name(), Size: info.Size(), Mode: info.Mode(),
			ModTime: info.ModTime().UTC(), IsDir: e.IsDir()})
	}
	return out, nil
}

// Stats implements tartarus.Runtime.
func (r *Runtime) Stats(ctx context.Context, id string) (*tartarus.Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.get(id)
	if err != nil {
		return nil, err
	}
	return &tartarus.Stats{MemoryTotalMB: b.inst.MemoryMB, Processes: len(b.groups), LastActivityAt: b.lastActive}, nil
}

var _ tartarus.Snapshotter = (*Runtime)(nil)

// Snapshot files the fake writes.
const (
	snapInstance = "instance.json"
	snapFS       = "fs.tar"
)

// Snapshot implements tartarus.Snapshotter when the runtime was given
// Capabilities.Snapshot (otherwise it is ErrNotImplemented): it pauses the
// sandbox and writes its record and its file tree. A fake sandbox has no
// memory to save: processes started by Exec are host processes and are not
// part of the snapshot.
func (r *Runtime) Snapshot(ctx context.Context, id, dir string) (*tartarus.SnapshotInfo, error) {
	if !r.caps.Snapshot {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "snapshot: runtime %s", r.cfg.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.get(id)
	if err != nil {
		return nil, err
	}
	if b.inst.State != tartarus.InstanceRunning && b.inst.State != tartarus.InstancePaused {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "snapshot %s: sandbox is %s", id, b.inst.State)
	}
	for pgid := range b.groups {
		_ = syscall.Kill(-pgid, syscall.SIGSTOP)
	}
	b.inst.State = tartarus.InstancePaused
	if err := r.save(b); err != nil {
		return nil, err
	}
	data, err := json.Marshal(b.inst)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, snapInstance), data, 0o600); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if err := tarDir(filepath.Join(r.dir(id), "fs"), filepath.Join(dir, snapFS)); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return &tartarus.SnapshotInfo{Template: b.inst.Template, MemoryBytes: int64(b.inst.MemoryMB) << 20,
		CPUs: b.inst.CPUs, Files: []string{snapFS, snapInstance}, Created: r.cfg.Clock.Now().UTC()}, nil
}

// Restore implements tartarus.Snapshotter: a new running sandbox cfg.ID with
// a copy of the snapshot's files. cfg.Env, when set, replaces the
// snapshot's environment (as a restore from a template snapshot needs).
func (r *Runtime) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	if !r.caps.Snapshot {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "restore: runtime %s", r.cfg.Name)
	}
	if cfg.ID == "" || !tartarus.ValidName(cfg.ID) {
		return tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %q", cfg.ID)
	}
	data, err := os.ReadFile(filepath.Join(dir, snapInstance))
	if err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "restore %s: not a fake snapshot: %v", cfg.ID, err)
	}
	var in instance
	if err := json.Unmarshal(data, &in); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "restore %s: %v", cfg.ID, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.boxes[cfg.ID]; ok {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	fsDir := filepath.Join(r.dir(cfg.ID), "fs")
	if err := os.MkdirAll(fsDir, 0o700); err != nil {
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	if err := untarDir(filepath.Join(dir, snapFS), fsDir); err != nil {
		_ = os.RemoveAll(r.dir(cfg.ID))
		return fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	in.ID, in.State, in.StartedAt = cfg.ID, tartarus.InstanceRunning, r.cfg.Clock.Now().UTC()
	if cfg.Env != nil {
		in.Env = cfg.Env
	}
	if cfg.Template != "" {
		in.Template = cfg.Template
	}
	b := &box{inst: in, lastActive: r.cfg.Clock.Now(), groups: map[int]bool{}}
	if err := r.save(b); err != nil {
		_ = os.RemoveAll(r.dir(cfg.ID))
		return err
	}
	r.boxes[cfg.ID] = b
	return nil
}

// tarDir writes the regular files and directories under src as a tar file.
func tarDir(src, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		_, err = io.Copy(tw, in)
		return err
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// untarDir extracts a tarDir file into dst (through an os.Root, so nothing
// lands outside it).
func untarDir(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	root, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(hdr.Name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			out, err := root.OpenFile(hdr.Name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(hdr.Mode).Perm())
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}
