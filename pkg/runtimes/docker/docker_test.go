package docker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	rtcontainer "github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/gvisor"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/runtimetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func newRuntime(t testing.TB, host, cache string) *docker.Runtime {
	t.Helper()
	rt, err := docker.New(docker.Options{Host: host, CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// TestDocker runs everything against one private dockerd: starting it
// costs a few seconds, so the subtests share it.
func TestDocker(t *testing.T) {
	containertest.Require(t, "dockerd", "debugfs", "mke2fs")
	host := containertest.Dockerd(t)
	cache := t.TempDir()
	img := containertest.Image(t)

	t.Run("Conformance", func(t *testing.T) {
		// Runtimes made by the factory live until the whole suite ends
		// (the one made in the recover subtest is used after it).
		suite := t
		runtimetest.Run(t, func(*testing.T) (tartarus.Runtime, *tartarus.Image) {
			return newRuntime(suite, host, cache), img
		})
	})
	t.Run("Fingerprint", func(t *testing.T) {
		fp, err := newRuntime(t, host, cache).Fingerprint(context.Background())
		if err != nil || !fp.Available || fp.Capabilities.Snapshot || fp.Details["snapshot"] == "" {
			t.Errorf("fingerprint %+v %v: want available, snapshot declared missing with a reason", fp, err)
		}
		down, _ := docker.New(docker.Options{Host: "unix:///nonexistent/docker.sock", CacheDir: cache})
		fp, err = down.Fingerprint(context.Background())
		if err != nil || fp.Available || fp.Reason == "" {
			t.Errorf("fingerprint of a missing daemon %+v %v: want unavailable with a reason", fp, err)
		}
	})
	t.Run("Confined", func(t *testing.T) {
		rt := newRuntime(t, host, cache)
		cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		inspect := func(t *testing.T, id string) container.InspectResponse {
			info, err := cli.ContainerInspect(context.Background(), "tartarus-"+id)
			if err != nil {
				t.Fatal(err)
			}
			return info
		}
		containertest.Confined(t, rt, img, containertest.ConfinedOptions{
			HostPid: func(t *testing.T, id string) int { return inspect(t, id).State.Pid },
			LogFile: func(t *testing.T, id string) string {
				// The log driver is none: no file at all.
				if info := inspect(t, id); info.HostConfig.LogConfig.Type != "none" || info.LogPath != "" {
					t.Errorf("log %s %q: want none", info.HostConfig.LogConfig.Type, info.LogPath)
				}
				return ""
			},
		})
		fp, err := rt.Fingerprint(context.Background())
		if err != nil || fp.Jail == nil || !fp.Jail.Seccomp || fp.Jail.UIDRange == "" {
			t.Errorf("fingerprint %+v (jail %+v) %v: want seccomp and a uid range", fp, fp.Jail, err)
		}
		t.Logf("jail %+v; details %v", *fp.Jail, fp.Details)
	})
	t.Run("Network", func(t *testing.T) {
		containertest.Network(t, img, func(t *testing.T, nets rtcontainer.Networks) tartarus.Runtime {
			rt, err := docker.New(docker.Options{Host: host, CacheDir: cache, Networks: nets})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rt.Close() })
			return rt
		})
	})
	t.Run("Migration", func(t *testing.T) { testMigration(t, newRuntime(t, host, cache), host, img) })
	t.Run("HostileMigration", func(t *testing.T) { testHostileMigration(t, newRuntime(t, host, cache), host, img) })
}

func testMigration(t *testing.T, rt *docker.Runtime, host string, img *tartarus.Image) {
	ctx := context.Background()
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() }) // after the containers' cleanups (LIFO)
	ref, err := rt.ImportTemplate(ctx, img)
	if err != nil {
		t.Fatalf("ImportTemplate: %v", err)
	}
	// An ordinary container, as a user would have one: entrypoint, env,
	// working directory, a named volume, files written while it runs.
	app, err := cli.ContainerCreate(ctx, &container.Config{
		Image: ref, Env: []string{"GREETING=hello from docker", "PATH=/bin"},
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"mkdir -p /srv && echo app-data > /srv/app.txt && echo vol-data > /data/v.txt && exec sleep 1000"},
		WorkingDir: "/srv",
	}, &container.HostConfig{NetworkMode: "none", Binds: []string{"kampe-test-vol:/data"}}, nil, nil, "legacy-app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.ContainerRemove(ctx, app.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	})
	if err := cli.ContainerStart(ctx, app.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(t, cli, app.ID, "/data/v.txt")

	t.Run("compatible container plan", func(t *testing.T) {
		plan, err := rt.MigrateToMicroVM(ctx, "legacy-app")
		if err != nil {
			t.Fatal(err)
		}
		if len(plan.Blocking()) != 0 || plan.TargetTemplate != "migrated-legacy-app" || plan.ContainerID != app.ID {
			t.Errorf("plan %+v: want no blocking change, template migrated-legacy-app", plan)
		}
		if !hasChange(plan, kampe.ChangeTypeFilesystem, "/data") {
			t.Errorf("plan does not mention the volume at /data: %+v", plan.RequiredChanges)
		}
		ok, err := rt.CanMigrate(ctx, app.ID)
		if err != nil || !ok {
			t.Errorf("CanMigrate = %v, %v; want true", ok, err)
		}
	})
	t.Run("ExportState", func(t *testing.T) {
		st, err := rt.ExportState(ctx, "legacy-app")
		if err != nil {
			t.Fatal(err)
		}
		if st.Environment["GREETING"] != "hello from docker" || st.Config.WorkingDir != "/srv" ||
			len(st.Config.Entrypoint) != 2 || !st.Running || st.Image != ref {
			t.Errorf("state %+v", st)
		}
		if !hasFile(st, "/srv/app.txt") {
			t.Errorf("filesystem changes %+v lack /srv/app.txt", st.Filesystem)
		}
		found := false
		for _, p := range st.Processes {
			found = found || strings.Contains(p.Command, "sleep 1000")
		}
		if !found {
			t.Errorf("processes %+v lack the sleep", st.Processes)
		}
	})
	t.Run("Migrate carries files, volume and configuration", func(t *testing.T) {
		data := t.TempDir()
		res, err := rt.Migrate(ctx, "legacy-app", docker.MigrateOptions{DataDir: data})
		if err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		want := filepath.Join(data, "images", "templates", "migrated-legacy-app")
		if res.Dir != want || res.Bootable {
			t.Errorf("result %+v: want dir %s, not bootable (no base template here)", res, want)
		}
		for path, content := range map[string]string{"/srv/app.txt": "app-data\n", "/data/v.txt": "vol-data\n"} {
			if got := debugfsCat(t, res.RootFS, path); got != content {
				t.Errorf("%s in the template: %q, want %q", path, got, content)
			}
		}
		var cm docker.ContainerManifest
		if err := json.Unmarshal([]byte(debugfsCat(t, res.RootFS, "/etc/tartarus/container.json")), &cm); err != nil {
			t.Fatal(err)
		}
		var m docker.TemplateManifest
		b, err := os.ReadFile(filepath.Join(res.Dir, "manifest.json"))
		if err != nil || json.Unmarshal(b, &m) != nil {
			t.Fatalf("manifest: %v %s", err, b)
		}
		for _, c := range []docker.ContainerManifest{cm, m.Container} {
			if c.WorkingDir != "/srv" || len(c.Entrypoint) != 2 || !strings.Contains(strings.Join(c.Env, " "), "GREETING=hello from docker") {
				t.Errorf("container manifest %+v", c)
			}
		}
		if m.Name != "migrated-legacy-app" || !strings.HasPrefix(m.Digest, "sha256:") || m.Tenant != kampe.DefaultTenant {
			t.Errorf("manifest %+v", m)
		}
		// Again without Replace: the template is there.
		if _, err := rt.Migrate(ctx, "legacy-app", docker.MigrateOptions{DataDir: data}); !errors.Is(err, tartarus.ErrAlreadyExists) {
			t.Errorf("second Migrate: %v, want ErrAlreadyExists", err)
		}
		bootInGVisor(t, res.RootFS)
	})
	t.Run("host bind mount blocks", func(t *testing.T) {
		hostDir := t.TempDir()
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"sleep", "1000"}},
			&container.HostConfig{NetworkMode: "none", Binds: []string{hostDir + ":/mnt/host:ro"}}, nil, nil, "legacy-bind")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}) })
		plan, err := rt.MigrateToMicroVM(ctx, "legacy-bind")
		if err != nil {
			t.Fatal(err)
		}
		blocking := plan.Blocking()
		if len(blocking) != 1 || blocking[0].Type != kampe.ChangeTypeFilesystem || !strings.Contains(blocking[0].Description, hostDir) ||
			plan.RiskLevel != kampe.RiskLevelMedium {
			t.Errorf("plan %+v: want one blocking filesystem change naming %s, medium risk", plan, hostDir)
		}
		if ok, _ := rt.CanMigrate(ctx, c.ID); ok {
			t.Error("CanMigrate = true for a container with a host bind mount")
		}
		data := t.TempDir()
		_, err = rt.Migrate(ctx, c.ID, docker.MigrateOptions{DataDir: data})
		if !errors.Is(err, tartarus.ErrFailedPrecondition) || !strings.Contains(err.Error(), hostDir) {
			t.Errorf("Migrate: %v, want ErrFailedPrecondition naming the bind mount", err)
		}
		if _, err := os.Stat(filepath.Join(data, "images", "templates", "migrated-legacy-bind")); !os.IsNotExist(err) {
			t.Errorf("a template was written despite the bind mount (stat: %v)", err)
		}
	})
	t.Run("host network, privileged, devices", func(t *testing.T) {
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"sleep", "1000"}},
			// A privileged container opts out of the daemon's userns-remap.
			&container.HostConfig{NetworkMode: "host", Privileged: true, PidMode: "host", UsernsMode: "host", CapAdd: []string{"NET_ADMIN"},
				Resources: container.Resources{Devices: []container.DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/x", CgroupPermissions: "rwm"}}}},
			nil, nil, "legacy-host")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}) })
		plan, err := rt.MigrateToMicroVM(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if plan.RiskLevel != kampe.RiskLevelHigh {
			t.Errorf("risk %s, want high", plan.RiskLevel)
		}
		for _, ct := range []kampe.ChangeType{kampe.ChangeTypeNetwork, kampe.ChangeTypeSecurity, kampe.ChangeTypeDevices} {
			if !hasChange(plan, ct, "") {
				t.Errorf("plan lacks a %s change: %+v", ct, plan.RequiredChanges)
			}
		}
	})
	t.Run("unknown container", func(t *testing.T) {
		if _, err := rt.MigrateToMicroVM(ctx, "no-such-container"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("MigrateToMicroVM: %v, want ErrNotFound", err)
		}
	})
}

