package tartarus

import (
	"context"
	"io"
	"os"
	"syscall"
	"time"
)

// Runtime is one isolation backend (QEMU microVM, gVisor, Docker, containerd)
// driven by a node agent. Every method that does I/O takes ctx first; a
// sandbox's life is never tied to ctx: cancelling a Create or Exec call never
// leaks a VM, and Destroy cleans up even when ctx is already done.
//
// Implementations must pass the conformance suite in pkg/runtimes/runtimetest.
// A capability the backend truly lacks is declared in Fingerprint and its
// method returns an error wrapping ErrNotImplemented, never a silent no-op.
type Runtime interface {
	// Name is the runtime's name as users choose it: "microvm", "gvisor", …
	Name() string

	// Fingerprint says whether and how this host can run the backend. It
	// is cheap after the first call (probes are cached).
	Fingerprint(ctx context.Context) (*Fingerprint, error)

	// Create prepares a sandbox (disk overlay, state directory) without
	// running it and returns its id, which is cfg.ID.
	Create(ctx context.Context, cfg *VMConfig) (string, error)

	// Start boots a created sandbox and returns once its guest agent answers.
	Start(ctx context.Context, id string) error

	// Exec runs a command in the sandbox, streaming its stdio through req's
	// readers and writers, and returns once it has exited. Cancelling ctx
	// kills the command's process group.
	Exec(ctx context.Context, id string, req *ExecRequest) (*ExecResult, error)

	// Signal sends sig to every process in the sandbox (in a microVM every
	// guest process but the guest agent; in a container the processes
	// started by Exec).
	Signal(ctx context.Context, id string, sig syscall.Signal) error

	// Pause stops the sandbox's vCPUs (or freezes its processes); its memory
	// stays. Resume continues it.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error

	// Destroy stops the sandbox and removes every process, socket, overlay
	// and temporary file it had. Destroying an unknown id is not an error.
	Destroy(ctx context.Context, id string) error

	// List returns the sandboxes this runtime holds, with IdleSince.
	List(ctx context.Context) ([]*Instance, error)

	// Recover adopts the sandboxes that still run after the node agent
	// restarted, and cleans up the remains of those that do not. It returns
	// the adopted ones; they are usable afterwards as if never interrupted.
	Recover(ctx context.Context) ([]*Instance, error)

	// ReadFile streams a file out of the sandbox. The caller closes it.
	ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error)

	// WriteFile streams r into a file in the sandbox, creating parent
	// directories, replacing the file atomically.
	WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error

	// ListFiles lists a directory in the sandbox.
	ListFiles(ctx context.Context, id, path string) ([]FileInfo, error)

	// Stats reports the sandbox's resource use and the guest's last activity.
	Stats(ctx context.Context, id string) (*Stats, error)
}

// RuntimeCloser is the optional side interface of a Runtime that holds
// host-side resources (a daemon connection, QMP sockets). Close lets go of
// them without stopping any sandbox, as a node agent does when it exits:
// the sandboxes keep running for the next agent's Recover. A wrapper around
// such a Runtime must forward it.
type RuntimeCloser interface {
	Close() error
}

// VMConfig is what a runtime needs to create one sandbox.
type VMConfig struct {
	ID       string
	Template string
	// Image locates the template's artifacts on this node.
	Image    *Image
	CPUs     int
	MemoryMB int
	// Env is the environment every Exec in the sandbox starts with.
	Env map[string]string
	// DiskIOPS holds the sandbox's disk to this many I/O operations a
	// second where the runtime can (microvm: QEMU block throttling); 0:
	// no limit. Its resource class sets it (pkg/phlegethon).
	DiskIOPS int
	// Network, when set, gives the sandbox a NIC on a network of its own
	// with this policy; only runtimes declaring Capabilities.Network can.
	Network *NetworkSpec `json:",omitempty"`
	// StrictSeccomp runs the sandbox under a stricter system-call filter
	// where the runtime can (microvm, jailed: pkg/jail Spec.StrictSeccomp);
	// a quarantined sandbox is restored with it. It takes effect when the
	// sandbox's process starts, so a running one needs a restore.
	StrictSeccomp bool `json:",omitempty"`
}

// Image is a built template as a runtime consumes it.
type Image struct {
	Name string `json:"name"`
	// Kernel is an uncompressed vmlinux with a PVH entry point.
	Kernel string `json:"kernel"`
	// Initrd is the initramfs holding the guest agent and kernel modules.
	Initrd string `json:"initrd"`
	// RootFS is the read-only ext4 root filesystem image. Runtimes never
	// write to it; each sandbox gets its own copy-on-write overlay.
	RootFS string `json:"rootfs"`
	// Digest identifies the image's inputs; it changes when they change.
	Digest string `json:"digest"`
	// Description is a human line ("Debian bookworm with python3").
	Description string    `json:"description"`
	SizeBytes   int64     `json:"size_bytes"`
	BuiltAt     time.Time `json:"built_at"`
	// Tenant owns the template when it was made from a tenant's data (a
	// migrated container); empty for the built-in templates, which every
	// tenant may use. Public opens an owned template to every tenant (an
	// operator publishes it).
	Tenant string `json:"tenant,omitempty"`
	Public bool   `json:"public,omitempty"`
	// Env is the environment every sandbox of the template starts with
	// (under its create request's env): a built template's ENV lines.
	// WorkDir and User are the build's last WORKDIR and USER (an
	// imported image's working directory and user): a sandbox's execs
	// run there and as that user unless they ask otherwise. BuildMS is how
	// long the build took.
	Env     map[string]string `json:"env,omitempty"`
	WorkDir string            `json:"workdir,omitempty"`
	User    string            `json:"user,omitempty"`
	BuildMS int64             `json:"build_ms,omitempty"`
	// Tags are the NAME:TAG references that point at this version of a
	// tenant template (pkg/images).
	Tags []string `json:"tags,omitempty"`
}

