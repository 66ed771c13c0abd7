package containerd_test

import (
	"context"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe/containerd"
	"github.com/tartarus-sandbox/tartarus/pkg/kampe/kampetest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtime/runtimetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func newRuntime(t testing.TB, addr, cache string) *containerd.Runtime {
	t.Helper()
	rt, err := containerd.New(containerd.Options{Address: addr, CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// TestContainerd runs the conformance suite against a private containerd.
func TestContainerd(t *testing.T) {
	kampetest.Require(t, "containerd", "debugfs", "mke2fs")
	addr := kampetest.Containerd(t)
	cache := t.TempDir()
	img := kampetest.Image(t)
	t.Run("Conformance", func(t *testing.T) {
		// Runtimes made by the factory live until the whole suite ends
		// (the one made in the recover subtest is used after it).
		suite := t
		runtimetest.Run(t, func(*testing.T) (tartarus.Runtime, *tartarus.Image) {
			return newRuntime(suite, addr, cache), img
		})
	})
	t.Run("Fingerprint", func(t *testing.T) {
		fp, err := newRuntime(t, addr, cache).Fingerprint(context.Background())
		if err != nil || !fp.Available || fp.Capabilities.Snapshot || fp.Details["snapshot"] == "" {
			t.Errorf("fingerprint %+v %v: want available, snapshot declared missing with a reason", fp, err)
		}
	})
}

// BenchmarkContainerd measures create→first exec and the exec round trip.
func BenchmarkContainerd(b *testing.B) {
	kampetest.Require(b, "containerd", "debugfs", "mke2fs")
	addr := kampetest.Containerd(b)
	rt := newRuntime(b, addr, b.TempDir())
	img := kampetest.Image(b)
	b.Run("CreateFirstExec", func(b *testing.B) { kampetest.BenchCreateFirstExec(b, rt, img) })
	b.Run("Exec", func(b *testing.B) { kampetest.BenchExec(b, rt, img) })
}
