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

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	rtcontainer "github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Name is the runtime's name as users choose it.
const Name = "docker"

// Labels the driver sets on its containers.
const (
	labelRuntime  = "tartarus.runtime"
	labelSandbox  = "tartarus.sandbox"
	labelTemplate = "tartarus.template"
	labelCPUs     = "tartarus.cpus"
	labelMemory   = "tartarus.memory_mb"
)

// Options configures a Runtime.
type Options struct {
	// Host is the daemon's address ("unix:///var/run/docker.sock"); empty
	// means DOCKER_HOST or the default socket.
	Host string
	// CacheDir is where template root filesystems are unpacked before
	// their import (required).
	CacheDir string
	Log      *slog.Logger
	// Now is the clock for activity and CPU accounting; nil means time.Now.
	Now func() time.Time
}

// Runtime is the Docker driver.
type Runtime struct {
	rtcontainer.SandboxFiles
	cli      *client.Client
	opts     Options
	log      *slog.Logger
	now      func() time.Time
	act      *rtcontainer.Activity
	importMu sync.Mutex

	mu  sync.Mutex
	fp  *tartarus.Fingerprint
	cpu map[string]cpuSample
}

type cpuSample struct {
	at    time.Time
	total uint64
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
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Runtime{cli: cli, opts: opts, log: opts.Log.With("runtime", Name), now: opts.Now,
		act: rtcontainer.NewActivity(opts.Now), cpu: map[string]cpuSample{}}
	r.SandboxFiles = rtcontainer.SandboxFiles{Open: r.files}
	return r, nil
}

// Close lets go of the daemon connection; containers keep running.
func (r *Runtime) Close() error { return r.cli.Close() }

// Name implements tartarus.Runtime.
func (r *Runtime) Name() string { return Name }

func containerName(id string) string { return "tartarus-" + id }

// Fingerprint implements tartarus.Runtime: the daemon must answer.
func (r *Runtime) Fingerprint(ctx context.Context) (*tartarus.Fingerprint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fp != nil {
		fp := *r.fp
		return &fp, nil
	}
	cpus, mem := rtcontainer.HostResources()
	fp := &tartarus.Fingerprint{Runtime: Name, Accel: "runc", HostCPUs: cpus, HostMemoryMB: mem, MaxCPUs: cpus, MaxMemoryMB: mem,
		Capabilities: tartarus.Capabilities{Pause: true, Snapshot: false, Signal: true, Files: true, Recover: true},
		Details: map[string]string{"host": r.cli.DaemonHost(),
			"snapshot": "not offered: docker checkpoint needs CRIU, which does not work on this kernel"}}
	v, err := r.cli.ServerVersion(ctx)
	if err != nil {
		fp.Reason = fmt.Sprintf("docker daemon at %s does not answer: %v", r.cli.DaemonHost(), err)
		// Not cached: the daemon may come up later.
		return fp, nil
	}
	fp.Available = true
	fp.Details["version"] = v.Version
	fp.Details["api_version"] = r.cli.ClientVersion()
	r.fp = fp
	c := *fp
	return &c, nil
}

// imageRef is the tag a template is imported under.
func imageRef(img *tartarus.Image) (string, error) {
	key, err := rtcontainer.ImageKey(img)
	if err != nil {
		return "", err
	}
	return "tartarus-template/" + img.Name + ":" + strings.TrimPrefix(key, img.Name+"-"), nil
}

