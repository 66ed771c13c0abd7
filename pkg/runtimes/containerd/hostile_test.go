package containerd_test

import (
	"bytes"
	"context"
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

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/containerd"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testHostileMigration migrates a running container that swaps a directory
// for an absolute link to a host directory over and over while its files
// are walked, and plants a link where migrate writes its configuration.
// No host file may change and no host file's content may reach the
// template: a walk through the container's root that resolved the link on
// the host would copy the secret.
func testHostileMigration(t *testing.T, rt *containerd.Runtime, addr string, img *tartarus.Image) {
	ctx := namespaces.WithNamespace(context.Background(), "tartarus")
	ref, err := rt.ImportTemplate(ctx, img)
	if err != nil {
		t.Fatalf("ImportTemplate: %v", err)
	}
	cli, err := client.New(addr, client.WithDefaultNamespace("tartarus"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	image, err := cli.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	victim := t.TempDir()
	secret := fmt.Sprintf("HOST-SECRET-%d", time.Now().UnixNano())
	// The second file's name is known to the host only: seeing it in an
	// error or the template means the walk listed the host's directory.
	hostOnly := fmt.Sprintf("admin-key-%d", time.Now().UnixNano())
	for _, name := range []string{"f", hostOnly} {
		if err := os.WriteFile(filepath.Join(victim, name), []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	data := t.TempDir()
	if err := os.MkdirAll(filepath.Join(data, "images", "templates"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "admin.key"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}

	id := fmt.Sprintf("hostile-swap-%d", time.Now().UnixNano()%1e6)
	// Many swapping directories, so a walk meets one mid-swap often.
	script := fmt.Sprintf(`mkdir -p /etc && rm -rf /etc/tartarus && ln -s %[1]s /etc/tartarus
mkdir -p /w
for i in 0 1 2 3 4 5 6 7 8 9; do mkdir -p /w/d$i && echo guest > /w/d$i/f; done
echo ready > /ready
while true; do
  for i in 0 1 2 3 4 5 6 7 8 9; do
    mv /w/d$i /w/t$i && ln -s %[1]s /w/d$i && sleep 0.01 && rm /w/d$i && mv /w/t$i /w/d$i
  done
done`, victim)
	c, err := cli.NewContainer(ctx, id, client.WithImage(image), client.WithSnapshotter("overlayfs"),
		client.WithNewSnapshot(id+"-snap", image), client.WithNewSpec(oci.WithImageConfig(image),
			oci.WithProcessArgs("sh", "-c", script), oci.WithProcessCwd("/")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if task, err := c.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, client.WithProcessKill)
		}
		_ = c.Delete(ctx, client.WithSnapshotCleanup)
	})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/ready", task.Pid())); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the container never got ready")
		}
		time.Sleep(50 * time.Millisecond)
	}

	before := containertest.HashHost(t, victim, "/etc", data)
	var built, refused int
	for i := range 8 {
		name := fmt.Sprintf("hostile-%d", i)
		res, err := rt.Migrate(ctx, id, kampe.MigrateOptions{DataDir: data, Template: name})
		if err != nil {
			// Refusing a tree that changes under the walk is fine;
			// following its link onto the host is not.
			refused++
			t.Logf("migration %d refused: %v", i, err)
			if strings.Contains(err.Error(), hostOnly) {
				t.Errorf("migration %d read the host's directory: %v", i, err)
			}
			continue
		}
		built++
		img, err := os.ReadFile(res.RootFS)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(img, []byte(secret)) || bytes.Contains(img, []byte(hostOnly)) {
			t.Errorf("migration %d: the host's secret is in the template", i)
		}
		out, _ := exec.Command("debugfs", "-R", "cat /etc/tartarus/container.json", res.RootFS).Output()
		if !strings.Contains(string(out), id) {
			t.Errorf("migration %d: container.json in the template: %q", i, out)
		}
	}
	after := containertest.HashHost(t, victim, "/etc", data)
	var allowed []string
	for i := range 8 {
		allowed = append(allowed, filepath.Join(data, "images", "templates", fmt.Sprintf("hostile-%d", i)))
	}
	before.Untouched(t, after, allowed...)
	t.Logf("%d migrations built, %d refused", built, refused)
}
