package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
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
	st := &kampe.ContainerState{ID: info.ID, Name: f.Name, Image: f.Image, Running: f.Running,
		Config: kampe.ContainerConfig{Entrypoint: f.Entrypoint, Cmd: f.Cmd, WorkingDir: f.WorkingDir, User: f.User,
			Env: f.Env, Ports: f.Ports},
		Environment: map[string]string{}, Filesystem: []kampe.FileEntry{}, Processes: []kampe.ProcessInfo{}}
	for _, m := range f.Mounts {
		st.Config.Volumes = append(st.Config.Volumes, m.Destination)
	}
	for _, kv := range f.Env {
		k, v, _ := strings.Cut(kv, "=")
		st.Environment[k] = v
	}
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

// MigrateOptions says where and how Migrate builds the template.
type MigrateOptions struct {
	// DataDir is Tartarus's data directory: the template goes to
	// DataDir/images/templates/<name>/, the layout of package images.
	DataDir string
	// Template is the new template's name; empty means the plan's
	// TargetTemplate.
	Template string
	// Force carries out the move despite changes that need a person (the
	// plan still lists them); without it such a plan stops the move.
	Force bool
	// Replace overwrites an existing template of the same name.
	Replace bool
}

// MigrateResult is what Migrate built.
type MigrateResult struct {
	Plan     *kampe.MigrationPlan `json:"plan"`
	Template string               `json:"template"`
	Dir      string               `json:"dir"`
	RootFS   string               `json:"rootfs"`
	// Bootable is true when the template directory also holds a kernel and
	// initramfs (linked from the base template); Missing says what lacks.
	Bootable bool   `json:"bootable"`
	Missing  string `json:"missing,omitempty"`
	// SkippedEntries counts device nodes and other special files of the
	// container's file system that were not carried.
	SkippedEntries int           `json:"skipped_entries"`
	Duration       time.Duration `json:"duration"`
}

// TemplateManifest is the manifest.json of a migrated template: the fields
// package images reads, plus the container's configuration.
type TemplateManifest struct {
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Digest      string            `json:"digest"`
	Inputs      map[string]string `json:"inputs"`
	BuiltAt     time.Time         `json:"built_at"`
	Container   ContainerManifest `json:"container"`
}

// ContainerManifest is what a migrated template keeps of its container.
// The same JSON is written into the root filesystem as
// /etc/tartarus/container.json.
type ContainerManifest struct {
	SourceID    string   `json:"source_id"`
	SourceName  string   `json:"source_name,omitempty"`
	SourceImage string   `json:"source_image"`
	Entrypoint  []string `json:"entrypoint"`
	Cmd         []string `json:"cmd"`
	WorkingDir  string   `json:"working_dir"`
	User        string   `json:"user,omitempty"`
	Env         []string `json:"env"`
}

