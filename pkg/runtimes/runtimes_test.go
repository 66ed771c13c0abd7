package runtimes

import (
	"context"
	"errors"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tests := []struct {
		name    string
		cfg     Config
		wantErr error
		// wantAvailable is checked only when the runtime opened.
		wantUnavailable bool
	}{
		{name: "nonsense", cfg: Config{DataDir: dir}, wantErr: tartarus.ErrInvalid},
		{name: "gvisor", cfg: Config{DataDir: dir, Runsc: "/nonexistent/runsc"}, wantUnavailable: true},
		{name: "docker", cfg: Config{DataDir: dir, DockerHost: "unix:///nonexistent/docker.sock"}, wantUnavailable: true},
		{name: "containerd", cfg: Config{DataDir: dir, ContainerdAddress: "/nonexistent/containerd.sock"}, wantUnavailable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := Open(ctx, tt.name, tt.cfg)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open: %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rt.Name() != tt.name {
				t.Errorf("Name %q", rt.Name())
			}
			fp, err := rt.Fingerprint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantUnavailable && (fp.Available || fp.Reason == "") {
				t.Errorf("fingerprint %+v: want unavailable with a reason", fp)
			}
			if tt.wantUnavailable && fp.Available == false {
				_, err := rt.Create(ctx, &tartarus.VMConfig{ID: "x", Image: &tartarus.Image{Name: "base", RootFS: "/x"}, CPUs: 1, MemoryMB: 128})
				if !errors.Is(err, tartarus.ErrUnavailable) {
					t.Errorf("Create on an unavailable runtime: %v, want ErrUnavailable", err)
				}
			}
		})
	}
}
