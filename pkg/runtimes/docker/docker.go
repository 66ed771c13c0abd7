// Package docker runs Tartarus sandboxes as Docker containers through the
// Docker Engine API (the official Go client, with API version negotiation),
// and inspects and migrates existing containers to microVM templates.
//
// A template's root filesystem is imported once as an image
// (`docker import` of a tar stream), tagged tartarus-template/<name>:<digest>.
// Each sandbox is a container named tartarus-<id>, without network (or,
// with one, the guest network pkg/netns builds, moved into the container's
// namespace once it starts), with the template's memory and CPU limits,
// whose init is a shell that waits; labels carry what the driver needs to
// list and recover sandboxes after a restart.
//
// Sandboxes are confined (docs/security.md): Docker's default seccomp
// profile, Docker's default capabilities and no others, no new privileges,
// a pids limit and memory without swap from the sandbox's size, no log
// (the driver never reads it: json-file kept up to twice its max-size
// across a rotation, and a flood cost the daemon CPU), and a
// writable-layer size limit where the storage driver has one (overlay2 on
// xfs with project quotas). Root inside is root outside
// unless the daemon runs with userns-remap: Docker has no per-container
// user namespace, so the node's daemon must be started with it (the tests'
// daemon is); the fingerprint says which.
//
// Snapshots are not offered: `docker checkpoint` needs CRIU, which does not
// work on the hosts measured (DESIGN.md); the fingerprint says so.
package docker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	rtcontainer "github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Name is the runtime's name as users choose it.
const Name = "docker"

// Options configures a Runtime.
type Options struct {
	// Host is the daemon's address ("unix:///var/run/docker.sock"); empty
	// means DOCKER_HOST or the default socket.
	Host string
	// CacheDir is where template root filesystems are unpacked before
	// their import (required).
	CacheDir string
	Log      *slog.Logger
	// Clock is the time source for activity and CPU accounting; nil means
	// clock.System{}.
	Clock clock.Clock
	// Networks, when set, gives sandboxes asking for one a network of
	// their own (pkg/netns); nil: none.
	Networks rtcontainer.Networks
	// DiskMB limits each sandbox's writable layer where the storage
	// driver can (zero: DefaultDiskMB).
	DiskMB int
}

// DefaultDiskMB is a sandbox's writable-layer limit by default.
const DefaultDiskMB = 10 << 10

// Runtime is the Docker driver. Fingerprint, Exec, Signal and the file
// methods are the shared ones of container.Base, over this driver's probe
// and docker exec.
type Runtime struct {
	*rtcontainer.Base
	cli      *client.Client
	opts     Options
	nets     rtcontainer.NetworkState
	importMu sync.Mutex

	mu        sync.Mutex
	diskLimit bool // the storage driver takes a size (found by probe)
}

var (
	_ tartarus.Runtime    = (*Runtime)(nil)
	_ kampe.LegacyRuntime = (*Runtime)(nil)
)

// New connects a client to the daemon (lazily: nothing is sent yet).
func New(opts Options) (*Runtime, error) {
	if opts.CacheDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "docker: no cache directory")
	}
	copts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if opts.Host != "" {
		copts = append(copts, client.WithHost(opts.Host))
	}
	cli, err := client.NewClientWithOpts(copts...)
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	if opts.DiskMB == 0 {
		opts.DiskMB = DefaultDiskMB
	}
	r := &Runtime{cli: cli, opts: opts, nets: rtcontainer.NetworkState{Dir: filepath.Join(opts.CacheDir, "networks")}}
	r.Base = rtcontainer.NewBase(rtcontainer.BaseConfig{Name: Name, Log: opts.Log, Clock: opts.Clock, Open: r.open, Probe: r.probe})
	return r, nil
}

var _ tartarus.RuntimeCloser = (*Runtime)(nil)

// Close lets go of the daemon connection; containers keep running.
func (r *Runtime) Close() error { return r.cli.Close() }

// Name implements tartarus.Runtime.
func (r *Runtime) Name() string { return Name }

func containerName(id string) string { return "tartarus-" + id }

