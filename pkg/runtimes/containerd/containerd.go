// Package containerd runs Tartarus sandboxes as containerd containers
// (runc through the io.containerd.runc.v2 shim) with the containerd v2 Go
// client, in their own namespace ("tartarus" by default).
//
// A template's root filesystem is imported once as a one-layer OCI image
// (an OCI archive written on the fly and passed to the client's Import),
// named tartarus-template/<name>:<digest>, and unpacked into the overlayfs
// snapshotter. Each sandbox is a container with its own snapshot, a new
// network namespace with only loopback (or, with a network, the guest
// namespace pkg/netns builds for it), the template's memory and CPU
// limits, and a shell that waits as its init.
//
// Sandboxes are confined (docs/security.md): a user namespace maps root
// inside to the first uid of the node's range outside (Options.UIDBase;
// the image's snapshot is chowned once per template into that range),
// containerd's default seccomp profile (Docker's), Docker's default
// capabilities and no others, no new privileges, a pids limit and memory
// without swap from the sandbox's size, and no log (the task's output is
// discarded). The overlayfs snapshotter has no size limit for a sandbox's
// writable layer; the fingerprint says so.
//
// Snapshots are not offered: containerd's checkpoint needs CRIU, which does
// not work on the hosts measured (DESIGN.md); the fingerprint says so.
//
// It is also a kampe.LegacyRuntime for any container of its namespace: the
// migration plan reads the container's OCI spec (bind mounts, namespaces
// shared with the host, devices, capabilities, limits), and Migrate copies
// its root filesystem (through the task's root while it runs, else from
// its snapshot) into a template.
package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Name is the runtime's name as users choose it.
const Name = "containerd"

const snapshotter = "overlayfs"

// Options configures a Runtime.
type Options struct {
	// Address is containerd's socket (default /run/containerd/containerd.sock).
	Address string
	// Namespace holds the sandboxes; empty means "tartarus".
	Namespace string
	// CacheDir is where template root filesystems are unpacked before
	// their import (required).
	CacheDir string
	Log      *slog.Logger
	// Clock is the time source for activity and CPU accounting; nil means
	// clock.System{}.
	Clock clock.Clock
	// UIDBase is the host uid (and gid) of root inside every sandbox; the
	// node's sandboxes share the range UIDBase to UIDBase+65535. Zero
	// means DefaultUIDBase.
	UIDBase uint32
	// Networks, when set, gives sandboxes asking for one a network of
	// their own (pkg/netns); nil: only loopback.
	Networks container.Networks
}

// DefaultUIDBase is the first host uid of containerd sandboxes: above
// systemd's container range (up to 1879048191), Docker's remap ranges
// (/etc/subuid, 100000 on) and the host's own users, below the microVM
// jail's (pkg/jail, 1900000000 on).
const DefaultUIDBase = 1890000000

// idRange is the size of the sandboxes' uid and gid range.
const idRange = 65536

// Runtime is the containerd driver. Fingerprint, Exec, Signal and the file
// methods are the shared ones of container.Base, over this driver's probe
// and task exec.
type Runtime struct {
	*container.Base
	cli      *client.Client
	opts     Options
	nets     container.NetworkState
	importMu sync.Mutex
}

var _ tartarus.Runtime = (*Runtime)(nil)

// New connects to containerd. It fails when the socket does not answer.
func New(opts Options) (*Runtime, error) {
	if opts.CacheDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "containerd: no cache directory")
	}
	if opts.Address == "" {
		opts.Address = "/run/containerd/containerd.sock"
	}
	if opts.Namespace == "" {
		opts.Namespace = "tartarus"
	}
	if opts.UIDBase == 0 {
		opts.UIDBase = DefaultUIDBase
	}
	if _, err := os.Stat(opts.Address); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "containerd socket %s: %v", opts.Address, err)
	}
	cli, err := client.New(opts.Address, client.WithDefaultNamespace(opts.Namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "containerd at %s: %v", opts.Address, err)
	}
	r := &Runtime{cli: cli, opts: opts, nets: container.NetworkState{Dir: filepath.Join(opts.CacheDir, "networks")}}
	r.Base = container.NewBase(container.BaseConfig{Name: Name, Log: opts.Log, Clock: opts.Clock, Open: r.open, Probe: r.probe})
	return r, nil
}