// VisibleTo reports whether tenant may list and use the template: a
// built-in or published one, or its own.
func (img *Image) VisibleTo(tenant string) bool {
	return img.Tenant == "" || img.Public || img.Tenant == tenant
}

// ExecRequest is one command to run in a sandbox.
type ExecRequest struct {
	Cmd []string
	Env map[string]string
	// Cwd is the working directory; empty means "/".
	Cwd string
	// User runs the command as this user ("NAME", "UID", "NAME:GROUP" or
	// "UID:GID"; see ValidUser); empty means root.
	User string
	// Stdin is read until EOF and fed to the command; nil means no input.
	Stdin io.Reader
	// Stdout and Stderr receive the output as it is produced; nil discards.
	Stdout io.Writer
	Stderr io.Writer
	// Timeout kills the command's process group after this long; zero means
	// no timeout beyond ctx.
	Timeout time.Duration
}

// ExecResult is how a command ended.
type ExecResult struct {
	// ExitCode is the command's exit status, or 128+signal when a signal
	// killed it (137 after a timeout).
	ExitCode int           `json:"exit_code"`
	Signal   string        `json:"signal,omitempty"`
	TimedOut bool          `json:"timed_out,omitempty"`
	Duration time.Duration `json:"-"`
}

// InstanceState is a runtime's own, coarse view of one sandbox.
type InstanceState string

// The instance states a runtime reports.
const (
	InstanceCreated InstanceState = "created"
	InstanceRunning InstanceState = "running"
	InstancePaused  InstanceState = "paused"
	InstanceStopped InstanceState = "stopped"
)

// Instance is one sandbox as a runtime sees it.
type Instance struct {
	ID        string
	Template  string
	State     InstanceState
	CPUs      int
	MemoryMB  int
	Pid       int
	StartedAt time.Time
	// IdleSince is when the sandbox last did something (an exec, a file
	// transfer, guest activity); nil while it is busy.
	IdleSince *time.Time
}

// Fingerprint says what a runtime can do on this host.
type Fingerprint struct {
	Runtime string `json:"runtime"`
	// Available is false when the host cannot run this backend; Reason says why.
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	// Accel is how guests run: "kvm", "tcg", "systrap", "runc", …
	Accel        string       `json:"accel,omitempty"`
	HostCPUs     int          `json:"host_cpus"`
	HostMemoryMB int          `json:"host_memory_mb"`
	MaxCPUs      int          `json:"max_cpus"`      // per sandbox
	MaxMemoryMB  int          `json:"max_memory_mb"` // per sandbox
	Capabilities Capabilities `json:"capabilities"`
	// Details holds backend facts worth showing (versions, paths).
	Details map[string]string `json:"details,omitempty"`
	// Jail says how the runtime confines its sandboxes; nil when the
	// runtime does not say.
	Jail *JailInfo `json:"jail,omitempty"`
}

// JailInfo is a runtime's confinement of its sandboxes, shown to operators.
type JailInfo struct {
	// Enabled is false when sandboxes run unconfined (--jail=off).
	Enabled bool `json:"enabled"`
	// UIDRange is the uids sandboxes run as, "first-last".
	UIDRange string `json:"uid_range,omitempty"`
	// CgroupVersion is "v1" or "v2".
	CgroupVersion string `json:"cgroup_version,omitempty"`
	// Seccomp reports a seccomp filter on every sandbox's VMM.
	Seccomp bool `json:"seccomp"`
}

// Capabilities are declared, never guessed.
type Capabilities struct {
	Pause    bool `json:"pause"`
	Snapshot bool `json:"snapshot"`
	Signal   bool `json:"signal"`
	Files    bool `json:"files"`
	Recover  bool `json:"recover"`
	// Network: sandboxes can have a network of their own with an egress
	// policy (VMConfig.Network).
	Network bool `json:"network"`
}

// FileInfo describes one entry of a sandbox's file system.
type FileInfo struct {
	Name    string      `json:"name"`
	Size    int64       `json:"size"`
	Mode    os.FileMode `json:"mode"`
	ModTime time.Time   `json:"mod_time"`
	IsDir   bool        `json:"is_dir"`
	// Path is the entry's absolute path (set by guests that list below
	// the first level, stat and move).
	Path string `json:"path,omitempty"`
	// SymlinkTarget is where a symbolic link points.
	SymlinkTarget string `json:"symlink_target,omitempty"`
}

// Stats is a sandbox's resource use as its guest reports it.
type Stats struct {
	CPUPercent    float64 `json:"cpu_percent"`
	MemoryUsedMB  int     `json:"memory_used_mb"`
	MemoryTotalMB int     `json:"memory_total_mb"`
	// Processes counts the sandbox's own processes, not the guest agent.
	Processes      int       `json:"processes"`
	LastActivityAt time.Time `json:"last_activity_at"`
	// DiskUsedMB and DiskTotalMB describe the guest's root file system
	// (zero from guests that do not report it).
	DiskUsedMB  int `json:"disk_used_mb,omitempty"`
	DiskTotalMB int `json:"disk_total_mb,omitempty"`
}
