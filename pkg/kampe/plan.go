package kampe

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ContainerFacts is what the migration analysis needs to know about one
// container, independent of the runtime that holds it. The docker and
// containerd drivers fill it from their own inspection.
type ContainerFacts struct {
	ID      string
	Name    string
	Image   string
	Running bool
	// Arch is the image's architecture in Go's naming ("amd64"); empty
	// when unknown.
	Arch   string
	Mounts []Mount
	// NetworkMode is "none", "bridge", "host", "container:<id>" or a
	// network's name.
	NetworkMode string
	PidMode     string
	IpcMode     string
	UTSMode     string
	UsernsMode  string
	Privileged  bool
	Devices     []string
	GPUs        bool
	CapAdd      []string
	SecurityOpt []string
	Sysctls     map[string]string
	Ports       []PortMapping
	MemoryMB    int
	CPUs        float64
	Entrypoint  []string
	Cmd         []string
	WorkingDir  string
	User        string
	Env         []string
	// SizeBytes is the size of the container's root filesystem, when known.
	SizeBytes int64
}

// State is the ContainerState f describes: image, configuration and
// environment, with no files or processes yet (the runtime that holds the
// container adds what it can see of those).
func (f *ContainerFacts) State() *ContainerState {
	st := &ContainerState{ID: f.ID, Name: f.Name, Image: f.Image, Running: f.Running,
		Config: ContainerConfig{Entrypoint: f.Entrypoint, Cmd: f.Cmd, WorkingDir: f.WorkingDir, User: f.User,
			Env: f.Env, Ports: f.Ports},
		Environment: map[string]string{}, Filesystem: []FileEntry{}, Processes: []ProcessInfo{}}
	for _, m := range f.Mounts {
		st.Config.Volumes = append(st.Config.Volumes, m.Destination)
	}
	for _, kv := range f.Env {
		k, v, _ := strings.Cut(kv, "=")
		st.Environment[k] = v
	}
	return st
}

// Mount is one mount of a container.
type Mount struct {
	// Type is "bind", "volume", "tmpfs" or another runtime-specific kind.
	Type        string
	Source      string
	Destination string
	ReadOnly    bool
}

// dangerousBinds are host paths whose bind mount gives a container control
// of the host; a plan flags them as a security change, not only a filesystem one.
var dangerousBinds = []string{"/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock", "/", "/proc", "/sys", "/dev"}

// TemplateName turns a container's name (or id) into a valid template name:
// "migrated-" followed by its lower-case letters, digits, '-', '_' and '.'.
func TemplateName(container string) string {
	var b strings.Builder
	b.WriteString("migrated-")
	for _, c := range strings.ToLower(strings.TrimPrefix(container, "/")) {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if ok && b.Len() < 64 {
			b.WriteRune(c)
		}
	}
	name := b.String()
	if name == "migrated-" || !tartarus.ValidName(name) {
		return "migrated"
	}
	return name
}

