package containerd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/containerd"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/runtimetest"
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
	containertest.Require(t, "containerd", "debugfs", "mke2fs")
	addr := containertest.Containerd(t)
	cache := t.TempDir()
	img := containertest.Image(t)
	t.Run("Conformance", func(t *testing.T) {
		// Runtimes made by the factory live until the whole suite ends
		// (the one made in the recover subtest is used after it).
		suite := t
		runtimetest.Run(t, func(*testing.T) (tartarus.Runtime, *tartarus.Image) {
			return newRuntime(suite, addr, cache), img
		})
	})
	t.Run("Migration", func(t *testing.T) { testMigration(t, newRuntime(t, addr, cache), addr, img) })
	t.Run("HostileMigration", func(t *testing.T) { testHostileMigration(t, newRuntime(t, addr, cache), addr, img) })
	t.Run("Confined", func(t *testing.T) {
		rt := newRuntime(t, addr, cache)
		containertest.Confined(t, rt, img, containertest.ConfinedOptions{HostPid: func(t *testing.T, id string) int {
			list, err := rt.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range list {
				if in.ID == id && in.Pid > 0 {
					return in.Pid
				}
			}
			t.Fatalf("no host pid for %s", id)
			return 0
		}})
	})
	t.Run("Network", func(t *testing.T) {
		containertest.Network(t, img, func(t *testing.T, nets container.Networks) tartarus.Runtime {
			rt, err := containerd.New(containerd.Options{Address: addr, CacheDir: cache, Networks: nets})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rt.Close() })
			return rt
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
	containertest.Require(b, "containerd", "debugfs", "mke2fs")
	addr := containertest.Containerd(b)
	rt := newRuntime(b, addr, b.TempDir())
	img := containertest.Image(b)
	b.Run("CreateFirstExec", func(b *testing.B) { runtimetest.BenchCreateFirstExec(b, rt, img) })
	b.Run("Exec", func(b *testing.B) { runtimetest.BenchExec(b, rt, img) })
	b.Run("CreateNetwork", func(b *testing.B) {
		cache := b.TempDir()
		containertest.BenchNetwork(b, img, func(b *testing.B, nets container.Networks) tartarus.Runtime {
			rt, err := containerd.New(containerd.Options{Address: addr, CacheDir: cache, Networks: nets})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { rt.Close() })
			return rt
		})
	})
}