// probe is the fingerprint (container.ProbeFunc): the daemon must answer.
func (r *Runtime) probe(ctx context.Context) (*tartarus.Fingerprint, bool) {
	cpus, mem := rtcontainer.HostResources()
	fp := &tartarus.Fingerprint{Runtime: Name, Accel: "runc", HostCPUs: cpus, HostMemoryMB: mem, MaxCPUs: cpus, MaxMemoryMB: mem,
		Capabilities: tartarus.Capabilities{Pause: true, Snapshot: false, Signal: true, Files: true, Recover: true},
		Details: map[string]string{"host": r.cli.DaemonHost(),
			"snapshot": "not offered: docker checkpoint needs CRIU, which does not work on this kernel"}}
	v, err := r.cli.ServerVersion(ctx)
	if err != nil {
		fp.Reason = fmt.Sprintf("docker daemon at %s does not answer: %v", r.cli.DaemonHost(), err)
		// Not kept: the daemon may come up later.
		return fp, false
	}
	fp.Available = true
	fp.Details["version"] = v.Version
	fp.Details["api_version"] = r.cli.ClientVersion()
	info, err := r.cli.Info(ctx)
	if err != nil {
		fp.Available, fp.Reason = false, fmt.Sprintf("docker daemon at %s: info: %v", r.cli.DaemonHost(), err)
		return fp, false
	}
	r.jail(fp, info)
	fp.Capabilities.Network = r.opts.Networks != nil
	if r.opts.Networks == nil {
		fp.Details["network"] = "no network: this node was started without a network uplink"
	}
	return fp, true
}

// jail fills the fingerprint's confinement from the daemon's info, and
// notes whether the storage driver takes a size limit.
func (r *Runtime) jail(fp *tartarus.Fingerprint, info system.Info) {
	j := &tartarus.JailInfo{Enabled: true, CgroupVersion: "v" + cmp.Or(info.CgroupVersion, "1")}
	var userns bool
	for _, o := range info.SecurityOptions {
		switch {
		case strings.HasPrefix(o, "name=seccomp"):
			j.Seccomp = !strings.Contains(o, "profile=unconfined")
		case o == "name=userns":
			userns = true
		}
	}
	fp.Details["seccomp"] = "off: the daemon has no seccomp"
	if j.Seccomp {
		fp.Details["seccomp"] = "Docker's default profile"
	}
	// With userns-remap the daemon's root is <data-root>/<uid>.<gid>.
	if base, ok := remapBase(info.DockerRootDir); userns && ok {
		j.UIDRange = fmt.Sprintf("%d-%d", base, base+65535)
		fp.Details["userns"] = fmt.Sprintf("the daemon's userns-remap: root inside is uid %d outside", base)
	} else if userns {
		fp.Details["userns"] = "the daemon's userns-remap (range not shown by the daemon)"
	} else {
		fp.Details["userns"] = "off: the daemon runs without userns-remap, so root inside is root outside; start dockerd with --userns-remap=default"
		r.Log.Warn("docker sandboxes run root as host root: the daemon has no userns-remap (start dockerd with --userns-remap=default)")
	}
	backing := ""
	for _, kv := range info.DriverStatus {
		if kv[0] == "Backing Filesystem" {
			backing = kv[1]
		}
	}
	disk := info.Driver == "overlay2" && backing == "xfs"
	if disk {
		fp.Details["disk_limit"] = fmt.Sprintf("%d MiB per sandbox (overlay2 on xfs; needs the pquota mount option)", r.opts.DiskMB)
	} else {
		fp.Details["disk_limit"] = fmt.Sprintf("none: storage driver %s on %s has no per-container size limit", info.Driver, cmp.Or(backing, "an unknown filesystem"))
	}
	fp.Details["log"] = "none: the init's output is discarded"
	r.mu.Lock()
	r.diskLimit = disk
	r.mu.Unlock()
	fp.Jail = j
}

// remapBase reads the remapped root's host uid from the daemon's root
// directory (".../100000.100000").
func remapBase(rootDir string) (int, bool) {
	u, _, ok := strings.Cut(filepath.Base(rootDir), ".")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(u)
	return n, err == nil && n > 0
}

