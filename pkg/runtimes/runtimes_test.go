package runtimes

import (
	"context"
	"errors"
	"strings"
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
		// wantText is part of the error's text, when set.
		wantText string
		// wantAvailable is checked only when the runtime opened.
		wantUnavailable bool
	}{
		{name: "nonsense", cfg: Config{DataDir: dir}, wantErr: tartarus.ErrInvalid},
		{name: "gvisor", cfg: Config{DataDir: dir, Runsc: "/nonexistent/runsc"}, wantUnavailable: true},
		{name: "docker", cfg: Config{DataDir: dir, DockerHost: "unix:///nonexistent/docker.sock"}, wantUnavailable: true},
		{name: "containerd", cfg: Config{DataDir: dir, ContainerdAddress: "/nonexistent/containerd.sock"}, wantUnavailable: true},
		{name: "microvm", cfg: Config{DataDir: dir, Accel: "tcg"}},
		{name: "microvm", cfg: Config{DataDir: dir, Accel: "warp"}, wantErr: tartarus.ErrInvalid},
		{name: "fake", cfg: Config{DataDir: dir}, wantErr: tartarus.ErrInvalid, wantText: "--unsafe-fake-runtime"},
		{name: "fake", cfg: Config{DataDir: dir, AllowUnsafeFake: true}},
		{name: "docker", cfg: Config{}, wantErr: tartarus.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := Open(ctx, tt.name, tt.cfg)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open: %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantText) {
					t.Errorf("Open: %v, want it to say %q", err, tt.wantText)
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

// TestOpenUnknownNamesTheRuntimes checks that a mistyped name is told
// what the build offers.
func TestOpenUnknownNamesTheRuntimes(t *testing.T) {
	_, err := Open(context.Background(), "dokcer", Config{DataDir: t.TempDir()})
	if !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("Open: %v, want ErrInvalid", err)
	}
	for _, name := range Names {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}