// testMigration makes ordinary containers in the runtime's namespace (no
// Tartarus labels, as a user would have them) and migrates them.
func testMigration(t *testing.T, rt *containerd.Runtime, addr string, img *tartarus.Image) {
	ctx := namespaces.WithNamespace(context.Background(), "tartarus")
	ref, err := rt.ImportTemplate(ctx, img)
	if err != nil {
		t.Fatalf("ImportTemplate: %v", err)
	}
	cli, err := client.New(addr, client.WithDefaultNamespace("tartarus"))
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the containers' cleanups, which run first (LIFO).
	t.Cleanup(func() { cli.Close() })
	image, err := cli.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	// runc keeps its state under /run/containerd/runc/<namespace> whatever
	// the daemon, so names are unique per run.
	suffix := fmt.Sprintf("-%d", time.Now().UnixNano()%1e6)
	mk := func(name string, opts ...oci.SpecOpts) client.Container {
		t.Helper()
		id := name + suffix
		opts = append([]oci.SpecOpts{oci.WithImageConfig(image), oci.WithEnv([]string{"GREETING=hello from containerd"})}, opts...)
		c, err := cli.NewContainer(ctx, id, client.WithImage(image), client.WithSnapshotter("overlayfs"),
			client.WithNewSnapshot(id+"-snap", image), client.WithNewSpec(opts...))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if task, err := c.Task(ctx, nil); err == nil {
				if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
					t.Errorf("cleanup: delete task %s: %v", id, err)
				}
			}
			if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
				t.Errorf("cleanup: delete container %s: %v", id, err)
			}
		})
		return c
	}
	app := mk("legacy-app", oci.WithProcessArgs("sh", "-c", "mkdir -p /srv && echo app-data > /srv/app.txt && exec sleep 1000"),
		oci.WithProcessCwd("/"))
	task, err := app.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The file exists once the shell has exec'd the sleep.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := rt.ExportState(ctx, "legacy-app"+suffix)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Processes) > 0 && strings.HasPrefix(st.Processes[0].Command, "sleep 1000") {
			if st.Environment["GREETING"] != "hello from containerd" || !st.Running || st.Image != ref {
				t.Errorf("state %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container never reached its sleep: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}

	plan, err := rt.MigrateToMicroVM(ctx, "legacy-app"+suffix)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Blocking()) != 0 || plan.TargetTemplate != "migrated-legacy-app"+suffix {
		t.Errorf("plan %+v: want nothing blocking", plan)
	}
	data := t.TempDir()
	res, err := rt.Migrate(ctx, "legacy-app"+suffix, kampe.MigrateOptions{DataDir: data})
	if err != nil {
		t.Fatalf("Migrate of a running container: %v", err)
	}
	out, err := exec.Command("debugfs", "-R", "cat /srv/app.txt", res.RootFS).Output()
	if err != nil || string(out) != "app-data\n" {
		ls, _ := exec.Command("debugfs", "-R", "ls -l /", res.RootFS).CombinedOutput()
		t.Errorf("/srv/app.txt in the template: %q %v; / holds:\n%s", out, err, ls)
	}
	// The task's /proc was not copied.
	if out, _ := exec.Command("debugfs", "-R", "ls /proc", res.RootFS).Output(); strings.Contains(string(out), "self") {
		t.Errorf("the container's /proc was copied into the template: %s", out)
	}
	b, err := os.ReadFile(filepath.Join(res.Dir, "manifest.json"))
	if err != nil || !strings.Contains(string(b), "GREETING=hello from containerd") {
		t.Errorf("manifest %s %v", b, err)
	}

	// Stopped containers are read from their snapshot.
	stopped := mk("legacy-stopped", oci.WithProcessArgs("true"))
	_ = stopped
	if _, err := rt.Migrate(ctx, "legacy-stopped"+suffix, kampe.MigrateOptions{DataDir: data}); err != nil {
		t.Errorf("Migrate of a stopped container: %v", err)
	}

	hostDir := t.TempDir()
	mk("legacy-bind", oci.WithProcessArgs("sleep", "1000"),
		oci.WithMounts([]specs.Mount{{Type: "bind", Source: hostDir, Destination: "/host", Options: []string{"rbind", "ro"}}}))
	plan, err = rt.MigrateToMicroVM(ctx, "legacy-bind"+suffix)
	if err != nil {
		t.Fatal(err)
	}
	if b := plan.Blocking(); len(b) != 1 || b[0].Type != kampe.ChangeTypeFilesystem || !strings.Contains(b[0].Description, hostDir) {
		t.Errorf("plan %+v: want one blocking change naming %s", plan.RequiredChanges, hostDir)
	}
	if _, err := rt.Migrate(ctx, "legacy-bind"+suffix, kampe.MigrateOptions{DataDir: data}); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Migrate with a bind mount: %v, want ErrFailedPrecondition", err)
	}

	mk("legacy-host", oci.WithProcessArgs("sleep", "1000"), oci.WithHostNamespace(specs.NetworkNamespace),
		oci.WithHostNamespace(specs.PIDNamespace), oci.WithAddedCapabilities([]string{"CAP_SYS_ADMIN"}))
	plan, err = rt.MigrateToMicroVM(ctx, "legacy-host"+suffix)
	if err != nil {
		t.Fatal(err)
	}
	if plan.RiskLevel != kampe.RiskLevelHigh || len(plan.Blocking()) != 2 {
		t.Errorf("plan %+v: want high risk, host network and host PID blocking", plan.RequiredChanges)
	}
	if _, err := rt.MigrateToMicroVM(ctx, "no-such"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("unknown container: %v, want ErrNotFound", err)
	}
}
