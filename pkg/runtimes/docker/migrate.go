package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	rtcontainer "github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// inspectAny inspects any container by id or name (not only sandboxes),
// with its size.
func (r *Runtime) inspectAny(ctx context.Context, ref string) (container.InspectResponse, error) {
	info, _, err := r.cli.ContainerInspectWithRaw(ctx, ref, true)
	if err != nil {
		if isNotFound(err) {
			return info, tartarus.Errorf(tartarus.ErrNotFound, "container %s", ref)
		}
		return info, fmt.Errorf("inspect container %s: %w", ref, err)
	}
	return info, nil
}

func isNotFound(err error) bool {
	return cerrdefs.IsNotFound(err) || err != nil && strings.Contains(err.Error(), "No such container")
}

// facts turns a docker inspection into the runtime-neutral facts the
// migration analysis reads.
func (r *Runtime) facts(ctx context.Context, info container.InspectResponse) *kampe.ContainerFacts {
	f := &kampe.ContainerFacts{ID: info.ID, Name: strings.TrimPrefix(info.Name, "/"), Running: info.State != nil && info.State.Running}
	if info.Config != nil {
		f.Image = info.Config.Image
		f.Entrypoint = info.Config.Entrypoint
		f.Cmd = info.Config.Cmd
		f.WorkingDir = info.Config.WorkingDir
		f.User = info.Config.User
		f.Env = info.Config.Env
	}
	if img, err := r.cli.ImageInspect(ctx, info.Image); err == nil {
		f.Arch = img.Architecture
	}
	for _, m := range info.Mounts {
		f.Mounts = append(f.Mounts, kampe.Mount{Type: string(m.Type), Source: m.Source, Destination: m.Destination, ReadOnly: !m.RW})
	}
	if info.SizeRootFs != nil {
		f.SizeBytes = *info.SizeRootFs
	}
	hc := info.HostConfig
	if hc == nil {
		return f
	}
	for dst := range hc.Tmpfs {
		f.Mounts = append(f.Mounts, kampe.Mount{Type: "tmpfs", Destination: dst})
	}
	f.NetworkMode = string(hc.NetworkMode)
	f.PidMode = string(hc.PidMode)
	f.IpcMode = string(hc.IpcMode)
	f.UTSMode = string(hc.UTSMode)
	f.UsernsMode = string(hc.UsernsMode)
	f.Privileged = hc.Privileged
	for _, d := range hc.Devices {
		f.Devices = append(f.Devices, d.PathOnHost)
	}
	f.GPUs = len(hc.DeviceRequests) > 0
	f.CapAdd = hc.CapAdd
	f.SecurityOpt = hc.SecurityOpt
	f.Sysctls = hc.Sysctls
	f.MemoryMB = int(hc.Memory >> 20)
	f.CPUs = float64(hc.NanoCPUs) / 1e9
	ports := make([]string, 0, len(hc.PortBindings))
	for p := range hc.PortBindings {
		ports = append(ports, string(p))
	}
	sort.Strings(ports)
	for _, p := range ports {
		port := nat.Port(p)
		for _, b := range hc.PortBindings[port] {
			pm := kampe.PortMapping{ContainerPort: port.Int(), Protocol: port.Proto(), HostIP: b.HostIP}
			fmt.Sscan(b.HostPort, &pm.HostPort)
			f.Ports = append(f.Ports, pm)
		}
	}
	return f
}

// MigrateToMicroVM implements kampe.LegacyRuntime: inspect the container
// and return the plan for its move. It changes nothing.
func (r *Runtime) MigrateToMicroVM(ctx context.Context, containerID string) (*kampe.MigrationPlan, error) {
	info, err := r.inspectAny(ctx, containerID)
	if err != nil {
		return nil, err
	}
	return kampe.Analyze(r.facts(ctx, info)), nil
}

// CanMigrate implements kampe.LegacyRuntime: true when the plan has no
// change that needs a person.
func (r *Runtime) CanMigrate(ctx context.Context, containerID string) (bool, error) {
	p, err := r.MigrateToMicroVM(ctx, containerID)
	if err != nil {
		return false, err
	}
	return len(p.Blocking()) == 0, nil
}