// bootInGVisor runs the migrated root filesystem in a gVisor sandbox (when
// runsc is there) and reads the carried file from inside: the template is
// usable as a sandbox's root, not only a file that exists.
func bootInGVisor(t *testing.T, rootfs string) {
	if _, err := os.Stat(gvisor.DefaultRunsc); err != nil {
		t.Logf("runsc not built; not booting the migrated template")
		return
	}
	rt, err := gvisor.New(gvisor.Options{StateDir: t.TempDir(), Runsc: gvisor.DefaultRunsc})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := &tartarus.VMConfig{ID: "migrated-boot", Template: "migrated-legacy-app", CPUs: 1, MemoryMB: 128,
		Image: &tartarus.Image{Name: "migrated-legacy-app", RootFS: rootfs}}
	if _, err := rt.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer rt.Destroy(ctx, cfg.ID)
	if err := rt.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"cat", "/srv/app.txt", "/data/v.txt"}, Stdout: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "app-data\nvol-data\n" {
		t.Errorf("migrated template in a sandbox: %v %+v %q", err, res, out.String())
	}
}

func waitFile(t *testing.T, cli *client.Client, id, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := cli.ContainerStatPath(context.Background(), id, path); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never appeared in container %s", path, id)
}

func debugfsCat(t *testing.T, image, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, image).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

