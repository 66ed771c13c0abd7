package microvm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestBootTimeoutRetries starts a stand-in for QEMU that never opens its
// sockets (as a guest hung at boot looks from outside): Start must give up
// after each BootTimeout, retry BootRetries times, say what it tried, and
// leave no process behind.
func TestBootTimeoutRetries(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (scripts/deps.sh installs it)")
	}
	dir := t.TempDir()
	marker := filepath.Join(dir, "starts")
	fake := filepath.Join(dir, "fake-qemu")
	script := "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'QEMU emulator version 0.0 (stand-in)'; exit 0; }\n" +
		"echo started >> " + marker + "\nexec sleep 60\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	img := &tartarus.Image{Name: "base"}
	for _, f := range []struct {
		p    *string
		name string
	}{{&img.Kernel, "vmlinux"}, {&img.Initrd, "initrd.img"}, {&img.RootFS, "rootfs.ext4"}} {
		*f.p = filepath.Join(dir, f.name)
		if err := os.WriteFile(*f.p, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(context.Background(), Config{StateDir: filepath.Join(dir, "state"), QEMU: fake, Accel: "tcg",
		BootTimeout: 300 * time.Millisecond, BootRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Create(ctx, &tartarus.VMConfig{ID: "hung", Template: "base", Image: img, CPUs: 1, MemoryMB: 128}); err != nil {
		t.Fatal(err)
	}
	err = d.Start(ctx, "hung")
	if !errors.Is(err, tartarus.ErrTimeout) || !strings.Contains(err.Error(), "attempt 2") || strings.Contains(err.Error(), "attempt 3") {
		t.Fatalf("Start: %v; want ErrTimeout after exactly 2 attempts", err)
	}
	b, _ := os.ReadFile(marker)
	if n := strings.Count(string(b), "started"); n != 2 {
		t.Errorf("the stand-in started %d times, want 2", n)
	}
	in := d.vms["hung"].instance()
	if in.State != tartarus.InstanceStopped || alive(in.Pid) {
		t.Errorf("after a failed start: %+v (pid alive %v)", in, alive(in.Pid))
	}
	if err := d.Destroy(ctx, "hung"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "hung")); !os.IsNotExist(err) {
		t.Errorf("state dir survived Destroy: %v", err)
	}
}
