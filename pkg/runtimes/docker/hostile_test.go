package docker_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testHostileMigration migrates a container built to attack the host that
// runs `tartarus migrate` (as root): its image has links to host files
// where its volume has files of the same names, and a link where the
// template's own configuration is written. Every host file (a fake host
// directory the test owns, /etc and the data directory) must be unchanged.
func testHostileMigration(t *testing.T, rt *docker.Runtime, host string, img *tartarus.Image) {
	ctx := context.Background()
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ref, err := rt.ImportTemplate(ctx, img)
	if err != nil {
		t.Fatalf("ImportTemplate: %v", err)
	}
	victim := t.TempDir() // the "host": files the image points at
	for name, content := range map[string]string{"crontab": "host crontab\n", "secret": "host secret\n", "manifest": "host manifest\n"} {
		if err := os.WriteFile(filepath.Join(victim, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := t.TempDir()
	base := filepath.Join(data, "images", "templates", "base")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vmlinux", "initrd.img", "admin.key"} {
		if err := os.WriteFile(filepath.Join(base, name), []byte("host "+name), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The hostile image: links to host files below the volume's mount
	// point and where migrate writes its own files.
	plant := strings.Join([]string{
		"mkdir -p /data /etc",
		"ln -s " + victim + "/crontab /data/x",
		"ln -s " + victim + " /data/d",
		"ln -s " + victim + " /etc/tartarus",
		"ln -s " + victim + " /tmp2 && rm -rf /tmp && mv /tmp2 /tmp",
		"rm -f /.dockerenv && ln -s " + victim + "/manifest /.dockerenv",
	}, " && ")
	c1, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"/bin/sh", "-c", plant}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "hostile-build")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.ContainerRemove(ctx, c1.ID, container.RemoveOptions{Force: true}) })
	if err := cli.ContainerStart(ctx, c1.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCh, errCh := cli.ContainerWait(ctx, c1.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waitCh:
		if w.StatusCode != 0 {
			t.Fatalf("planting the links exited %d", w.StatusCode)
		}
	case err := <-errCh:
		t.Fatal(err)
	}
	commit, err := cli.ContainerCommit(ctx, c1.ID, container.CommitOptions{Reference: "tartarus-hostile:1"})
	if err != nil {
		t.Fatal(err)
	}
	// The volume holds files of the same names (docker first copies the
	// image's links into the empty volume; the command replaces them) and
	// a link of its own.
	fill := strings.Join([]string{
		"rm -rf /data/x /data/d",
		"echo pwned > /data/x",
		"mkdir /data/d && echo pwned > /data/d/secret && echo pwned > /data/d/crontab",
		"ln -s " + victim + "/secret /data/y",
		"echo ready > /data/ready",
		"exec sleep 1000",
	}, " && ")
	c2, err := cli.ContainerCreate(ctx, &container.Config{Image: commit.ID, Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{fill}},
		&container.HostConfig{NetworkMode: "none", Binds: []string{"kampe-hostile-vol:/data"}}, nil, nil, "hostile-app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.ContainerRemove(ctx, c2.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	})
	if err := cli.ContainerStart(ctx, c2.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(t, cli, c2.ID, "/data/ready")

	before := containertest.HashHost(t, victim, "/etc", data)
	res, err := rt.Migrate(ctx, "hostile-app", docker.MigrateOptions{DataDir: data})
	after := containertest.HashHost(t, victim, "/etc", data)
	before.Untouched(t, after, filepath.Join(data, "images", "templates", "migrated-hostile-app"))
	if err != nil {
		// Refusing is an acceptable answer to a hostile image; obeying is not.
		t.Logf("Migrate refused the hostile container: %v", err)
		return
	}
	// Neutralised: the volume's files replaced the image's links, the
	// volume's own link is carried as a link, the configuration is where
	// the guest will look for it.
	if got := debugfsCat(t, res.RootFS, "/data/x"); got != "pwned\n" {
		t.Errorf("/data/x in the template: %q", got)
	}
	if got := debugfsCat(t, res.RootFS, "/data/d/secret"); got != "pwned\n" {
		t.Errorf("/data/d/secret in the template: %q", got)
	}
	if out, _ := exec.Command("debugfs", "-R", "stat /data/y", res.RootFS).Output(); !strings.Contains(string(out), "Type: symlink") {
		t.Errorf("/data/y is not a link in the template:\n%s", out)
	}
	if got := debugfsCat(t, res.RootFS, "/etc/tartarus/container.json"); !strings.Contains(got, "hostile-app") {
		t.Errorf("container.json in the template: %q", got)
	}
}
