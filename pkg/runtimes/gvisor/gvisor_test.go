package gvisor_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos/hypnostest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/gvisor"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/runtimetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func runscPath() string {
	if p := os.Getenv("TARTARUS_RUNSC"); p != "" {
		return p
	}
	return gvisor.DefaultRunsc
}

// newRuntime returns a runtime over stateDir, or skips without runsc.
func newRuntime(t testing.TB, stateDir string) *gvisor.Runtime {
	t.Helper()
	containertest.Require(t, runscPath(), "debugfs", "mke2fs")
	rt, err := gvisor.New(gvisor.Options{StateDir: stateDir, Runsc: runscPath()})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func TestConformance(t *testing.T) {
	state := t.TempDir()
	img := containertest.Image(t)
	runtimetest.Run(t, func(t *testing.T) (tartarus.Runtime, *tartarus.Image) {
		return newRuntime(t, state), img
	})
}

// TestHypnos hibernates and wakes a gVisor sandbox through Hypnos, Nyx and
// a local store: the shared suite every Snapshotter runtime passes.
func TestHypnos(t *testing.T) {
	hypnostest.Run(t, newRuntime(t, t.TempDir()), containertest.Image(t), 128)
}

func exec(t *testing.T, rt tartarus.Runtime, id string, cmd ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	res, err := rt.Exec(context.Background(), id, &tartarus.ExecRequest{Cmd: cmd, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("exec %q: %v", cmd, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q: exit %d, stderr %q", cmd, res.ExitCode, errb.String())
	}
	return out.String()
}

// TestHibernateWake is what Hypnos does: snapshot, destroy, restore under
// the same id later. Files written in the sandbox and the processes of its
// init survive; so does memory (the init shell's variable).
func TestHibernateWake(t *testing.T) {
	rt := newRuntime(t, t.TempDir())
	img := containertest.Image(t)
	ctx := context.Background()
	cfg := &tartarus.VMConfig{ID: "hib-1", Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128}
	if _, err := rt.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Destroy(context.Background(), cfg.ID) })
	if err := rt.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	if err := rt.WriteFile(ctx, cfg.ID, "/root/notes.txt", 0o600, strings.NewReader("before hibernate")); err != nil {
		t.Fatal(err)
	}
	// A background process started by an Exec survives too: commands
	// run as children of the sandbox's init (see spawn.go).
	exec(t, rt, cfg.ID, "sh", "-c", "sleep 777 </dev/null >/dev/null 2>&1 &")
	before := exec(t, rt, cfg.ID, "ps", "-o", "pid,args")

	snap := filepath.Join(t.TempDir(), "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	info, err := rt.Snapshot(ctx, cfg.ID, snap)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if len(info.Files) == 0 || info.Template != img.Name {
		t.Errorf("SnapshotInfo %+v", info)
	}
	list, _ := rt.List(ctx)
	for _, in := range list {
		if in.ID == cfg.ID && in.State != tartarus.InstancePaused {
			t.Errorf("after Snapshot the sandbox is %s, want paused", in.State)
		}
	}
	if err := rt.Destroy(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	if err := rt.Restore(ctx, cfg, snap); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	rc, err := rt.ReadFile(ctx, cfg.ID, "/root/notes.txt")
	if err != nil {
		t.Fatalf("ReadFile after wake: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "before hibernate" {
		t.Errorf("file after wake: %q", got)
	}
	after := exec(t, rt, cfg.ID, "ps", "-o", "pid,args")
	// The init's sleep and the Exec's background sleep keep their pids:
	// the same processes, not a reboot.
	for _, line := range strings.Split(before, "\n") {
		if strings.Contains(line, "sleep 3600") || strings.Contains(line, "sleep 777") {
			if !strings.Contains(after, strings.TrimSpace(line)) {
				t.Errorf("process %q missing after wake; ps:\n%s", line, after)
			}
		}
	}
	if err := rt.Restore(ctx, cfg, snap); err == nil {
		t.Errorf("second Restore under a live id succeeded, want ErrAlreadyExists")
	}
}

// BenchmarkCreateFirstExec measures create + start + the first command.
func BenchmarkCreateFirstExec(b *testing.B) {
	runtimetest.BenchCreateFirstExec(b, newRuntime(b, b.TempDir()), containertest.Image(b))
}

// BenchmarkExec measures one command's round trip in a running sandbox.
func BenchmarkExec(b *testing.B) {
	runtimetest.BenchExec(b, newRuntime(b, b.TempDir()), containertest.Image(b))
}

// TestExecUser: a named user is looked up in the sandbox's tree and the
// command runs with its uid, gid and HOME; an unknown name is refused.
func TestExecUser(t *testing.T) {
	rt := newRuntime(t, t.TempDir())
	img := containertest.Image(t)
	ctx := context.Background()
	cfg := &tartarus.VMConfig{ID: "user-1", Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128}
	if _, err := rt.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Destroy(context.Background(), cfg.ID) })
	if err := rt.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user, want string
	}{
		{"nobody", "65534 65534 /\n"},
		{"nobody:root", "65534 0 /\n"},
		{"root", "0 0 /root\n"},
		{"", "0 0 /root\n"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		res, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", `echo $(id -u) $(id -g) "$HOME"`}, User: tt.user, Stdout: &out, Stderr: &errb})
		if err != nil || res.ExitCode != 0 || out.String() != tt.want {
			t.Errorf("user %q: %v %+v %q %q; want %q", tt.user, err, res, out.String(), errb.String(), tt.want)
		}
	}
	_, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"id"}, User: "nosuch"})
	if !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("unknown user: %v, want ErrInvalid naming it", err)
	}
}
