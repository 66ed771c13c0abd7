package phlegethon_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// baseImage returns the built base template from the shared test cache
// ($TARTARUS_TEST_DATA or /var/tmp/tartarus-test, built by `make
// test-images`). It only reads the cache, never builds into it; without it
// the test skips, or fails under TARTARUS_E2E=1.
func baseImage(t *testing.T) (*tartarus.Image, string) {
	t.Helper()
	dir := os.Getenv("TARTARUS_TEST_DATA")
	if dir == "" {
		dir = "/var/tmp/tartarus-test"
	}
	skip := func(why string) {
		if os.Getenv("TARTARUS_E2E") == "1" {
			t.Fatalf("TARTARUS_E2E=1 but: %s", why)
		}
		t.Skip(why + " (set TARTARUS_E2E=1 to make this a failure)")
	}
	if os.Geteuid() != 0 {
		skip("real-VM tests need root")
	}
	cat, err := images.Open(images.Options{DataDir: dir, GuestAgent: filepath.Join(dir, "bin", "tartarus-guest")})
	if err != nil {
		skip("no test image cache: " + err.Error())
	}
	img, err := cat.Get(context.Background(), "base")
	if err != nil {
		skip("the base template is not built (make test-images): " + err.Error())
	}
	return img, dir
}

// A class's vCPUs and memory are what the guest sees: a create classified
// warm under a classes file gets that class's size through Apply, and a real
// microVM booted with it reports that many CPUs (nproc) and that much
// memory (/proc/meminfo, less what the guest kernel keeps for itself); and
// a Deadlines over the decision's max duration ends the real sandbox on time.
func TestClassesRealVM(t *testing.T) {
	img, dir := baseImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Small classes, so the test fits beside the others on a shared host.
	classes, err := phlegethon.ParseClasses([]byte(`classes:
  - {name: test-flame, heat: warm, cpu_cores: 2, memory_mb: 384, max_duration_s: 300}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := phlegethon.NewRouter(ctx, phlegethon.Config{Classes: classes}, &phlegethon.MemJournal{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d0, err := r.Decide(ctx, &phlegethon.SandboxRequest{TemplateID: "base", MaxDuration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if d0.Heat != phlegethon.HeatWarm || d0.Class != "test-flame" || d0.Limits.CPUs != 2 || d0.Limits.MemoryMB != 384 || d0.Limits.MaxDuration != time.Minute {
		t.Fatalf("decision %+v", d0)
	}

	drv, err := microvm.New(ctx, microvm.Config{
		StateDir:   t.TempDir(),
		Log:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		ProbeImage: img,
		ProbeCache: filepath.Join(dir, "kvm-probe.json"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	id := "heat-e2e"
	if _, err := drv.Create(ctx, &tartarus.VMConfig{ID: id, Template: img.Name, Image: img, CPUs: d0.Limits.CPUs, MemoryMB: d0.Limits.MemoryMB}); err != nil {
		t.Fatal(err)
	}
	defer drv.Destroy(context.WithoutCancel(ctx), id)
	if err := drv.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	run := func(cmd ...string) string {
		var out, errOut bytes.Buffer
		res, err := drv.Exec(ctx, id, &tartarus.ExecRequest{Cmd: cmd, Stdout: &out, Stderr: &errOut})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%q: %v, %+v, %s", cmd, err, res, errOut.String())
		}
		return out.String()
	}
	if got := strings.TrimSpace(run("nproc")); got != "2" {
		t.Errorf("nproc = %q, want 2", got)
	}
	var totalKiB int
	for line := range strings.Lines(run("cat", "/proc/meminfo")) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			totalKiB, _ = strconv.Atoi(f[1])
		}
	}
	// The guest kernel keeps some memory for itself (its image, page
	// tables): MemTotal is a little under what the VM has.
	if mib := totalKiB / 1024; mib > 384 || mib < 384*3/4 {
		t.Errorf("MemTotal %d MiB, want a little under 384", mib)
	}
	t.Logf("guest sees %s CPUs and %d KiB", "2", totalKiB)

	// max_duration_s ends the real sandbox on time. The end function
	// destroys the VM here; the server's asks Thanatos to terminate with
	// reason timeout.
	d1, err := r.Decide(ctx, &phlegethon.SandboxRequest{TemplateID: "base", ResourceClass: "test-flame", MaxDuration: 3 * time.Second})
	if err != nil || d1.Limits.MaxDuration != 3*time.Second {
		t.Fatalf("decision %+v, %v", d1, err)
	}
	endedAt := make(chan time.Time, 1)
	dl, err := phlegethon.NewDeadlines(clock.System{}, func(ctx context.Context, id string) error {
		if err := drv.Destroy(ctx, id); err != nil {
			return err
		}
		endedAt <- time.Now()
		return nil
	}, 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go dl.Run(runCtx)
	started := time.Now()
	dl.Watch(id, started, d1.Limits.MaxDuration)
	select {
	case at := <-endedAt:
		// Not before its time; on time within the check tick and a
		// destroy (generous: the host is shared).
		if late := at.Sub(started) - d1.Limits.MaxDuration; late < 0 || late > 5*time.Second {
			t.Errorf("ended %s after its maximum", late)
		}
		t.Logf("ended %s after start (max %s)", at.Sub(started).Round(time.Millisecond), d1.Limits.MaxDuration)
	case <-time.After(30 * time.Second):
		t.Fatal("the sandbox outlived its max duration by 27 s")
	}
	if _, err := drv.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"true"}}); err == nil {
		t.Error("the sandbox still runs commands after its max duration")
	}
}