// Analyze returns the plan for moving the container f describes to a
// microVM. It is a pure function of f, so the rules are tested without a
// container runtime.
func Analyze(f *ContainerFacts) *MigrationPlan {
	p := &MigrationPlan{
		ContainerID:    f.ID,
		TargetTemplate: TemplateName(firstNonEmpty(f.Name, shortID(f.ID))),
		RiskLevel:      RiskLevelLow,
	}
	add := func(risk RiskLevel, c MigrationChange) {
		p.RequiredChanges = append(p.RequiredChanges, c)
		if risk.rank() > p.RiskLevel.rank() {
			p.RiskLevel = risk
		}
	}

	for _, m := range f.Mounts {
		field := "Mounts[" + m.Destination + "]"
		switch m.Type {
		case "bind":
			add(RiskLevelMedium, MigrationChange{Type: ChangeTypeFilesystem, Field: field, Required: true,
				Description: fmt.Sprintf("host bind mount %s → %s: a microVM cannot see the host's files; copy what it needs into the template or upload it after create", m.Source, m.Destination)})
			if slices.Contains(dangerousBinds, path.Clean(m.Source)) {
				add(RiskLevelHigh, MigrationChange{Type: ChangeTypeSecurity, Field: field, Required: true,
					Description: fmt.Sprintf("bind mount of %s gives the container control of the host; a sandbox will not have it", m.Source)})
			}
		case "volume":
			add(RiskLevelMedium, MigrationChange{Type: ChangeTypeFilesystem, Field: field, Required: true, AutoFix: true,
				Description: fmt.Sprintf("volume at %s: its current content is copied into the template; later writes stay in each sandbox", m.Destination)})
		case "tmpfs":
			add(RiskLevelLow, MigrationChange{Type: ChangeTypeFilesystem, Field: field, AutoFix: true,
				Description: fmt.Sprintf("tmpfs at %s becomes a directory of the sandbox's disk", m.Destination)})
		default:
			add(RiskLevelMedium, MigrationChange{Type: ChangeTypeFilesystem, Field: field, Required: true,
				Description: fmt.Sprintf("%s mount at %s has no microVM equivalent", m.Type, m.Destination)})
		}
	}

	switch nm := f.NetworkMode; {
	case nm == "host":
		add(RiskLevelHigh, MigrationChange{Type: ChangeTypeNetwork, Field: "HostConfig.NetworkMode", Required: true,
			Description: "host network mode is not supported in a microVM: the guest has its own network stack"})
	case strings.HasPrefix(nm, "container:"):
		add(RiskLevelHigh, MigrationChange{Type: ChangeTypeNetwork, Field: "HostConfig.NetworkMode", Required: true,
			Description: fmt.Sprintf("shares the network of %s; a microVM cannot join another container's network namespace", strings.TrimPrefix(nm, "container:"))})
	case nm == "" || nm == "none":
	default:
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeNetwork, Field: "HostConfig.NetworkMode", AutoFix: true,
			Description: fmt.Sprintf("network %q: sandboxes get no network unless asked for one", nm)})
	}
	for _, pm := range f.Ports {
		add(RiskLevelMedium, MigrationChange{Type: ChangeTypeNetwork, Field: "HostConfig.PortBindings", Required: true,
			Description: fmt.Sprintf("published port %d/%s (host %s:%d) has no equivalent; reach the service through the sandbox API or a proxy", pm.ContainerPort, pm.Protocol, pm.HostIP, pm.HostPort)})
	}

	if f.Privileged {
		add(RiskLevelHigh, MigrationChange{Type: ChangeTypeSecurity, Field: "HostConfig.Privileged", Required: true,
			Description: "privileged mode gives access to every host device and kernel interface; a microVM only has its own virtual devices"})
	}
	for _, d := range f.Devices {
		add(RiskLevelHigh, MigrationChange{Type: ChangeTypeDevices, Field: "HostConfig.Devices", Required: true,
			Description: fmt.Sprintf("host device %s cannot be passed into a microVM", d)})
	}
	if f.GPUs {
		add(RiskLevelHigh, MigrationChange{Type: ChangeTypeDevices, Field: "HostConfig.DeviceRequests", Required: true,
			Description: "GPU requests are not supported by the microvm runtime"})
	}
	for _, ns := range []struct{ mode, field, what string }{
		{f.PidMode, "HostConfig.PidMode", "process"}, {f.IpcMode, "HostConfig.IpcMode", "IPC"},
	} {
		if ns.mode == "host" || strings.HasPrefix(ns.mode, "container:") {
			add(RiskLevelHigh, MigrationChange{Type: ChangeTypeSecurity, Field: ns.field, Required: true,
				Description: fmt.Sprintf("shares the %s namespace (%s) with the host or another container; a microVM has its own kernel", ns.what, ns.mode)})
		}
	}
	if f.UTSMode == "host" {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeEnvironment, Field: "HostConfig.UTSMode", AutoFix: true,
			Description: "uses the host's hostname; the sandbox gets its own"})
	}
	if f.UsernsMode != "" && f.UsernsMode != "host" {
		add(RiskLevelMedium, MigrationChange{Type: ChangeTypeSecurity, Field: "HostConfig.UsernsMode", AutoFix: true,
			Description: fmt.Sprintf("user namespace %q: file owners are kept as the image has them, without remapping", f.UsernsMode)})
	}
	for _, c := range f.CapAdd {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeSecurity, Field: "HostConfig.CapAdd", AutoFix: true,
			Description: fmt.Sprintf("capability %s: root in the guest has it, confined to the guest's own kernel", c)})
	}
	for _, o := range f.SecurityOpt {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeSecurity, Field: "HostConfig.SecurityOpt", AutoFix: true,
			Description: fmt.Sprintf("security option %q does not apply: the guest kernel is the isolation boundary", o)})
	}
	for _, k := range slices.Sorted(maps.Keys(f.Sysctls)) {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeResources, Field: "HostConfig.Sysctls", Required: true,
			Description: fmt.Sprintf("sysctl %s=%s must be set in the guest (for example by the entrypoint)", k, f.Sysctls[k])})
	}
	if f.Arch != "" && f.Arch != "amd64" {
		add(RiskLevelHigh, MigrationChange{Type: ChangeTypeEntrypoint, Field: "Image.Architecture", Required: true,
			Description: fmt.Sprintf("image architecture %s; microVM guests here are amd64", f.Arch)})
	}

	if f.MemoryMB == 0 {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeResources, Field: "HostConfig.Memory", AutoFix: true,
			Description: fmt.Sprintf("no memory limit: a sandbox has a fixed size (default %d MiB; choose with --memory)", tartarus.DefaultMemoryMB)})
	} else if f.MemoryMB < tartarus.MinMemoryMB {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeResources, Field: "HostConfig.Memory", AutoFix: true,
			Description: fmt.Sprintf("memory limit %d MiB is below the sandbox minimum of %d MiB", f.MemoryMB, tartarus.MinMemoryMB)})
	}
	if len(f.Entrypoint) == 0 && len(f.Cmd) == 0 {
		add(RiskLevelMedium, MigrationChange{Type: ChangeTypeEntrypoint, Field: "Config.Cmd",
			Description: "neither entrypoint nor command: the template records none, run commands with exec"})
	}
	if f.Running {
		add(RiskLevelLow, MigrationChange{Type: ChangeTypeEntrypoint, AutoFix: true,
			Description: "the container is running: its files are copied as they are now, its processes and memory are not carried; the workload starts anew from its entrypoint"})
	}

	p.EstimatedDowntime = EstimateDowntime(f.SizeBytes)
	p.Recommendations = recommend(f, p)
	return p
}