// ExportState implements kampe.LegacyRuntime.
func (r *Runtime) ExportState(ctx context.Context, containerID string) (*kampe.ContainerState, error) {
	info, err := r.inspectAny(ctx, containerID)
	if err != nil {
		return nil, err
	}
	f := r.facts(ctx, info)
	st := f.State()
	changes, err := r.cli.ContainerDiff(ctx, info.ID)
	if err != nil {
		return nil, fmt.Errorf("export state %s: diff: %w", containerID, err)
	}
	for _, c := range changes {
		kind := map[container.ChangeType]string{container.ChangeModify: "changed", container.ChangeAdd: "added",
			container.ChangeDelete: "deleted"}[c.Kind]
		st.Filesystem = append(st.Filesystem, kampe.FileEntry{Path: c.Path, Change: kind})
	}
	if f.Running && (info.State == nil || !info.State.Paused) {
		top, err := r.cli.ContainerTop(ctx, info.ID, []string{"-o", "pid,user,args"})
		if err != nil {
			return nil, fmt.Errorf("export state %s: top: %w", containerID, err)
		}
		for _, p := range top.Processes {
			if len(p) < 3 {
				continue
			}
			pi := kampe.ProcessInfo{User: p[1], Command: p[2]}
			fmt.Sscan(p[0], &pi.PID)
			st.Processes = append(st.Processes, pi)
		}
	}
	return st, nil
}

// Migration types, shared by every runtime that migrates (package kampe).
type (
	MigrateOptions    = kampe.MigrateOptions
	MigrateResult     = kampe.MigrateResult
	TemplateManifest  = kampe.TemplateManifest
	ContainerManifest = kampe.ContainerManifest
)

// Migrate carries a container into a microVM template (kampe.BuildTemplate):
// its file system (docker export, plus the current content of its
// volumes), environment, entrypoint, command, working directory and user.
// A plan with changes that need a person stops it (ErrFailedPrecondition,
// with the plan returned) unless opts.Force is set.
func (r *Runtime) Migrate(ctx context.Context, containerID string, opts MigrateOptions) (*MigrateResult, error) {
	info, err := r.inspectAny(ctx, containerID)
	if err != nil {
		return nil, err
	}
	f := r.facts(ctx, info)
	if opts.Clock == nil {
		opts.Clock = r.Clock
	}
	return kampe.BuildTemplate(ctx, f, opts, func(ctx context.Context, rootfs string) (int, string, error) {
		rc, err := r.cli.ContainerExport(ctx, info.ID)
		if err != nil {
			return 0, "", fmt.Errorf("export: %w", err)
		}
		defer rc.Close()
		sum := sha256.New()
		skipped, err := kampe.ExtractTar(ctx, io.TeeReader(rc, sum), rootfs)
		if err != nil {
			return skipped, "", err
		}
		// docker export leaves volumes out; carry their current content.
		for _, m := range f.Mounts {
			if m.Type != "volume" || m.Source == "" {
				continue
			}
			if err := copyInto(ctx, m.Source, rootfs, m.Destination); err != nil {
				return skipped, "", fmt.Errorf("volume %s: %w", m.Destination, err)
			}
		}
		return skipped, "sha256:" + hex.EncodeToString(sum.Sum(nil)), nil
	})
}

// copyInto replaces the directory dst of the tree at root with the content
// of the volume at src, as the container saw it (a volume hides what the
// image has below its mount point). dst is resolved inside root
// (kampe.MkdirInRoot), the volume is read inside src (container.WriteTar)
// and written inside dst (kampe.ExtractTarRoot): a link in the image or in
// the volume is copied as a link, never followed on the host.
func copyInto(ctx context.Context, src, root, dst string) error {
	if strings.Trim(filepath.Clean("/"+dst), "/") == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "volume at /")
	}
	sub, err := kampe.MkdirInRoot(root, dst)
	if err != nil {
		return err
	}
	defer sub.Close()
	d, err := sub.Open(".")
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := sub.RemoveAll(n); err != nil {
			return err
		}
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(rtcontainer.WriteTar(ctx, src, pw)) }()
	_, err = kampe.ExtractTarRoot(ctx, pr, sub)
	pr.CloseWithError(err)
	return err
}