// ensureImage imports the template's root filesystem unless it is there.
func (r *Runtime) ensureImage(ctx context.Context, img *tartarus.Image) (string, error) {
	ref, err := rtcontainer.ImageRef(img)
	if err != nil {
		return "", err
	}
	r.importMu.Lock()
	defer r.importMu.Unlock()
	if _, err := r.cli.ImageInspect(ctx, ref); err == nil {
		return ref, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspect image %s: %w", ref, err)
	}
	dir, err := rtcontainer.UnpackImage(ctx, img, r.opts.CacheDir)
	if err != nil {
		return "", err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(rtcontainer.WriteTar(ctx, dir, pw)) }()
	body, err := r.cli.ImageImport(ctx, image.ImportSource{Source: pr, SourceName: "-"}, ref, image.ImportOptions{
		Message: "tartarus template " + img.Name,
	})
	if err != nil {
		pr.CloseWithError(err)
		return "", fmt.Errorf("import template %s: %w", img.Name, err)
	}
	defer body.Close()
	if err := readProgress(body); err != nil {
		return "", fmt.Errorf("import template %s: %w", img.Name, err)
	}
	r.Log.Info("imported template", "template", img.Name, "ref", ref)
	return ref, nil
}

// readProgress drains a JSON progress stream and returns its error, if any.
func readProgress(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
	}
}

