package microvm

import (
	"fmt"
	"os/exec"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
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
