package docker_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestMigratedTemplateBootsInMicroVM carries a container into a template
// and boots that template in a real microVM, reading the carried files from
// inside the guest. It needs the base template's kernel and initramfs,
// built by the microvm tests into $TARTARUS_TEST_DATA (default
// /var/tmp/tartarus-test); without them it skips and says so.
func TestMigratedTemplateBootsInMicroVM(t *testing.T) {
	containertest.Require(t, "dockerd", "debugfs", "mke2fs", "qemu-system-x86_64")
	cache := os.Getenv("TARTARUS_TEST_DATA")
	if cache == "" {
		cache = "/var/tmp/tartarus-test"
	}
	cat, err := images.Open(images.Options{DataDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	base, err := cat.Get(context.Background(), "base")
	if err != nil {
		t.Skipf("no built base template in %s (the microvm tests build it): %v", cache, err)
	}
	host := containertest.Dockerd(t)
	ctx := context.Background()
	rt := newRuntime(t, host, t.TempDir())
	ref, err := rt.ImportTemplate(ctx, containertest.Image(t))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Env: []string{"GREETING=hi"},
		Cmd: []string{"sh", "-c", "mkdir -p /srv && echo carried > /srv/app.txt && sleep 1000"}, WorkingDir: "/srv"},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "to-microvm")
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(t, cli, c.ID, "/srv/app.txt")

	// A data directory whose base template is the cached one.
	data := t.TempDir()
	baseDir := filepath.Join(data, "images", "templates", "base")
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{base.Kernel, base.Initrd} {
		if err := os.Symlink(f, filepath.Join(baseDir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	res, err := rt.Migrate(ctx, "to-microvm", docker.MigrateOptions{DataDir: data})
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if !res.Bootable {
		t.Fatalf("migrated template not bootable: %s", res.Missing)
	}
	vm, err := microvm.New(ctx, microvm.Config{StateDir: t.TempDir(), ProbeImage: base,
		ProbeCache: filepath.Join(cache, "kvm-probe.json")})
	if err != nil {
		t.Fatal(err)
	}
	img := &tartarus.Image{Name: res.Template, Kernel: filepath.Join(res.Dir, "vmlinux"),
		Initrd: filepath.Join(res.Dir, "initrd.img"), RootFS: res.RootFS}
	cfg := &tartarus.VMConfig{ID: "migrated-vm", Template: res.Template, Image: img, CPUs: 1, MemoryMB: 256}
	if _, err := vm.Create(ctx, cfg); err != nil {
		t.Fatalf("microvm Create: %v", err)
	}
	defer vm.Destroy(context.Background(), cfg.ID)
	if err := vm.Start(ctx, cfg.ID); err != nil {
		t.Fatalf("microvm Start: %v", err)
	}
	var out bytes.Buffer
	r, err := vm.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"cat", "/srv/app.txt", "/etc/tartarus/container.json"}, Stdout: &out})
	if err != nil || r.ExitCode != 0 || !bytes.HasPrefix(out.Bytes(), []byte("carried\n")) || !bytes.Contains(out.Bytes(), []byte("GREETING=hi")) {
		t.Fatalf("exec in the migrated microVM: %v %+v %q", err, r, out.String())
	}
	t.Logf("the migrated template booted in a microVM:\n%s", out.String())
}