var _ tartarus.RuntimeCloser = (*Runtime)(nil)

// Close lets go of the connection; containers keep running.
func (r *Runtime) Close() error { return r.cli.Close() }

// Name implements tartarus.Runtime.
func (r *Runtime) Name() string { return Name }

func (r *Runtime) ns(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.opts.Namespace)
}

// probe is the fingerprint (container.ProbeFunc): the daemon must answer.
func (r *Runtime) probe(ctx context.Context) (*tartarus.Fingerprint, bool) {
	cpus, mem := container.HostResources()
	fp := &tartarus.Fingerprint{Runtime: Name, Accel: "runc", HostCPUs: cpus, HostMemoryMB: mem, MaxCPUs: cpus, MaxMemoryMB: mem,
		Capabilities: tartarus.Capabilities{Pause: true, Snapshot: false, Signal: true, Files: true, Recover: true,
			Network: r.opts.Networks != nil},
		Details: map[string]string{"address": r.opts.Address, "namespace": r.opts.Namespace,
			"snapshot":   "not offered: containerd checkpoint needs CRIU, which does not work on this kernel",
			"userns":     fmt.Sprintf("root inside is uid %d outside; the node's containerd sandboxes share the range", r.opts.UIDBase),
			"seccomp":    "containerd's default profile (Docker's)",
			"disk_limit": "none: the overlayfs snapshotter has no per-sandbox size limit",
			"log":        "none: the task's output is discarded"},
		Jail: &tartarus.JailInfo{Enabled: true, CgroupVersion: container.CgroupVersion(), Seccomp: true,
			UIDRange: fmt.Sprintf("%d-%d", r.opts.UIDBase, r.opts.UIDBase+idRange-1)}}
	if r.opts.Networks == nil {
		fp.Details["network"] = "no network: this node was started without a network uplink"
	}
	v, err := r.cli.Version(r.ns(ctx))
	if err != nil {
		fp.Reason = fmt.Sprintf("containerd at %s does not answer: %v", r.opts.Address, err)
		// Not kept: the daemon may come up later.
		return fp, false
	}
	fp.Available = true
	fp.Details["version"] = v.Version
	return fp, true
}

// Create implements tartarus.Runtime: import the template if needed, then
// create the container and its snapshot (no task yet).
func (r *Runtime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	if err := r.CheckCreate(ctx, cfg); err != nil {
		return "", err
	}
	ctx = r.ns(context.WithoutCancel(ctx))
	if _, err := r.cli.LoadContainer(ctx, cfg.ID); err == nil {
		return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	im, err := r.ensureImage(ctx, cfg.Image)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	guestNS, err := r.nets.Create(ctx, r.opts.Networks, Name, cfg.ID, cfg.Network)
	if err != nil {
		return "", err
	}
	_, err = r.cli.NewContainer(ctx, cfg.ID,
		client.WithImage(im),
		client.WithSnapshotter(snapshotter),
		// Chowned into the range once per template (a shared parent
		// snapshot), then one writable layer per sandbox.
		client.WithRemappedSnapshot(cfg.ID+"-rootfs", im, r.opts.UIDBase, r.opts.UIDBase),
		client.WithRuntime("io.containerd.runc.v2", nil),
		client.WithContainerLabels(container.SandboxLabels(Name, cfg)),
		client.WithNewSpec(r.specOpts(im, cfg, guestNS)...),
	)
	if err != nil {
		if derr := r.nets.Destroy(ctx, r.opts.Networks, cfg.ID); derr != nil {
			r.Log.Warn("create failed; its network stays", "sandbox", cfg.ID, "err", derr)
		}
		if errdefs.IsAlreadyExists(err) {
			return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
		}
		return "", fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	r.Activity.Touch(cfg.ID)
	return cfg.ID, nil
}

// specOpts is the sandbox's OCI spec: the image's, confined (see the
// package comment), in guestNS when it has a network.
func (r *Runtime) specOpts(im client.Image, cfg *tartarus.VMConfig, guestNS string) []oci.SpecOpts {
	period := uint64(100000)
	mem := int64(cfg.MemoryMB) << 20
	ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: r.opts.UIDBase, Size: idRange}}
	opts := []oci.SpecOpts{
		oci.WithImageConfig(im),
		oci.WithProcessArgs(container.InitCommand...),
		oci.WithEnv(container.BaseEnv(cfg.ID, cfg.Env)),
		oci.WithHostname(cfg.ID),
		oci.WithMemoryLimit(uint64(mem)),
		oci.WithMemorySwap(mem),
		oci.WithCPUCFS(int64(cfg.CPUs)*int64(period), period),
		oci.WithPidsLimit(container.PidsLimit(cfg.MemoryMB)),
		oci.WithNoNewPrivileges,
		oci.WithCapabilities(container.DefaultCaps),
		oci.WithUserNamespace(ids, ids),
		// After the capabilities: the profile allows what they allow.
		seccomp.WithDefaultProfile(),
	}
	if guestNS != "" {
		// runc makes the network namespace, owned by the sandbox's user
		// namespace (a process there could not join one the host owns:
		// runc exec would fail); Start moves the network into it.
		opts = append(opts, oci.WithMounts([]specs.Mount{{Destination: "/etc/resolv.conf", Type: "bind",
			Source: r.nets.ResolvConfPath(cfg.ID), Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}}}))
	}
	return opts
}