// Migrate carries a container into a microVM template: its file system
// (docker export, plus the current content of its volumes), environment,
// entrypoint, command, working directory and user. A plan with changes that
// need a person stops it (ErrFailedPrecondition, with the plan returned)
// unless opts.Force is set.
func (r *Runtime) Migrate(ctx context.Context, containerID string, opts MigrateOptions) (*MigrateResult, error) {
	start := r.now()
	if opts.DataDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "migrate: no data directory")
	}
	info, err := r.inspectAny(ctx, containerID)
	if err != nil {
		return nil, err
	}
	f := r.facts(ctx, info)
	plan := kampe.Analyze(f)
	res := &MigrateResult{Plan: plan, Template: opts.Template}
	if res.Template == "" {
		res.Template = plan.TargetTemplate
	}
	if !tartarus.ValidName(res.Template) {
		return res, tartarus.Errorf(tartarus.ErrInvalid, "migrate: template name %q", res.Template)
	}
	if blocking := plan.Blocking(); len(blocking) > 0 && !opts.Force {
		var lines []string
		for _, c := range blocking {
			lines = append(lines, c.Description)
		}
		return res, tartarus.Errorf(tartarus.ErrFailedPrecondition, "migrate %s: %d change(s) need a person (pass --force to migrate without them): %s",
			containerID, len(blocking), strings.Join(lines, "; "))
	}
	templates := filepath.Join(opts.DataDir, "images", "templates")
	res.Dir = filepath.Join(templates, res.Template)
	if _, err := os.Stat(res.Dir); err == nil && !opts.Replace {
		return res, tartarus.Errorf(tartarus.ErrAlreadyExists, "migrate: template %s (%s)", res.Template, res.Dir)
	}
	if err := os.MkdirAll(templates, 0o755); err != nil {
		return res, err
	}
	work, err := os.MkdirTemp(templates, ".migrate-"+res.Template+"-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return res, err
	}

	// 1. The file system, as the container sees it now.
	rc, err := r.cli.ContainerExport(ctx, info.ID)
	if err != nil {
		return res, fmt.Errorf("migrate %s: export: %w", containerID, err)
	}
	sum := sha256.New()
	res.SkippedEntries, err = kampe.ExtractTar(ctx, io.TeeReader(rc, sum), rootfs)
	rc.Close()
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", containerID, err)
	}
	// docker export leaves volumes out; carry their current content.
	for _, m := range f.Mounts {
		if m.Type != "volume" || m.Source == "" {
			continue
		}
		if err := copyInto(ctx, m.Source, rootfs, m.Destination); err != nil {
			return res, fmt.Errorf("migrate %s: volume %s: %w", containerID, m.Destination, err)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "etc/tartarus"} {
		_ = os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	_ = os.Remove(filepath.Join(rootfs, ".dockerenv"))

	// 2. The configuration, in the image and in the manifest.
	cm := ContainerManifest{SourceID: info.ID, SourceName: f.Name, SourceImage: f.Image, Entrypoint: f.Entrypoint,
		Cmd: f.Cmd, WorkingDir: f.WorkingDir, User: f.User, Env: f.Env}
	cmJSON, _ := json.MarshalIndent(cm, "", "  ")
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "tartarus", "container.json"), cmJSON, 0o644); err != nil {
		return res, err
	}

	// 3. The ext4 image a microVM boots.
	if err := kampe.MakeExt4(ctx, rootfs, filepath.Join(work, "rootfs.ext4"), 256); err != nil {
		return res, fmt.Errorf("migrate %s: %w", containerID, err)
	}
	if err := os.RemoveAll(rootfs); err != nil {
		return res, err
	}
	// The kernel and initramfs are the base template's: a migrated
	// template differs only in its root filesystem.
	base := filepath.Join(templates, "base")
	var missing []string
	for _, name := range []string{"vmlinux", "initrd.img"} {
		if err := linkOrCopy(filepath.Join(base, name), filepath.Join(work, name)); err != nil {
			missing = append(missing, name)
		}
	}
	res.Bootable = len(missing) == 0
	if !res.Bootable {
		res.Missing = fmt.Sprintf("%s of the base template, not found in %s (run `tartarus template build base` first, then migrate again with --replace)",
			strings.Join(missing, " and "), base)
	}
	m := TemplateManifest{Name: res.Template, Digest: "sha256:" + hex.EncodeToString(sum.Sum(nil)), BuiltAt: r.now().UTC(),
		Description: fmt.Sprintf("migrated from container %s (%s)", kampe.TemplateName(f.Name), f.Image),
		Inputs:      map[string]string{"container": info.ID, "image": f.Image, "kernel": "base"}, Container: cm}
	mJSON, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(work, "manifest.json"), append(mJSON, '\n'), 0o644); err != nil {
		return res, err
	}
	if opts.Replace {
		_ = os.RemoveAll(res.Dir)
	}
	if err := os.Rename(work, res.Dir); err != nil {
		return res, fmt.Errorf("migrate %s: %w", containerID, err)
	}
	_ = os.Chmod(res.Dir, 0o755)
	res.RootFS = filepath.Join(res.Dir, "rootfs.ext4")
	res.Duration = r.now().Sub(start)
	return res, nil
}

// copyInto copies the tree at src to dst inside root (cp -a keeps owners,
// modes and links). dst is resolved inside root first, so a symbolic link in
// the exported file system cannot send the copy elsewhere.
func copyInto(ctx context.Context, src, root, dst string) error {
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	rel := strings.TrimPrefix(filepath.Clean("/"+dst), "/")
	if rel == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "volume at /")
	}
	if err := rt.MkdirAll(rel, 0o755); err != nil {
		return err
	}
	// After MkdirAll inside the root, every component of rel is a real
	// directory (os.Root refuses to follow a link out), so the host path
	// below is the same directory.
	if st, err := rt.Lstat(rel); err != nil || !st.IsDir() {
		return fmt.Errorf("%s is not a directory in the image", dst)
	}
	out, err := exec.CommandContext(ctx, "cp", "-a", "--", filepath.Clean(src)+"/.", filepath.Join(root, rel)+"/").CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
