package microvm

import (
	"context"
	"os"

	"github.com/tartarus-sandbox/tartarus/pkg/jail"
)

// ProbeInJail starts the named probe (see jail.RunShimIfAsked) in sandbox
// id's jail with exactly the spec its QEMU gets — same shim, uid, cgroup,
// namespaces, root, rlimits — plus the shim's spawn filter standing in for
// QEMU's own -sandbox, which a probe cannot install.
func ProbeInJail(ctx context.Context, d *Driver, id, probe string, env []string, out *os.File) (*jail.Process, error) {
	v, err := d.get(id)
	if err != nil {
		return nil, err
	}
	spec, err := d.jailSpec(v, d.qemuArgs(v, v.conf.Accel))
	if err != nil {
		return nil, err
	}
	spec.Path, spec.Probe, spec.DenySpawn, spec.Env = "", probe, true, env
	spec.Stdout, spec.Stderr = out, out
	return d.cfg.Jail.Start(ctx, spec)
}