// Create implements tartarus.Runtime: import the template if needed, then
// create (not start) the container.
func (r *Runtime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	if err := r.CheckCreate(ctx, cfg); err != nil {
		return "", err
	}
	ref, err := r.ensureImage(ctx, cfg.Image)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	labels := rtcontainer.SandboxLabels(Name, cfg)
	labels[rtcontainer.LabelSandbox] = cfg.ID
	if _, err := r.nets.Create(ctx, r.opts.Networks, Name, cfg.ID, cfg.Network); err != nil {
		return "", err
	}
	ccfg := &container.Config{
		Image:      ref,
		Cmd:        rtcontainer.InitCommand,
		Env:        rtcontainer.BaseEnv(cfg.ID, cfg.Env),
		Hostname:   cfg.ID,
		WorkingDir: "/",
		Labels:     labels,
	}
	hc := r.hostConfig(cfg)
	_, err = r.cli.ContainerCreate(context.WithoutCancel(ctx), ccfg, hc, nil, nil, containerName(cfg.ID))
	if err != nil && hc.StorageOpt != nil && strings.Contains(err.Error(), "pquota") {
		// xfs mounted without project quotas: no size limit after all.
		r.Log.Warn("the storage driver takes no size limit (xfs without pquota); sandboxes' writable layers are not limited", "err", err)
		r.mu.Lock()
		r.diskLimit = false
		r.mu.Unlock()
		hc.StorageOpt = nil
		_, err = r.cli.ContainerCreate(context.WithoutCancel(ctx), ccfg, hc, nil, nil, containerName(cfg.ID))
	}
	if err != nil {
		if derr := r.nets.Destroy(context.WithoutCancel(ctx), r.opts.Networks, cfg.ID); derr != nil {
			r.Log.Warn("create failed; its network stays", "sandbox", cfg.ID, "err", derr)
		}
		if cerrdefs.IsConflict(err) || strings.Contains(err.Error(), "already in use") {
			return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
		}
		return "", fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	r.Activity.Touch(cfg.ID)
	return cfg.ID, nil
}

// hostConfig is the sandbox's confinement (see the package comment).
func (r *Runtime) hostConfig(cfg *tartarus.VMConfig) *container.HostConfig {
	pids := rtcontainer.PidsLimit(cfg.MemoryMB)
	hc := &container.HostConfig{
		// A network, when asked for, is moved in after the start.
		NetworkMode: "none",
		Resources: container.Resources{Memory: int64(cfg.MemoryMB) << 20, MemorySwap: int64(cfg.MemoryMB) << 20,
			NanoCPUs: int64(cfg.CPUs) * 1e9, PidsLimit: &pids},
		// The daemon's default seccomp profile applies unless unconfined
		// is asked for, which it never is.
		SecurityOpt: []string{"no-new-privileges"},
		CapDrop:     []string{"ALL"},
		CapAdd:      rtcontainer.DefaultCaps,
		LogConfig:   container.LogConfig{Type: "none"},
	}
	r.mu.Lock()
	if r.diskLimit {
		hc.StorageOpt = map[string]string{"size": fmt.Sprintf("%dM", r.opts.DiskMB)}
	}
	r.mu.Unlock()
	if r.nets.Has(cfg.ID) {
		hc.Binds = []string{r.nets.ResolvConfPath(cfg.ID) + ":/etc/resolv.conf:ro"}
	}
	return hc
}

// inspect returns the sandbox's container; an unknown one is ErrNotFound.
func (r *Runtime) inspect(ctx context.Context, id string) (container.InspectResponse, error) {
	if !tartarus.ValidName(id) {
		return container.InspectResponse{}, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %q", id)
	}
	info, err := r.cli.ContainerInspect(ctx, containerName(id))
	if cerrdefs.IsNotFound(err) || err == nil && info.Config.Labels[rtcontainer.LabelRuntime] != Name {
		return container.InspectResponse{}, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	if err != nil {
		return container.InspectResponse{}, fmt.Errorf("sandbox %s: %w", id, err)
	}
	return info, nil
}

// Start implements tartarus.Runtime.
func (r *Runtime) Start(ctx context.Context, id string) error {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	if info.State.Running {
		return nil
	}
	bg := context.WithoutCancel(ctx)
	if err := r.cli.ContainerStart(bg, info.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	if r.nets.Has(id) {
		// Docker cannot start a container in a namespace of ours; the
		// network moves into the one it made.
		info, err := r.cli.ContainerInspect(bg, info.ID)
		if err == nil {
			err = r.nets.Attach(bg, r.opts.Networks, id, info.State.Pid)
		}
		if err != nil {
			_ = r.cli.ContainerKill(bg, info.ID, "KILL")
			return fmt.Errorf("start %s: %w", id, err)
		}
	}
	r.Activity.Touch(id)
	return nil
}

// state is the container's state as container.Base's helpers name it.
func state(info container.InspectResponse) string {
	switch {
	case info.State.Paused:
		return "paused"
	case info.State.Running:
		return "running"
	}
	return info.State.Status
}

// open returns the docker exec of a running sandbox (container.OpenFunc).
func (r *Runtime) open(ctx context.Context, id string) (rtcontainer.ExecFunc, error) {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := rtcontainer.RequireRunning(id, state(info)); err != nil {
		return nil, err
	}
	return func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		return r.exec(ctx, info, req)
	}, nil
}

// exec runs req in the container. A timeout or cancel kills the command's
// process and its descendants from the host (the exec's host pid is known).
func (r *Runtime) exec(ctx context.Context, info container.InspectResponse, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	cwd, err := rtcontainer.CheckExec(req)
	if err != nil {
		return nil, err
	}
	id := info.Config.Labels[rtcontainer.LabelSandbox]
	// The exec's own calls use a context that outlives ctx, so a cancel
	// kills the command instead of abandoning it.
	bg := context.WithoutCancel(ctx)
	created, err := r.cli.ContainerExecCreate(bg, info.ID, container.ExecOptions{
		Cmd: req.Cmd, Env: rtcontainer.EnvList(info.Config.Env, req.Env), WorkingDir: cwd, User: req.User,
		AttachStdin: req.Stdin != nil, AttachStdout: true, AttachStderr: true,
	})
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	start := r.Clock.Now()
	hr, err := r.cli.ContainerExecAttach(bg, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	defer hr.Close()
	if req.Stdin != nil {
		go func() {
			_, _ = io.Copy(hr.Conn, req.Stdin)
			_ = hr.CloseWrite()
		}()
	}
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(rtcontainer.OrDiscard(req.Stdout), rtcontainer.OrDiscard(req.Stderr), hr.Reader)
		done <- err
	}()
	err, timedOut, ctxErr := rtcontainer.Wait(ctx, req.Timeout, done, func() { r.killExec(bg, created.ID) })
	if ctxErr != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, ctxErr)
	}
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	// The stream can end a moment before the daemon records the exit code.
	var ins container.ExecInspect
	for i := 0; i < 100; i++ {
		if ins, err = r.cli.ContainerExecInspect(bg, created.ID); err != nil {
			return nil, fmt.Errorf("exec in %s: %w", id, err)
		}
		if !ins.Running {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return rtcontainer.ExitResult(ins.ExitCode, timedOut, r.Clock.Now().Sub(start)), nil
}

func (r *Runtime) killExec(ctx context.Context, execID string) {
	for i := 0; i < 200; i++ {
		ins, err := r.cli.ContainerExecInspect(ctx, execID)
		if err != nil || !ins.Running && ins.Pid == 0 && i > 50 {
			return
		}
		if ins.Pid > 0 {
			rtcontainer.KillTree(ins.Pid, syscall.SIGKILL)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Pause implements tartarus.Runtime through the cgroup freezer (idempotent).
func (r *Runtime) Pause(ctx context.Context, id string) error {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	return r.PauseResume(id, true, state(info), func() error {
		return r.cli.ContainerPause(context.WithoutCancel(ctx), info.ID)
	})
}

// Resume implements tartarus.Runtime (idempotent).
func (r *Runtime) Resume(ctx context.Context, id string) error {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	return r.PauseResume(id, false, state(info), func() error {
		return r.cli.ContainerUnpause(context.WithoutCancel(ctx), info.ID)
	})
}

// Destroy implements tartarus.Runtime; it runs to the end even when ctx is
// already cancelled.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	if !tartarus.ValidName(id) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if _, err := r.inspect(ctx, id); errors.Is(err, tartarus.ErrNotFound) {
		r.Activity.Forget(id)
		return r.nets.Destroy(ctx, r.opts.Networks, id)
	} else if err != nil {
		return err
	}
	err := r.cli.ContainerRemove(ctx, containerName(id), container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	r.Forget(id)
	return r.nets.Destroy(ctx, r.opts.Networks, id)
}

func (r *Runtime) containers(ctx context.Context) ([]container.Summary, error) {
	list, err := r.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", rtcontainer.LabelRuntime+"="+Name))})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return list, nil
}

func (r *Runtime) instance(c container.Summary) *tartarus.Instance {
	in := rtcontainer.LabeledInstance(c.Labels[rtcontainer.LabelSandbox], c.Labels)
	in.State = rtcontainer.InstanceState(c.State)
	in.StartedAt = time.Unix(c.Created, 0)
	in.IdleSince = r.Activity.IdleSince(in.ID)
	return in
}

// List implements tartarus.Runtime.
func (r *Runtime) List(ctx context.Context) ([]*tartarus.Instance, error) {
	list, err := r.containers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*tartarus.Instance, 0, len(list))
	for _, c := range list {
		out = append(out, r.instance(c))
	}
	return out, nil
}

// Recover implements tartarus.Runtime: running and paused sandbox
// containers are adopted; the others are removed.
func (r *Runtime) Recover(ctx context.Context) ([]*tartarus.Instance, error) {
	adopted, err := r.Adopt(ctx, r.List, r.Destroy)
	for _, in := range adopted {
		if err := r.nets.Recover(ctx, r.opts.Networks, in.ID); err != nil {
			r.Log.Warn("recover: network not re-attached", "sandbox", in.ID, "err", err)
		}
	}
	return adopted, err
}

// Stats implements tartarus.Runtime from the daemon's one-shot stats;
// CPUPercent is measured since the previous Stats call (0 on the first).
func (r *Runtime) Stats(ctx context.Context, id string) (*tartarus.Stats, error) {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return nil, err
	}
	resp, err := r.cli.ContainerStatsOneShot(ctx, info.ID)
	if err != nil {
		return nil, fmt.Errorf("stats %s: %w", id, err)
	}
	defer resp.Body.Close()
	var s container.StatsResponse
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("stats %s: %w", id, err)
	}
	mem, _ := strconv.Atoi(info.Config.Labels[rtcontainer.LabelMemory])
	st := &tartarus.Stats{MemoryUsedMB: int(s.MemoryStats.Usage >> 20), MemoryTotalMB: mem, Processes: int(s.PidsStats.Current)}
	r.FillStats(id, st, s.CPUStats.CPUUsage.TotalUsage)
	return st, nil
}

// ImportTemplate imports img's root filesystem as a Docker image (once)
// and returns its reference, so ordinary containers can run the template.
func (r *Runtime) ImportTemplate(ctx context.Context, img *tartarus.Image) (string, error) {
	return r.ensureImage(ctx, img)
}
