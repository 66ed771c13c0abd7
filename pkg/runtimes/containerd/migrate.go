package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var _ kampe.LegacyRuntime = (*Runtime)(nil)

// defaultCaps are containerd's default capabilities (oci.WithDefaultSpec);
// anything beyond them counts as added.
var defaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
	"CAP_AUDIT_WRITE"}

// systemMounts are the mounts every OCI container has; they say nothing
// about the workload.
var systemMounts = []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/run"}

// loadAny loads any container of the runtime's namespace, sandbox or not.
func (r *Runtime) loadAny(ctx context.Context, id string) (client.Container, error) {
	c, err := r.cli.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "container %s in namespace %s", id, r.opts.Namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	return c, nil
}

// inspect loads any container of the runtime's namespace (ctx carries it)
// and reads its facts; verb says what for, in errors.
func (r *Runtime) inspect(ctx context.Context, containerID, verb string) (client.Container, *kampe.ContainerFacts, error) {
	c, err := r.loadAny(ctx, containerID)
	if err != nil {
		return nil, nil, err
	}
	f, err := r.facts(ctx, c)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", verb, containerID, err)
	}
	return c, f, nil
}

// facts reads what the migration analysis needs from the container's
// record and OCI spec.
func (r *Runtime) facts(ctx context.Context, c client.Container) (*kampe.ContainerFacts, error) {
	info, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return nil, err
	}
	f := &kampe.ContainerFacts{ID: info.ID, Name: info.ID, Image: info.Image}
	if _, st, err := taskStatus(ctx, c); err == nil {
		f.Running = st == client.Running || st == client.Paused
	}
	if u, err := r.cli.SnapshotService(info.Snapshotter).Usage(ctx, info.SnapshotKey); err == nil {
		f.SizeBytes = u.Size
	}
	if p := spec.Process; p != nil {
		f.Cmd, f.Env, f.WorkingDir = p.Args, p.Env, p.Cwd
		if p.User.UID != 0 || p.User.GID != 0 {
			f.User = fmt.Sprintf("%d:%d", p.User.UID, p.User.GID)
		}
		if p.Capabilities != nil {
			for _, cp := range p.Capabilities.Bounding {
				if !slices.Contains(defaultCaps, cp) {
					f.CapAdd = append(f.CapAdd, strings.TrimPrefix(cp, "CAP_"))
				}
			}
		}
	}
	for _, m := range spec.Mounts {
		if slices.Contains(systemMounts, m.Destination) {
			continue
		}
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		switch {
		case bind:
			f.Mounts = append(f.Mounts, kampe.Mount{Type: "bind", Source: m.Source, Destination: m.Destination,
				ReadOnly: slices.Contains(m.Options, "ro")})
		default:
			f.Mounts = append(f.Mounts, kampe.Mount{Type: m.Type, Source: m.Source, Destination: m.Destination})
		}
	}
	if l := spec.Linux; l != nil {
		ns := map[specs.LinuxNamespaceType]string{}
		for _, n := range l.Namespaces {
			ns[n.Type] = n.Path
		}
		mode := func(t specs.LinuxNamespaceType, private string) string {
			path, ok := ns[t]
			switch {
			case !ok:
				return "host"
			case path != "":
				return "container:" + path
			}
			return private
		}
		f.NetworkMode = mode(specs.NetworkNamespace, "none")
		f.PidMode = mode(specs.PIDNamespace, "")
		f.IpcMode = mode(specs.IPCNamespace, "")
		f.UTSMode = mode(specs.UTSNamespace, "")
		if _, ok := ns[specs.UserNamespace]; ok {
			f.UsernsMode = "private"
		}
		for _, d := range l.Devices {
			f.Devices = append(f.Devices, d.Path)
		}
		f.Sysctls = l.Sysctl
		if res := l.Resources; res != nil {
			allDevices := false
			for _, d := range res.Devices {
				allDevices = allDevices || d.Allow && (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil
			}
			f.Privileged = allDevices && slices.Contains(f.CapAdd, "SYS_ADMIN")
			if res.Memory != nil && res.Memory.Limit != nil && *res.Memory.Limit > 0 {
				f.MemoryMB = int(*res.Memory.Limit >> 20)
			}
			if cpu := res.CPU; cpu != nil && cpu.Quota != nil && cpu.Period != nil && *cpu.Quota > 0 && *cpu.Period > 0 {
				f.CPUs = float64(*cpu.Quota) / float64(*cpu.Period)
			}
		}
	}
	return f, nil
}