// EstimateDowntime is how long a move of a root filesystem of size bytes is
// expected to take: exporting and writing an ext4 image at about 50 MB/s on
// the hosts measured, plus a sandbox boot of about 2 s.
func EstimateDowntime(size int64) time.Duration {
	const rate = 50 << 20 // bytes per second
	d := 2*time.Second + time.Duration(float64(size)/rate*float64(time.Second))
	return d.Round(100 * time.Millisecond)
}

func recommend(f *ContainerFacts, p *MigrationPlan) []string {
	var r []string
	if n := len(p.Blocking()); n > 0 {
		r = append(r, fmt.Sprintf("resolve the %d required change(s) that cannot be fixed automatically before migrating, or pass --force to migrate without them", n))
	} else {
		r = append(r, fmt.Sprintf("run `tartarus migrate %s` to build template %s", firstNonEmpty(f.Name, shortID(f.ID)), p.TargetTemplate))
	}
	if f.Running {
		r = append(r, "stop writes to the container (or stop it) before migrating so its files are consistent")
	}
	if f.MemoryMB > 0 {
		r = append(r, fmt.Sprintf("create sandboxes with --memory %d to match the container's limit", max(f.MemoryMB, tartarus.MinMemoryMB)))
	}
	if f.CPUs >= 1 {
		r = append(r, fmt.Sprintf("create sandboxes with --cpus %d to match the container's limit", int(f.CPUs+0.5)))
	}
	return r
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