// load returns the sandbox's container; an unknown one is ErrNotFound.
func (r *Runtime) load(ctx context.Context, id string) (client.Container, map[string]string, error) {
	if !tartarus.ValidName(id) {
		return nil, nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %q", id)
	}
	c, err := r.cli.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil, nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	if labels[container.LabelRuntime] != Name {
		return nil, nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return c, labels, nil
}

// taskStatus returns the container's task and its status ("" without task).
func taskStatus(ctx context.Context, c client.Container) (client.Task, client.ProcessStatus, error) {
	t, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	st, err := t.Status(ctx)
	if err != nil {
		return nil, "", err
	}
	return t, st.Status, nil
}

// Start implements tartarus.Runtime: create and start the task.
func (r *Runtime) Start(ctx context.Context, id string) error {
	ctx = r.ns(context.WithoutCancel(ctx))
	c, _, err := r.load(ctx, id)
	if err != nil {
		return err
	}
	t, st, err := taskStatus(ctx, c)
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	switch st {
	case client.Running, client.Paused:
		return nil
	case client.Stopped:
		if _, err := t.Delete(ctx, client.WithProcessKill); err != nil {
			return fmt.Errorf("start %s: %w", id, err)
		}
		t = nil
	}
	if t == nil {
		if t, err = c.NewTask(ctx, cio.NullIO); err != nil {
			return fmt.Errorf("start %s: %w", id, err)
		}
		// The init exists, not yet running: its network goes in first.
		if err := r.nets.Attach(ctx, r.opts.Networks, id, int(t.Pid())); err != nil {
			_, _ = t.Delete(ctx, client.WithProcessKill)
			return fmt.Errorf("start %s: %w", id, err)
		}
	}
	if err := t.Start(ctx); err != nil {
		_, _ = t.Delete(ctx, client.WithProcessKill)
		return fmt.Errorf("start %s: %w", id, err)
	}
	r.Activity.Touch(id)
	return nil
}

// open returns the task exec of a running sandbox (container.OpenFunc).
func (r *Runtime) open(ctx context.Context, id string) (container.ExecFunc, error) {
	nsCtx := r.ns(ctx)
	c, _, err := r.load(nsCtx, id)
	if err != nil {
		return nil, err
	}
	t, st, err := taskStatus(nsCtx, c)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	if err := container.RequireRunning(id, string(st)); err != nil {
		return nil, err
	}
	spec, err := c.Spec(nsCtx)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	return func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		return r.exec(ctx, id, t, spec.Process.Env, req)
	}, nil
}

