// Package docker runs Tartarus sandboxes as Docker containers through the
// Docker Engine API (the official Go client, with API version negotiation),
// and inspects and migrates existing containers to microVM templates.
//
// A template's root filesystem is imported once as an image
// (`docker import` of a tar stream), tagged tartarus-template/<name>:<digest>.
// Each sandbox is a container named tartarus-<id>, without network, with the
// template's memory and CPU limits, whose init is a shell that waits; labels
// carry what the driver needs to list and recover sandboxes after a restart.
//
// Snapshots are not offered: `docker checkpoint` needs CRIU, which does not
// work on the hosts measured (DESIGN.md); the fingerprint says so.
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
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
}

// Runtime is the Docker driver. Fingerprint, Exec, Signal and the file
// methods are the shared ones of container.Base, over this driver's probe
// and docker exec.
type Runtime struct {
	*rtcontainer.Base
	cli      *client.Client
	opts     Options
	importMu sync.Mutex
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
	r := &Runtime{cli: cli, opts: opts}
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
	return fp, true
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
	pids := int64(4096)
	_, err = r.cli.ContainerCreate(context.WithoutCancel(ctx), &container.Config{
		Image:      ref,
		Cmd:        rtcontainer.InitCommand,
		Env:        rtcontainer.BaseEnv(cfg.ID, cfg.Env),
		Hostname:   cfg.ID,
		WorkingDir: "/",
		Labels:     labels,
	}, &container.HostConfig{
		NetworkMode: "none",
		Resources: container.Resources{Memory: int64(cfg.MemoryMB) << 20, MemorySwap: int64(cfg.MemoryMB) << 20,
			NanoCPUs: int64(cfg.CPUs) * 1e9, PidsLimit: &pids},
		SecurityOpt: []string{"no-new-privileges"},
	}, nil, nil, containerName(cfg.ID))
	if err != nil {
		if cerrdefs.IsConflict(err) || strings.Contains(err.Error(), "already in use") {
			return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
		}
		return "", fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	r.Activity.Touch(cfg.ID)
	return cfg.ID, nil
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
	if err := r.cli.ContainerStart(context.WithoutCancel(ctx), info.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
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
		Cmd: req.Cmd, Env: rtcontainer.EnvList(info.Config.Env, req.Env), WorkingDir: cwd,
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
		return nil
	} else if err != nil {
		return err
	}
	err := r.cli.ContainerRemove(ctx, containerName(id), container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	r.Forget(id)
	return nil
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
	return r.Adopt(ctx, r.List, r.Destroy)
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
