package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Confinement and networks the container drivers share (docs/security.md,
// docs/network.md).

// PidsLimit is a sandbox's process limit from its size: 256 per GiB of
// memory, at least 256 and at most 4096, so a fork bomb stops long before
// the host's pid space is at risk.
func PidsLimit(memoryMB int) int64 {
	return min(max(int64(memoryMB)*256/1024, 256), 4096)
}

// CgroupVersion is "v2" when the host's cgroup root is the unified
// hierarchy, else "v1" (a unified hierarchy mounted beside v1 controllers
// holds none of them).
func CgroupVersion() string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "v2"
	}
	return "v1"
}

// Networks builds and removes sandbox networks with a guest namespace
// (pkg/netns.Manager implements it). A driver given one puts a sandbox
// whose VMConfig.Network is set into Sandbox.GuestNetns.
type Networks interface {
	Create(ctx context.Context, id string, spec netns.Spec) (*netns.Sandbox, error)
	Recover(ctx context.Context, id string, spec netns.Spec) (*netns.Sandbox, error)
	Destroy(ctx context.Context, id string) error
	// AttachGuest moves the guest's network into the namespace of
	// process pid (a container whose runtime made its namespace).
	AttachGuest(ctx context.Context, id string, pid int) error
}

var _ Networks = (*netns.Manager)(nil)

// ResolvConf is the sandbox's /etc/resolv.conf: its own resolver, which
// admits allowed names (pkg/netns).
var ResolvConf = "nameserver " + netns.GatewayAddr.String() + "\n"

// NetworkState keeps the network spec of a driver's sandboxes on disk, so
// Recover can re-attach them after a restart (labels are too small for a
// spec of 2048 rules).
type NetworkState struct {
	// Dir holds one <id>.json per sandbox with a network, and the
	// sandbox's resolv.conf as <id>.resolv.conf.
	Dir string
}

func (s NetworkState) path(id, ext string) string { return filepath.Join(s.Dir, id+ext) }

// ResolvConfPath is where the sandbox's resolv.conf is written by Create.
func (s NetworkState) ResolvConfPath(id string) string { return s.path(id, ".resolv.conf") }

// Create builds sandbox id's network (nil spec: none) through nets and
// records it; ErrNotImplemented when the node has no sandbox networking.
// It returns the guest namespace's path, "" without a network.
func (s NetworkState) Create(ctx context.Context, nets Networks, runtime, id string, n *tartarus.NetworkSpec) (string, error) {
	if n == nil {
		return "", nil
	}
	if nets == nil {
		return "", tartarus.Errorf(tartarus.ErrNotImplemented, "sandbox %s: this node gives %s sandboxes no network (start it with a network uplink)", id, runtime)
	}
	spec, err := netns.SpecOf(n)
	if err != nil {
		return "", err
	}
	spec.GuestNetns = true
	b, err := json.Marshal(n)
	if err != nil {
		return "", err
	}
	// The network first: a sandbox that has one already keeps it and its
	// record (the manager refuses a second).
	sb, err := nets.Create(ctx, id, spec)
	if err != nil {
		return "", fmt.Errorf("sandbox %s: %w", id, err)
	}
	err = os.MkdirAll(s.Dir, 0o700)
	if err == nil {
		err = os.WriteFile(s.ResolvConfPath(id), []byte(ResolvConf), 0o644)
	}
	if err == nil {
		err = os.WriteFile(s.path(id, ".json"), b, 0o600)
	}
	if err != nil {
		_ = nets.Destroy(context.WithoutCancel(ctx), id)
		_ = s.forget(id)
		return "", fmt.Errorf("sandbox %s network: %w", id, err)
	}
	return sb.GuestNetns, nil
}

// Has reports whether sandbox id was created with a network.
func (s NetworkState) Has(id string) bool {
	_, err := os.Stat(s.path(id, ".json"))
	return err == nil
}

// Destroy removes sandbox id's network and its record; a sandbox without
// one costs a stat.
func (s NetworkState) Destroy(ctx context.Context, nets Networks, id string) error {
	if !s.Has(id) {
		return nil
	}
	if nets != nil {
		if err := nets.Destroy(ctx, id); err != nil {
			return fmt.Errorf("sandbox %s network: %w", id, err)
		}
	}
	return s.forget(id)
}

func (s NetworkState) forget(id string) error {
	var errs []error
	for _, ext := range []string{".json", ".resolv.conf"} {
		if err := os.Remove(s.path(id, ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Attach moves sandbox id's network, if it has one, into the network
// namespace of its init, pid (see netns.Manager.AttachGuest).
func (s NetworkState) Attach(ctx context.Context, nets Networks, id string, pid int) error {
	if !s.Has(id) {
		return nil
	}
	if nets == nil {
		return fmt.Errorf("sandbox %s has a network but the driver has no network manager", id)
	}
	if err := nets.AttachGuest(ctx, id, pid); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}
	return nil
}

// Recover re-attaches the network of an adopted sandbox, if it has one.
func (s NetworkState) Recover(ctx context.Context, nets Networks, id string) error {
	b, err := os.ReadFile(s.path(id, ".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sandbox %s network: %w", id, err)
	}
	if nets == nil {
		return fmt.Errorf("sandbox %s has a network but the driver has no network manager", id)
	}
	var n tartarus.NetworkSpec
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("sandbox %s network: %w", id, err)
	}
	spec, err := netns.SpecOf(&n)
	if err != nil {
		return err
	}
	spec.GuestNetns = true
	if _, err := nets.Recover(ctx, id, spec); err != nil && !errors.Is(err, tartarus.ErrAlreadyExists) {
		return fmt.Errorf("sandbox %s network: %w", id, err)
	}
	return nil
}

// DefaultCaps are Docker's default capabilities, the only ones a container
// sandbox's root has (and those only over its own user namespace where the
// runtime gives it one).
var DefaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT",
	"CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP"}