// stdinCloser calls onEOF once when r is exhausted, so the process sees
// the end of its input.
type stdinCloser struct {
	r     io.Reader
	once  sync.Once
	onEOF func()
}

func (s *stdinCloser) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.once.Do(s.onEOF)
	}
	return n, err
}

func execID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "exec-" + hex.EncodeToString(b[:])
}

// exec runs req as a new process of the task. A timeout or cancel kills
// the process and its descendants from the host.
func (r *Runtime) exec(ctx context.Context, id string, t client.Task, env []string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	cwd, err := container.CheckExec(req)
	if err != nil {
		return nil, err
	}
	bg := r.ns(context.WithoutCancel(ctx))
	pspec := &specs.Process{Args: req.Cmd, Env: container.EnvList(env, req.Env), Cwd: cwd}
	// The rest of the process spec (user, capabilities, rlimits) is the
	// init's, as for `ctr task exec`.
	if spec, err := t.Spec(bg); err == nil && spec.Process != nil {
		base := *spec.Process
		base.Args, base.Env, base.Cwd, base.Terminal = pspec.Args, pspec.Env, pspec.Cwd, false
		pspec = &base
	}
	if req.User != "" {
		uid, gid, err := container.NumericUser(r.Name(), req.User)
		if err != nil {
			return nil, err
		}
		pspec.User = specs.User{UID: uid, GID: gid}
		if uid != 0 && pspec.Capabilities != nil {
			// As Docker does: a user other than root gets no capabilities.
			c := *pspec.Capabilities
			c.Effective, c.Permitted, c.Ambient = nil, nil, nil
			pspec.Capabilities = &c
		}
	}
	var started = make(chan client.Process, 1)
	var stdin io.Reader
	if req.Stdin != nil {
		stdin = &stdinCloser{r: req.Stdin, onEOF: func() {
			p := <-started
			started <- p
			if p != nil {
				_ = p.CloseIO(bg, client.WithStdinCloser)
			}
		}}
	}
	p, err := t.Exec(bg, execID(), pspec, cio.NewCreator(cio.WithStreams(stdin, container.OrDiscard(req.Stdout), container.OrDiscard(req.Stderr))))
	if err != nil {
		close(started)
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	defer p.Delete(bg, client.WithProcessKill)
	statusC, err := p.Wait(bg)
	if err != nil {
		close(started)
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	start := r.Clock.Now()
	if err := p.Start(bg); err != nil {
		close(started)
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	started <- p
	status, timedOut, err := container.Wait(ctx, req.Timeout, statusC, func() { container.KillTree(int(p.Pid()), syscall.SIGKILL) })
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	// Let the output copy finish (a background child holding the pipes
	// open gets a moment, not forever).
	ioDone := make(chan struct{})
	go func() { p.IO().Wait(); close(ioDone) }()
	select {
	case <-ioDone:
	case <-time.After(time.Second):
	}
	code, _, err := status.Result()
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	return container.ExitResult(int(code), timedOut, r.Clock.Now().Sub(start)), nil
}

// Pause implements tartarus.Runtime through the cgroup freezer (idempotent).
func (r *Runtime) Pause(ctx context.Context, id string) error {
	return r.pauseResume(ctx, id, true)
}

// Resume implements tartarus.Runtime (idempotent).
func (r *Runtime) Resume(ctx context.Context, id string) error {
	return r.pauseResume(ctx, id, false)
}

func (r *Runtime) pauseResume(ctx context.Context, id string, pause bool) error {
	ctx = r.ns(context.WithoutCancel(ctx))
	c, _, err := r.load(ctx, id)
	if err != nil {
		return err
	}
	t, st, err := taskStatus(ctx, c)
	if err != nil {
		return err
	}
	return r.PauseResume(id, pause, string(st), func() error {
		if pause {
			return t.Pause(ctx)
		}
		return t.Resume(ctx)
	})
}

// Destroy implements tartarus.Runtime; it runs to the end even when ctx is
// already cancelled.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	if !tartarus.ValidName(id) {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.ns(context.WithoutCancel(ctx)), time.Minute)
	defer cancel()
	c, _, err := r.load(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		r.Activity.Forget(id)
		return r.nets.Destroy(ctx, r.opts.Networks, id)
	}
	if err != nil {
		return err
	}
	if t, st, err := taskStatus(ctx, c); err == nil && t != nil {
		if st == client.Paused {
			_ = t.Resume(ctx)
		}
		if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("destroy %s: %w", id, err)
		}
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	r.Forget(id)
	return r.nets.Destroy(ctx, r.opts.Networks, id)
}

func (r *Runtime) instance(ctx context.Context, c client.Container) (*tartarus.Instance, error) {
	labels, err := c.Labels(ctx)
	if err != nil {
		return nil, err
	}
	in := container.LabeledInstance(c.ID(), labels)
	in.IdleSince = r.Activity.IdleSince(in.ID)
	if info, err := c.Info(ctx); err == nil {
		in.StartedAt = info.CreatedAt
	}
	t, st, err := taskStatus(ctx, c)
	if err != nil {
		return nil, err
	}
	if t != nil {
		in.Pid = int(t.Pid())
	}
	in.State = container.InstanceState(string(st))
	return in, nil
}

// List implements tartarus.Runtime.
func (r *Runtime) List(ctx context.Context) ([]*tartarus.Instance, error) {
	ctx = r.ns(ctx)
	cs, err := r.cli.Containers(ctx, fmt.Sprintf("labels.%q==%s", container.LabelRuntime, Name))
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	out := make([]*tartarus.Instance, 0, len(cs))
	for _, c := range cs {
		in, err := r.instance(ctx, c)
		if errdefs.IsNotFound(err) {
			continue // destroyed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		out = append(out, in)
	}
	return out, nil
}

// Recover implements tartarus.Runtime: running and paused sandboxes are
// adopted, with their networks; the others are removed.
func (r *Runtime) Recover(ctx context.Context) ([]*tartarus.Instance, error) {
	adopted, err := r.Adopt(ctx, r.List, r.Destroy)
	for _, in := range adopted {
		if err := r.nets.Recover(ctx, r.opts.Networks, in.ID); err != nil {
			r.Log.Warn("recover: network not re-attached", "sandbox", in.ID, "err", err)
		}
	}
	return adopted, err
}

// Stats implements tartarus.Runtime from the task's cgroup metrics (v1 or
// v2); CPUPercent is measured since the previous Stats call (0 on the first).
func (r *Runtime) Stats(ctx context.Context, id string) (*tartarus.Stats, error) {
	ctx = r.ns(ctx)
	c, labels, err := r.load(ctx, id)
	if err != nil {
		return nil, err
	}
	t, _, err := taskStatus(ctx, c)
	if err != nil || t == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "stats %s: sandbox is not started", id)
	}
	m, err := t.Metrics(ctx)
	if err != nil {
		return nil, fmt.Errorf("stats %s: %w", id, err)
	}
	data, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		return nil, fmt.Errorf("stats %s: %w", id, err)
	}
	mem, _ := strconv.Atoi(labels[container.LabelMemory])
	st := &tartarus.Stats{MemoryTotalMB: mem}
	var cpuTotal uint64
	switch s := data.(type) {
	case *cgroup1stats.Metrics:
		if s.Memory != nil && s.Memory.Usage != nil {
			st.MemoryUsedMB = int(s.Memory.Usage.Usage >> 20)
		}
		if s.CPU != nil && s.CPU.Usage != nil {
			cpuTotal = s.CPU.Usage.Total
		}
		if s.Pids != nil {
			st.Processes = int(s.Pids.Current)
		}
	case *cgroup2stats.Metrics:
		if s.Memory != nil {
			st.MemoryUsedMB = int(s.Memory.Usage >> 20)
		}
		if s.CPU != nil {
			cpuTotal = s.CPU.UsageUsec * 1000
		}
		if s.Pids != nil {
			st.Processes = int(s.Pids.Current)
		}
	default:
		return nil, fmt.Errorf("stats %s: unknown metrics type %T", id, data)
	}
	r.FillStats(id, st, cpuTotal)
	return st, nil
}
