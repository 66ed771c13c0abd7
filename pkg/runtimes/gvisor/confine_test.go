package gvisor_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
