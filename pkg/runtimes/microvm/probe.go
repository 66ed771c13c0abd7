package microvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// probeTimeout bounds the KVM probe boot; a KVM guest answers in well under a second.
const probeTimeout = 10 * time.Second

// probeResult is the cached outcome of the KVM probe, in StateDir/.kvm-probe.json.
type probeResult struct {
	Key    string    `json:"key"`
	KVM    bool      `json:"kvm"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// chooseAccel decides between KVM and TCG and says why.
func (d *Driver) chooseAccel(ctx context.Context, qemuVersion string) (accel, reason string) {
	switch d.cfg.Accel {
	case "tcg":
		return "tcg", "configured: tcg"
	case "kvm":
		return "kvm", "configured: kvm"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", "KVM unusable (" + err.Error() + "); using TCG"
	}
	f.Close()
	osrelease, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	key := strings.TrimSpace(string(osrelease)) + " | " + qemuVersion
	cache := d.cfg.ProbeCache
	if b, err := os.ReadFile(cache); err == nil {
		var r probeResult
		if json.Unmarshal(b, &r) == nil && r.Key == key {
			return accelOf(r.KVM), r.Reason + " (probed " + r.At.Format(time.RFC3339) + ")"
		}
	}
	if d.cfg.ProbeImage == nil {
		return "tcg", "KVM not probed (no probe image); using TCG"
	}
	r := probeResult{Key: key, At: d.clock.Now().UTC()}
	start := d.clock.Now()
	if err := d.probeKVM(ctx); err != nil {
		r.Reason = fmt.Sprintf("/dev/kvm exists but a KVM guest did not boot (%v); using TCG", err)
	} else {
		r.KVM = true
		r.Reason = fmt.Sprintf("a KVM guest booted in %s", d.clock.Now().Sub(start).Round(time.Millisecond))
	}
	d.log.Info("KVM probe", "kvm", r.KVM, "reason", r.Reason)
	if b, err := json.Marshal(r); err == nil {
		_ = os.WriteFile(cache, b, 0o644)
	}
	return accelOf(r.KVM), r.Reason
}

func accelOf(kvm bool) string {
	if kvm {
		return "kvm"
	}
	return "tcg"
}

// probeKVM boots ProbeImage under KVM once and waits for the guest agent.
func (d *Driver) probeKVM(ctx context.Context) error {
	dir, err := os.MkdirTemp(d.cfg.StateDir, ".kvm-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := *d.cfg.ProbeImage
	v := &vm{id: "kvm-probe", dir: dir, log: d.log.With("sandbox", "kvm-probe"),
		conf: vmConfig{ID: "kvm-probe", Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128, Accel: "kvm"}}
	if err := d.prepare(ctx, v); err != nil {
		return err
	}
	if err := d.boot(ctx, v, "kvm", probeTimeout); err != nil {
		return fmt.Errorf("%w; console: %s", err, strings.ReplaceAll(v.consoleTail(3), "\n", " | "))
	}
	v.stop(context.WithoutCancel(ctx))
	return nil
}
