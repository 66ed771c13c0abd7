package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestMigrateCommand runs `tartarus migrate` as a user would, against a
// private dockerd: a compatible container becomes a template; one with a
// host bind mount is refused with the plan saying why.
func TestMigrateCommand(t *testing.T) {
	containertest.Require(t, "dockerd", "debugfs", "mke2fs")
	host := containertest.Dockerd(t)
	ctx := context.Background()
	img := containertest.Image(t)
	rt, err := docker.New(docker.Options{Host: host, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	ref, err := rt.ImportTemplate(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	mk := func(name string, hc *container.HostConfig) {
		t.Helper()
		hc.NetworkMode = "none"
		if _, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"sleep", "1000"}, WorkingDir: "/root"}, hc, nil, nil, name); err != nil {
			t.Fatal(err)
		}
	}
	mk("good", &container.HostConfig{})
	hostDir := t.TempDir()
	mk("bound", &container.HostConfig{Binds: []string{hostDir + ":/host"}})

	data := t.TempDir()
	tests := []struct {
		name      string
		opts      migrateOptions
		container string
		wantErr   error
		wantOut   []string
		wantDir   bool
	}{
		{name: "plan only", container: "bound", opts: migrateOptions{planOnly: true},
			wantOut: []string{"[BLOCKING] filesystem", hostDir, "risk: medium"}},
		{name: "bind mount refused", container: "bound", wantErr: tartarus.ErrFailedPrecondition},
		{name: "compatible", container: "good", wantDir: true,
			wantOut: []string{"template migrated-good built in", "rootfs.ext4", "not bootable yet", "tartarus sandbox create --template migrated-good"}},
		{name: "exists", container: "good", wantErr: tartarus.ErrAlreadyExists},
		{name: "forced past the bind mount", container: "bound", opts: migrateOptions{force: true, template: "forced"}, wantDir: true,
			wantOut: []string{"template forced built in"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.dockerHost, o.dataDir, o.output = host, data, "text"
			var out, errb bytes.Buffer
			err := runMigrate(ctx, &o, tt.container, &out, &errb)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("migrate: %v\n%s", err, errb.String())
			}
			t.Logf("output:\n%s%s", errb.String(), out.String())
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if tt.wantDir {
				name := o.template
				if name == "" {
					name = "migrated-" + tt.container
				}
				if _, err := os.Stat(filepath.Join(data, "images", "templates", name, "manifest.json")); err != nil {
					t.Errorf("template %s: %v", name, err)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(data, "images", "templates", "migrated-bound")); !os.IsNotExist(err) {
		t.Errorf("the refused container left a template: %v", err)
	}
}