// ensureImage imports the template's root filesystem unless it is there.
func (r *Runtime) ensureImage(ctx context.Context, img *tartarus.Image) (string, error) {
	ref, err := imageRef(img)
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
	r.log.Info("imported template", "template", img.Name, "ref", ref)
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

func baseEnv(id string, env map[string]string) []string {
	return rtcontainer.EnvList([]string{rtcontainer.DefaultPath, "HOME=/root", "HOSTNAME=" + id}, env)
}

// Create implements tartarus.Runtime: import the template if needed, then
// create (not start) the container.
func (r *Runtime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	fp, err := r.Fingerprint(ctx)
	if err != nil {
		return "", err
	}
	if !fp.Available {
		return "", tartarus.Errorf(tartarus.ErrUnavailable, "docker: %s", fp.Reason)
	}
	if err := rtcontainer.CheckLimits(fp, cfg); err != nil {
		return "", err
	}
	ref, err := r.ensureImage(ctx, cfg.Image)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	tmpl := cfg.Template
	if tmpl == "" {
		tmpl = cfg.Image.Name
	}
	pids := int64(4096)
	_, err = r.cli.ContainerCreate(context.WithoutCancel(ctx), &container.Config{
		Image:      ref,
		Cmd:        rtcontainer.InitCommand,
		Env:        baseEnv(cfg.ID, cfg.Env),
		Hostname:   cfg.ID,
		WorkingDir: "/",
		Labels: map[string]string{labelRuntime: Name, labelSandbox: cfg.ID, labelTemplate: tmpl,
			labelCPUs: strconv.Itoa(cfg.CPUs), labelMemory: strconv.Itoa(cfg.MemoryMB)},
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
	r.act.Touch(cfg.ID)
	return cfg.ID, nil
}

// inspect returns the sandbox's container; an unknown one is ErrNotFound.
func (r *Runtime) inspect(ctx context.Context, id string) (container.InspectResponse, error) {
	if !tartarus.ValidName(id) {
		return container.InspectResponse{}, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %q", id)
	}
	info, err := r.cli.ContainerInspect(ctx, containerName(id))
	if cerrdefs.IsNotFound(err) || err == nil && info.Config.Labels[labelRuntime] != Name {
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
	r.act.Touch(id)
	return nil
}

func (r *Runtime) requireRunning(ctx context.Context, id string) (container.InspectResponse, error) {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return info, err
	}
	switch {
	case info.State.Paused:
		return info, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is paused", id)
	case !info.State.Running:
		return info, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, info.State.Status)
	}
	return info, nil
}

// Exec implements tartarus.Runtime through docker exec.
func (r *Runtime) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	info, err := r.requireRunning(ctx, id)
	if err != nil {
		return nil, err
	}
	end := r.act.Begin(id)
	defer end()
	return r.exec(ctx, info, req)
}

// exec runs req in the container. A timeout or cancel kills the command's
// process and its descendants from the host (the exec's host pid is known).
func (r *Runtime) exec(ctx context.Context, info container.InspectResponse, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	if len(req.Cmd) == 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "exec: empty command")
	}
	if err := tartarus.ValidEnv(req.Env); err != nil {
		return nil, err
	}
	id := info.Config.Labels[labelSandbox]
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
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
	start := r.now()
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
		_, err := stdcopy.StdCopy(orDiscard(req.Stdout), orDiscard(req.Stderr), hr.Reader)
		done <- err
	}()
	var timeout <-chan time.Time
	if req.Timeout > 0 {
		t := time.NewTimer(req.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	res := &tartarus.ExecResult{}
	select {
	case err = <-done:
	case <-timeout:
		res.TimedOut = true
		r.killExec(bg, created.ID)
		err = <-done
	case <-ctx.Done():
		r.killExec(bg, created.ID)
		<-done
		return nil, fmt.Errorf("exec in %s: %w", id, ctx.Err())
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
	res.Duration = r.now().Sub(start)
	res.ExitCode = ins.ExitCode
	if res.TimedOut {
		res.ExitCode = 128 + int(syscall.SIGKILL)
	}
	if res.ExitCode > 128 {
		res.Signal = syscall.Signal(res.ExitCode - 128).String()
	}
	return res, nil
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

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// Signal implements tartarus.Runtime: kill(-1) from inside the container
// reaches every process but init and the sender.
func (r *Runtime) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	name, err := rtcontainer.SignalName(sig)
	if err != nil {
		return err
	}
	info, err := r.requireRunning(ctx, id)
	if err != nil {
		return err
	}
	res, err := r.exec(ctx, info, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", `kill -s "$1" -1 2>/dev/null; exit 0`, "sh", name}})
	if err != nil {
		return fmt.Errorf("signal %s: %w", id, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("signal %s: exit code %d", id, res.ExitCode)
	}
	return nil
}

// Pause implements tartarus.Runtime through the cgroup freezer (idempotent).
func (r *Runtime) Pause(ctx context.Context, id string) error {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	if info.State.Paused {
		return nil
	}
	if !info.State.Running {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "pause %s: sandbox is %s", id, info.State.Status)
	}
	if err := r.cli.ContainerPause(context.WithoutCancel(ctx), info.ID); err != nil {
		return fmt.Errorf("pause %s: %w", id, err)
	}
	r.act.Touch(id)
	return nil
}

// Resume implements tartarus.Runtime (idempotent).
func (r *Runtime) Resume(ctx context.Context, id string) error {
	info, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	if !info.State.Paused {
		if info.State.Running {
			return nil
		}
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "resume %s: sandbox is %s", id, info.State.Status)
	}
	if err := r.cli.ContainerUnpause(context.WithoutCancel(ctx), info.ID); err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	r.act.Touch(id)
	return nil
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
		r.act.Forget(id)
		return nil
	} else if err != nil {
		return err
	}
	err := r.cli.ContainerRemove(ctx, containerName(id), container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	r.act.Forget(id)
	r.mu.Lock()
	delete(r.cpu, id)
	r.mu.Unlock()
	return nil
}

func (r *Runtime) containers(ctx context.Context) ([]container.Summary, error) {
	list, err := r.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", labelRuntime+"="+Name))})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return list, nil
}

func (r *Runtime) instance(c container.Summary) *tartarus.Instance {
	id := c.Labels[labelSandbox]
	cpus, _ := strconv.Atoi(c.Labels[labelCPUs])
	mem, _ := strconv.Atoi(c.Labels[labelMemory])
	in := &tartarus.Instance{ID: id, Template: c.Labels[labelTemplate], CPUs: cpus, MemoryMB: mem,
		StartedAt: time.Unix(c.Created, 0), IdleSince: r.act.IdleSince(id)}
	switch c.State {
	case "running":
		in.State = tartarus.InstanceRunning
	case "paused":
		in.State = tartarus.InstancePaused
	case "created":
		in.State = tartarus.InstanceCreated
	default:
		in.State = tartarus.InstanceStopped
	}
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
	list, err := r.containers(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	var adopted []*tartarus.Instance
	for _, c := range list {
		in := r.instance(c)
		if in.State == tartarus.InstanceRunning || in.State == tartarus.InstancePaused {
			adopted = append(adopted, in)
			continue
		}
		r.log.Info("recover: removing sandbox that no longer runs", "sandbox", in.ID, "state", c.State)
		if err := r.Destroy(ctx, in.ID); err != nil {
			r.log.Warn("recover: cleanup failed", "sandbox", in.ID, "err", err)
		}
	}
	return adopted, nil
}

func (r *Runtime) files(ctx context.Context, id string) (rtcontainer.Files, func(), error) {
	info, err := r.requireRunning(ctx, id)
	if err != nil {
		return rtcontainer.Files{}, nil, err
	}
	end := r.act.Begin(id)
	return rtcontainer.Files{Exec: func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		return r.exec(ctx, info, req)
	}}, end, nil
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
	mem, _ := strconv.Atoi(info.Config.Labels[labelMemory])
	now := r.now()
	st := &tartarus.Stats{MemoryUsedMB: int(s.MemoryStats.Usage >> 20), MemoryTotalMB: mem, Processes: int(s.PidsStats.Current)}
	if t := r.act.IdleSince(id); t != nil {
		st.LastActivityAt = *t
	} else {
		st.LastActivityAt = now
	}
	total := s.CPUStats.CPUUsage.TotalUsage
	r.mu.Lock()
	if prev, ok := r.cpu[id]; ok && now.After(prev.at) && total >= prev.total {
		st.CPUPercent = float64(total-prev.total) / float64(now.Sub(prev.at).Nanoseconds()) * 100
	}
	r.cpu[id] = cpuSample{at: now, total: total}
	r.mu.Unlock()
	return st, nil
}

// ImportTemplate imports img's root filesystem as a Docker image (once)
// and returns its reference, so ordinary containers can run the template.
func (r *Runtime) ImportTemplate(ctx context.Context, img *tartarus.Image) (string, error) {
	return r.ensureImage(ctx, img)
}
