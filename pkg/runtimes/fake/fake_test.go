package fake

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/runtimetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		caps *tartarus.Capabilities
	}{
		{"all capabilities", nil},
		{"no optional capabilities", &tartarus.Capabilities{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			img := &tartarus.Image{Name: "base"}
			runtimetest.Run(t, func(t *testing.T) (tartarus.Runtime, *tartarus.Image) {
				rt, err := New(Config{StateDir: dir, Capabilities: tt.caps})
				if err != nil {
					t.Fatal(err)
				}
				return rt, img
			})
		})
	}
}

func TestSnapshotRestore(t *testing.T) {
	ctx := t.Context()
	img := &tartarus.Image{Name: "base"}
	rt, err := New(Config{StateDir: t.TempDir(), Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Files: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Create(ctx, &tartarus.VMConfig{ID: "a", Template: "base", Image: img, CPUs: 1, MemoryMB: 256,
		Env: map[string]string{"A": "1"}}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := rt.WriteFile(ctx, "a", "/d/f", 0o600, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	info, err := rt.Snapshot(ctx, "a", dir)
	if err != nil || info.Template != "base" || info.MemoryBytes != 256<<20 || len(info.Files) != 2 {
		t.Fatalf("Snapshot: %+v %v", info, err)
	}
	if list, _ := rt.List(ctx); list[0].State != tartarus.InstancePaused {
		t.Errorf("after Snapshot: %s, want paused", list[0].State)
	}
	if err := rt.Restore(ctx, &tartarus.VMConfig{ID: "b", Template: "base", Env: map[string]string{"A": "2"}}, dir); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	rc, err := rt.ReadFile(ctx, "b", "/d/f")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "x" {
		t.Errorf("restored file %q", got)
	}
	var out strings.Builder
	if _, err := rt.Exec(ctx, "b", &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo $A"}, Stdout: &out}); err != nil || out.String() != "2\n" {
		t.Errorf("env of the restored sandbox: %q %v", out.String(), err)
	}
	if err := rt.Restore(ctx, &tartarus.VMConfig{ID: "b"}, dir); !errors.Is(err, tartarus.ErrAlreadyExists) {
		t.Errorf("Restore onto an existing id: %v", err)
	}

	plain, err := New(Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Snapshot(ctx, "a", t.TempDir()); !errors.Is(err, tartarus.ErrNotImplemented) {
		t.Errorf("Snapshot without the capability: %v", err)
	}
}
