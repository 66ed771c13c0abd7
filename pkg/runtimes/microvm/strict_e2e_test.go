package microvm_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestStrictSeccompRestore restores a jailed sandbox with a NIC under the
// strict seccomp filter, as a quarantine does: QEMU restores the snapshot,
// answers QMP and the agent, its guest still reaches the network through
// the TAP, and the host sees one more seccomp filter on it than on the
// same sandbox before.
func TestStrictSeccompRestore(t *testing.T) {
	imgs := needImages(t)
	in := netnstest.New(t)
	ctx := context.Background()
	nets, err := netns.New(ctx, netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: "txsc-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := nets.Reconcile(context.Background(), nil); err != nil {
			t.Errorf("reconcile: %v", err)
		}
		nets.Close()
	})
	stateDir := t.TempDir()
	d, err := microvm.New(ctx, microvm.Config{
		StateDir: stateDir, Log: testLogger(t), ProbeImage: imgs.base,
		ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json"),
		Networks:   nets, Jail: newJail(t, stateDir), CopyMemory: copyMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	open := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}
	fetch := func(id string) string {
		return strings.TrimSpace(run(t, d, id, "python3", "-c", fetchPy, "http://allowed.example/hello"))
	}

	const id, copyID = "sc-a", "sc-b"
	for _, n := range []string{id, copyID} {
		if _, err := nets.Create(ctxT(t), n, open); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = d.Destroy(context.Background(), n)
			_ = nets.Destroy(context.Background(), n)
		})
	}
	if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "python", Image: imgs.python, CPUs: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	if got := fetch(id); !strings.HasPrefix(got, "OK") {
		t.Fatalf("before: fetch %q", got)
	}
	loose := seccompFilters(t, pidOf(t, d, id))
	snap := t.TempDir()
	if _, err := d.Snapshot(ctxT(t), id, snap); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctxT(t), id); err != nil {
		t.Fatal(err)
	}

	if err := d.Restore(ctxT(t), &tartarus.VMConfig{ID: copyID, Template: "python", Image: imgs.python, StrictSeccomp: true}, snap); err != nil {
		t.Fatalf("restore under the strict filter: %v", err)
	}
	if out := strings.TrimSpace(run(t, d, copyID, "echo", "strict")); out != "strict" {
		t.Errorf("exec under the strict filter: %q", out)
	}
	pid := pidOf(t, d, copyID)
	if st := procStatus(t, pid); st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
		t.Errorf("strict QEMU: Seccomp %s NoNewPrivs %s", st["Seccomp"], st["NoNewPrivs"])
	}
	if strict := seccompFilters(t, pid); strict != loose+1 {
		t.Errorf("strict QEMU has %d seccomp filters, the same sandbox without it %d: want one more", strict, loose)
	} else {
		t.Logf("seccomp filters: %d without, %d with the strict filter", loose, strict)
	}
	if got := fetch(copyID); !strings.HasPrefix(got, "OK") {
		t.Errorf("guest network under the strict filter: fetch %q", got)
	}
	// A pause and resume go through QMP, which still answers.
	if err := d.Pause(ctxT(t), copyID); err != nil {
		t.Fatalf("pause (QMP): %v", err)
	}
	if err := d.Resume(ctxT(t), copyID); err != nil {
		t.Fatalf("resume (QMP): %v", err)
	}
	if out := strings.TrimSpace(run(t, d, copyID, "echo", "again")); out != "again" {
		t.Errorf("exec after resume: %q", out)
	}
}

// seccompFilters is the number of seccomp filters on pid's main thread.
func seccompFilters(t *testing.T, pid int) int {
	t.Helper()
	n, err := strconv.Atoi(procStatus(t, pid)["Seccomp_filters"])
	if err != nil {
		t.Fatalf("Seccomp_filters of %d: %v", pid, err)
	}
	return n
}
