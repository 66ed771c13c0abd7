package microvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Networks tells the driver which sandboxes have a network: a namespace
// with a TAP device in it (pkg/netns.Manager implements it). The caller
// creates a sandbox's network before Create or Restore and destroys it
// after Destroy; the driver only starts QEMU inside it.
type Networks interface {
	// Network returns the namespace path and TAP device of sandbox id;
	// ok is false for a sandbox without network (it keeps only lo).
	Network(id string) (netnsPath, tap string, ok bool)
}

var _ Networks = (*netns.Manager)(nil)

// netArgs are QEMU's NIC arguments and the guest's kernel parameter for
// sandbox id, and the namespace QEMU must start in; all empty without a
// network. The NIC's MAC and the guest's address are the same in every
// sandbox, so a snapshot restores into another sandbox's namespace as is.
func (d *Driver) netArgs(id string) (args []string, kernelArg, nsPath string) {
	if d.cfg.Networks == nil {
		return nil, "", ""
	}
	path, tap, ok := d.cfg.Networks.Network(id)
	if !ok {
		return nil, "", ""
	}
	args = []string{
		"-netdev", fmt.Sprintf("tap,id=net0,ifname=%s,script=no,downscript=no", tap),
		"-device", "virtio-net-device,netdev=net0,mac=" + netns.GuestMAC,
	}
	kernelArg = fmt.Sprintf("tartarus.net=%s/%d,%s,%s",
		netns.GuestAddr, netns.GuestPrefix.Bits(), netns.GatewayAddr, netns.GatewayAddr)
	return args, kernelArg, path
}

// startIn starts cmd inside the network namespace at nsPath ("" = ours):
// the child is forked from a thread that has joined it. (A jailing
// launcher takes the path instead, later.)
func startIn(nsPath string, cmd *exec.Cmd) error {
	return netns.Do(nsPath, cmd.Start)
}

// NetworkProvisioner is the optional side interface of Networks that also
// builds and removes sandbox networks (pkg/netns.Manager implements it).
// With it the driver gives a sandbox whose VMConfig.Network is set its
// network in Create and Restore, removes it in Destroy (so every path that
// ends or hibernates a VM releases it), and re-attaches it in Recover.
type NetworkProvisioner interface {
	Networks
	Create(ctx context.Context, id string, spec netns.Spec) (*netns.Sandbox, error)
	Recover(ctx context.Context, id string, spec netns.Spec) (*netns.Sandbox, error)
	Destroy(ctx context.Context, id string) error
}

var _ NetworkProvisioner = (*netns.Manager)(nil)

// provisioner is the driver's NetworkProvisioner, or nil.
func (d *Driver) provisioner() NetworkProvisioner {
	p, _ := d.cfg.Networks.(NetworkProvisioner)
	return p
}

// createNetwork builds the network cfg asks for, if any.
func (d *Driver) createNetwork(ctx context.Context, cfg *tartarus.VMConfig) error {
	if cfg.Network == nil {
		return nil
	}
	p := d.provisioner()
	if p == nil {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "sandbox %s: this node gives microVMs no network (start it with a network uplink)", cfg.ID)
	}
	spec, err := netns.SpecOf(cfg.Network)
	if err != nil {
		return err
	}
	if d.cfg.Jail != nil {
		// The jailed QEMU opens the TAP under the sandbox's own uid.
		uid, err := d.cfg.Jail.UID(cfg.ID)
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", cfg.ID, err)
		}
		spec.TapOwner = strconv.Itoa(uid)
	}
	if _, err := p.Create(ctx, cfg.ID, spec); err != nil {
		return fmt.Errorf("sandbox %s: %w", cfg.ID, err)
	}
	return nil
}

// destroyNetwork removes sandbox id's network; a sandbox without one costs
// a look at /run/netns.
func (d *Driver) destroyNetwork(ctx context.Context, id string) error {
	p := d.provisioner()
	if p == nil {
		return nil
	}
	if _, _, ok := p.Network(id); !ok {
		if m, isMgr := p.(*netns.Manager); isMgr {
			if _, err := os.Stat(netns.Path(m.NetnsName(id))); err != nil {
				return nil
			}
		}
	}
	if err := p.Destroy(ctx, id); err != nil {
		return fmt.Errorf("sandbox %s network: %w", id, err)
	}
	return nil
}

// recoverNetwork re-attaches the network of an adopted sandbox.
func (d *Driver) recoverNetwork(ctx context.Context, v *vm) error {
	if v.conf.Network == nil {
		return nil
	}
	p := d.provisioner()
	if p == nil {
		return fmt.Errorf("sandbox has a network but the driver has no network manager")
	}
	spec, err := netns.SpecOf(v.conf.Network)
	if err != nil {
		return err
	}
	if _, err := p.Recover(ctx, v.id, spec); err != nil && !errors.Is(err, tartarus.ErrAlreadyExists) {
		return err
	}
	return nil
}

// checkSnapshotNIC refuses to restore a snapshot into a sandbox whose NIC
// set differs: QEMU can only load state into the same devices.
func checkSnapshotNIC(id string, snap, want *tartarus.NetworkSpec) error {
	switch {
	case snap != nil && want == nil:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "restore %s: the snapshot has a network card; restore it with a network", id)
	case snap == nil && want != nil:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "restore %s: the snapshot has no network card; it cannot be restored with a network", id)
	}
	return nil
}
