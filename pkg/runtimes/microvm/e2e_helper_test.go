package microvm_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testImages are the templates the e2e tests boot, built once per test binary.
type testImages struct {
	base, python *tartarus.Image
	dataDir      string
	err          error
	skip         string
}

var (
	imagesOnce sync.Once
	imagesVal  testImages
)

// needImages returns built base and python images, or skips the test with
// the reason when this machine cannot boot VMs, unless TARTARUS_E2E=1, in
// which case it fails loudly. Images are cached in $TARTARUS_TEST_DATA (or
// /var/tmp/tartarus-test) and reused between runs; the cache rebuilds only
// what changed (for example the guest agent).
func needImages(tb testing.TB) testImages {
	tb.Helper()
	imagesOnce.Do(func() { imagesVal = buildTestImages() })
	must := os.Getenv("TARTARUS_E2E") == "1"
	switch {
	case imagesVal.skip != "" && must:
		tb.Fatalf("TARTARUS_E2E=1 but: %s", imagesVal.skip)
	case imagesVal.skip != "":
		tb.Skip(imagesVal.skip + " (set TARTARUS_E2E=1 to make this a failure)")
	case imagesVal.err != nil:
		tb.Fatalf("building test images: %v", imagesVal.err)
	}
	return imagesVal
}

func buildTestImages() testImages {
	if os.Geteuid() != 0 {
		return testImages{skip: "microvm e2e tests need root (template builds use apt-get, debootstrap)"}
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "apt-get", "mke2fs", "debootstrap", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			return testImages{skip: tool + " is not installed (make deps installs it)"}
		}
	}
	dir := os.Getenv("TARTARUS_TEST_DATA")
	if dir == "" {
		dir = "/var/tmp/tartarus-test"
	}
	ti := testImages{dataDir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	agent := filepath.Join(dir, "bin", "tartarus-guest")
	if err := os.MkdirAll(filepath.Dir(agent), 0o755); err != nil {
		ti.err = err
		return ti
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", agent, "./cmd/tartarus-guest")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		ti.err = fmt.Errorf("build guest agent: %v\n%s", err, out)
		return ti
	}
	cat, err := images.Open(images.Options{DataDir: dir, GuestAgent: agent})
	if err != nil {
		ti.err = err
		return ti
	}
	if err := cat.Build(ctx, []string{"base", "python"}, nil); err != nil {
		ti.err = err
		return ti
	}
	if ti.base, err = cat.Get(ctx, "base"); err != nil {
		ti.err = err
		return ti
	}
	if ti.python, err = cat.Get(ctx, "python"); err != nil {
		ti.err = err
	}
	return ti
}

// newDriver returns a driver over stateDir, logging to the test. With
// TARTARUS_TEST_JAIL=1 every sandbox's QEMU runs jailed.
func newDriver(tb testing.TB, stateDir string, img *tartarus.Image) *microvm.Driver {
	tb.Helper()
	var j *jail.Jail
	if os.Getenv("TARTARUS_TEST_JAIL") == "1" {
		j = newJail(tb, stateDir)
	}
	return newDriverJail(tb, stateDir, img, j)
}

// newJail returns a jail whose uids and cgroup belong to stateDir. Its
// allocations sit beside stateDir (as the server keeps them beside its
// vms directory), so tests can check that the state directory empties.
func newJail(tb testing.TB, stateDir string) *jail.Jail {
	tb.Helper()
	j, err := jail.New(jail.Config{StateDir: stateDir + ".jail"})
	if err != nil {
		tb.Fatal(err)
	}
	return j
}

func newDriverJail(tb testing.TB, stateDir string, img *tartarus.Image, j *jail.Jail) *microvm.Driver {
	tb.Helper()
	d, err := microvm.New(context.Background(), microvm.Config{
		StateDir:   stateDir,
		Log:        testLogger(tb),
		ProbeImage: img,
		// One probe per host, not per test state directory.
		ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json"),
		Jail:       j,
		CopyMemory: copyMemory(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	fp, _ := d.Fingerprint(context.Background())
	if !fp.Available {
		tb.Fatalf("microvm unavailable: %s", fp.Reason)
	}
	return d
}

func testLogger(tb testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("TARTARUS_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	// Stderr, not tb.Log: VMs outlive the (sub)test that started them.
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// copyMemory is TARTARUS_TEST_COPY_MEMORY=1: the tests' drivers run with
// mapped memory off, as before it.
func copyMemory() bool { return os.Getenv("TARTARUS_TEST_COPY_MEMORY") == "1" }