// MigrateToMicroVM implements kampe.LegacyRuntime for any container of the
// runtime's namespace: inspect it and return the plan. It changes nothing.
func (r *Runtime) MigrateToMicroVM(ctx context.Context, containerID string) (*kampe.MigrationPlan, error) {
	_, f, err := r.inspect(r.ns(ctx), containerID, "inspect")
	if err != nil {
		return nil, err
	}
	return kampe.Analyze(f), nil
}

// CanMigrate implements kampe.LegacyRuntime.
func (r *Runtime) CanMigrate(ctx context.Context, containerID string) (bool, error) {
	p, err := r.MigrateToMicroVM(ctx, containerID)
	if err != nil {
		return false, err
	}
	return len(p.Blocking()) == 0, nil
}

// ExportState implements kampe.LegacyRuntime. Filesystem stays empty:
// containerd keeps no cheap list of changes against the image.
func (r *Runtime) ExportState(ctx context.Context, containerID string) (*kampe.ContainerState, error) {
	ctx = r.ns(ctx)
	c, f, err := r.inspect(ctx, containerID, "export state")
	if err != nil {
		return nil, err
	}
	st := f.State()
	if t, status, err := taskStatus(ctx, c); err == nil && t != nil && status != client.Stopped {
		pids, err := t.Pids(ctx)
		if err != nil {
			return nil, fmt.Errorf("export state %s: %w", containerID, err)
		}
		for _, p := range pids {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.Pid))
			st.Processes = append(st.Processes, kampe.ProcessInfo{PID: int(p.Pid),
				Command: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))})
		}
	}
	return st, nil
}

// Migrate carries a container of the runtime's namespace into a microVM
// template (kampe.BuildTemplate): its root filesystem snapshot, mounted
// read-only for the copy, and its process configuration.
func (r *Runtime) Migrate(ctx context.Context, containerID string, opts kampe.MigrateOptions) (*kampe.MigrateResult, error) {
	ctx = r.ns(ctx)
	c, f, err := r.inspect(ctx, containerID, "migrate")
	if err != nil {
		return nil, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	if opts.Clock == nil {
		opts.Clock = r.Clock
	}
	return kampe.BuildTemplate(ctx, f, opts, func(ctx context.Context, rootfs string) (int, string, error) {
		var skipped int
		sum := sha256.New()
		copyTree := func(root string, oneFS bool) error {
			// Through a tar stream, so the copy goes through ExtractTar's
			// checks like an export would.
			pr, pw := io.Pipe()
			go func() {
				if oneFS {
					pw.CloseWithError(container.WriteTarOneFileSystem(ctx, root, pw))
				} else {
					pw.CloseWithError(container.WriteTar(ctx, root, pw))
				}
			}()
			var err error
			skipped, err = kampe.ExtractTar(ctx, io.TeeReader(pr, sum), rootfs)
			pr.CloseWithError(err)
			return err
		}
		// A running (or paused) container's snapshot is mounted already,
		// and overlayfs refuses a second mount of the same upper directory:
		// read it through the task's root instead, staying off its /proc,
		// /sys and /dev.
		if t, st, err := taskStatus(ctx, c); err == nil && t != nil && (st == client.Running || st == client.Paused) {
			err := copyTree(fmt.Sprintf("/proc/%d/root", t.Pid()), true)
			return skipped, "sha256:" + hex.EncodeToString(sum.Sum(nil)), err
		}
		mounts, err := r.cli.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
		if err != nil {
			return 0, "", fmt.Errorf("snapshot %s: %w", info.SnapshotKey, err)
		}
		for i := range mounts {
			mounts[i].Options = append(mounts[i].Options, "ro")
		}
		err = mount.WithTempMount(ctx, mounts, func(root string) error { return copyTree(root, false) })
		return skipped, "sha256:" + hex.EncodeToString(sum.Sum(nil)), err
	})
}