func hasChange(p *kampe.MigrationPlan, typ kampe.ChangeType, substr string) bool {
	for _, c := range p.RequiredChanges {
		if c.Type == typ && strings.Contains(c.Description+c.Field, substr) {
			return true
		}
	}
	return false
}

func hasFile(st *kampe.ContainerState, path string) bool {
	for _, f := range st.Filesystem {
		if f.Path == path {
			return true
		}
	}
	return false
}

// BenchmarkDocker measures create→first exec and the exec round trip.
func BenchmarkDocker(b *testing.B) {
	containertest.Require(b, "dockerd", "debugfs", "mke2fs")
	host := containertest.Dockerd(b)
	rt := newRuntime(b, host, b.TempDir())
	img := containertest.Image(b)
	b.Run("CreateFirstExec", func(b *testing.B) { runtimetest.BenchCreateFirstExec(b, rt, img) })
	b.Run("Exec", func(b *testing.B) { runtimetest.BenchExec(b, rt, img) })
	b.Run("CreateNetwork", func(b *testing.B) {
		cache := b.TempDir()
		containertest.BenchNetwork(b, img, func(b *testing.B, nets rtcontainer.Networks) tartarus.Runtime {
			rt, err := docker.New(docker.Options{Host: host, CacheDir: cache, Networks: nets})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { rt.Close() })
			return rt
		})
	})
}
