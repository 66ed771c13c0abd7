package gvisor_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/gvisor"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestNetwork: a gVisor sandbox in restricted mode reaches an allowed host
// of a stand-in internet through its own network stack, and not the rest.
func TestNetwork(t *testing.T) {
	img := containertest.Image(t)
	state := t.TempDir()
	containertest.Network(t, img, func(t *testing.T, nets container.Networks) tartarus.Runtime {
		containertest.Require(t, runscPath(), "debugfs", "mke2fs")
		rt, err := gvisor.New(gvisor.Options{StateDir: state, Runsc: runscPath(), Networks: nets})
		if err != nil {
			t.Fatal(err)
		}
		return rt
	})
}

// TestLogCapped: what a sandbox writes to its init's output does not reach
// the host's disk, and a sandbox without a network has none.
func TestLogCapped(t *testing.T) {
	state := t.TempDir()
	rt := newRuntime(t, state)
	img := containertest.Image(t)
	ctx := context.Background()
	cfg := &tartarus.VMConfig{ID: "flood-1", Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128}
	if _, err := rt.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Destroy(context.Background(), cfg.ID) })
	if err := rt.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	exec(t, rt, cfg.ID, "sh", "-c", `head -c 20000000 /dev/zero | tr '\0' x >/proc/1/fd/1; head -c 1000000 /dev/zero >/proc/1/fd/2; true`)
	fi, err := os.Stat(filepath.Join(state, "sandboxes", cfg.ID, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 64<<10 {
		t.Errorf("console.log holds %d bytes after a 21 MB flood", fi.Size())
	}
	t.Logf("console.log after a 21 MB flood: %d bytes", fi.Size())
	if out := exec(t, rt, cfg.ID, "cat", "/proc/net/dev"); strings.Contains(out, "eth0:") {
		t.Errorf("a sandbox without a network has a device:\n%s", out)
	}
}

// BenchmarkCreateNetwork measures create → first exec with a network and
// without, in the same run.
func BenchmarkCreateNetwork(b *testing.B) {
	containertest.Require(b, runscPath(), "debugfs", "mke2fs")
	img := containertest.Image(b)
	state := b.TempDir()
	containertest.BenchNetwork(b, img, func(b *testing.B, nets container.Networks) tartarus.Runtime {
		rt, err := gvisor.New(gvisor.Options{StateDir: state, Runsc: runscPath(), Networks: nets})
		if err != nil {
			b.Fatal(err)
		}
		return rt
	})
}

// TestNetworkHibernate: a sandbox with a network is checkpointed,
// destroyed (its network with it) and restored into a new network with
// the same addresses, and reaches the stand-in internet again.
func TestNetworkHibernate(t *testing.T) {
	containertest.Require(t, runscPath(), "debugfs", "mke2fs")
	in := netnstest.New(t)
	ctx := context.Background()
	m, err := netns.New(ctx, netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: "tgh-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = m.Reconcile(context.Background(), nil)
		m.Close()
	})
	rt, err := gvisor.New(gvisor.Options{StateDir: t.TempDir(), Runsc: runscPath(), Networks: m})
	if err != nil {
		t.Fatal(err)
	}
	img := containertest.Image(t)
	cfg := &tartarus.VMConfig{ID: "nethib", Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128,
		Network: &tartarus.NetworkSpec{Mode: tartarus.NetworkOpen}}
	if _, err := rt.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Destroy(context.Background(), cfg.ID) })
	if err := rt.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	reach := "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 " + netnstest.HTTPAddr.String() + " 80 | grep -q hello"
	exec(t, rt, cfg.ID, "sh", "-c", reach)
	snap := filepath.Join(t.TempDir(), "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, cfg.ID, snap); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if err := rt.Destroy(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := m.Network(cfg.ID); ok {
		t.Error("the network outlived the sandbox's destroy")
	}
	if err := rt.Restore(ctx, cfg, snap); err != nil {
		t.Fatalf("restore: %v", err)
	}
	exec(t, rt, cfg.ID, "sh", "-c", reach)
}
