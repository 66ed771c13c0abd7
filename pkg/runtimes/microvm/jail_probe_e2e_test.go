package microvm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// jailProbes run inside a sandbox's jail (microvm.ProbeInJail); TestMain
// hands them to the shim.
var jailProbes = map[string]func() int{"walls": probeWalls}

// wall is something a jailed QEMU must not do, and the errno that says why.
type wall struct {
	name string
	try  func(env map[string]string) error
	want syscall.Errno
}

func dialUnix(path string) error {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
	}
	return err
}

var walls = []wall{
	// Not in the jail's root at all.
	{"read admin key", func(e map[string]string) error { _, err := os.ReadFile(e["ADMIN_KEY"]); return err }, syscall.ENOENT},
	{"read database", func(e map[string]string) error { _, err := os.ReadFile(e["DATABASE"]); return err }, syscall.ENOENT},
	{"read other disk", func(e map[string]string) error { _, err := os.ReadFile(e["OTHER_DISK"]); return err }, syscall.ENOENT},
	{"connect other qmp", func(e map[string]string) error { return dialUnix(e["OTHER_QMP"]) }, syscall.ENOENT},
	{"connect other agent", func(e map[string]string) error { return dialUnix(e["OTHER_AGENT"]) }, syscall.ENOENT},
	{"read own host config", func(e map[string]string) error { _, err := os.ReadFile(e["OWN_CONFIG"]); return err }, syscall.ENOENT},
	// Another pid namespace.
	{"signal other qemu", func(e map[string]string) error {
		pid, _ := strconv.Atoi(e["OTHER_PID"])
		return unix.Kill(pid, syscall.SIGKILL)
	}, syscall.ESRCH},
	// Seccomp (the shim's stand-in for QEMU's spawn=deny).
	{"execve", func(map[string]string) error { return unix.Exec("/usr/bin/true", []string{"true"}, nil) }, syscall.EPERM},
	{"fork", func(map[string]string) error {
		if _, _, errno := unix.RawSyscall(unix.SYS_FORK, 0, 0, 0); errno != 0 {
			return errno
		}
		return nil
	}, syscall.EPERM},
	// Read-only root, binds and images.
	{"write root", func(map[string]string) error { return os.WriteFile("/escape", nil, 0o644) }, syscall.EROFS},
	{"write usr", func(map[string]string) error { return os.WriteFile("/usr/escape", nil, 0o644) }, syscall.EROFS},
	{"write kernel", func(e map[string]string) error { return os.WriteFile(e["KERNEL"], nil, 0o644) }, syscall.EROFS},
	{"write root filesystem", func(e map[string]string) error { return os.WriteFile(e["ROOTFS"], nil, 0o644) }, syscall.EROFS},
	{"write host config", func(e map[string]string) error { return os.WriteFile(e["OWN_CONFIG"], nil, 0o644) }, syscall.EROFS},
	// No capabilities.
	{"setuid 0", func(map[string]string) error {
		if _, _, errno := unix.RawSyscall(unix.SYS_SETUID, 0, 0, 0); errno != 0 {
			return errno
		}
		return nil
	}, syscall.EPERM},
	{"mount", func(e map[string]string) error { return unix.Mount("none", e["OWN_DIR"], "tmpfs", 0, "") }, syscall.EPERM},
}

// probeWalls prints "control ok" when it can do what QEMU must (write its
// directory, read its disk), then one line per wall: "<name>|denied <errno>"
// or "<name>|ALLOWED".
func probeWalls() int {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if err := os.WriteFile(filepath.Join(env["OWN_DIR"], "control"), []byte("x"), 0o600); err != nil {
		fmt.Printf("control|FAILED %v\n", err)
		return 1
	}
	if _, err := os.ReadFile(filepath.Join(env["OWN_DIR"], "overlay.qcow2")); err != nil {
		fmt.Printf("control|FAILED %v\n", err)
		return 1
	}
	fmt.Println("control|ok")
	for _, w := range walls {
		err := w.try(env)
		var errno syscall.Errno
		switch {
		case err == nil:
			fmt.Printf("%s|ALLOWED\n", w.name)
		case errors.As(err, &errno):
			fmt.Printf("%s|denied %d %v\n", w.name, int(errno), err)
		default:
			fmt.Printf("%s|denied ? %v\n", w.name, err)
		}
	}
	return 0
}

// TestProbesInTheJail boots two jailed sandboxes in a data directory that
// holds an admin key and a database, and runs the probes in the first
// sandbox's jail with its QEMU's exact spec: each must fail for its
// documented reason; the test fails if any succeeds.
func TestProbesInTheJail(t *testing.T) {
	imgs := needImages(t)
	data := t.TempDir()
	stateDir := filepath.Join(data, "vms")
	adminKey, db := filepath.Join(data, "admin.key"), filepath.Join(data, "tartarus.db")
	for _, f := range []string{adminKey, db} {
		if err := os.WriteFile(f, []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := newDriverJail(t, stateDir, imgs.base, newJail(t, stateDir))
	t.Cleanup(func() { d.Close() })
	for _, id := range []string{"probe-a", "probe-b"} {
		if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 256}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
		if err := d.Start(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	}
	otherPid := pidOf(t, d, "probe-b")
	out, err := os.Create(filepath.Join(t.TempDir(), "walls.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	own := filepath.Join(stateDir, "probe-a")
	other := filepath.Join(stateDir, "probe-b", "jail")
	p, err := microvm.ProbeInJail(ctxT(t), d, "probe-a", "walls", []string{
		"ADMIN_KEY=" + adminKey, "DATABASE=" + db,
		"OTHER_DISK=" + filepath.Join(other, "overlay.qcow2"), "OTHER_QMP=" + filepath.Join(other, "qmp.sock"),
		"OTHER_AGENT=" + filepath.Join(other, "agent.sock"), "OTHER_PID=" + strconv.Itoa(otherPid),
		"OWN_DIR=" + filepath.Join(own, "jail"), "OWN_CONFIG=" + filepath.Join(own, "config.json"),
		"KERNEL=" + imgs.base.Kernel, "ROOTFS=" + imgs.base.RootFS,
	}, out)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Wait(); err != nil {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("probe: %v\n%s", err, b)
	}
	// The probe ran as the sandbox's QEMU does.
	if st := procStatus(t, pidOf(t, d, "probe-a")); strings.Fields(st["Uid"])[0] != strconv.Itoa(p.UID) {
		t.Errorf("probe uid %d, QEMU's %s", p.UID, st["Uid"])
	}
	b, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		name, res, _ := strings.Cut(line, "|")
		got[name] = res
	}
	if got["control"] != "ok" {
		t.Fatalf("the probe could not do what its QEMU must, so it proves nothing:\n%s", b)
	}
	for _, w := range walls {
		res, ok := got[w.name]
		switch {
		case !ok:
			t.Errorf("%s: no result\n%s", w.name, b)
		case !strings.HasPrefix(res, "denied "):
			t.Errorf("%s: %s — the wall does not hold", w.name, res)
		case !strings.HasPrefix(res, fmt.Sprintf("denied %d ", int(w.want))):
			t.Errorf("%s: %s, want %v (its documented reason)", w.name, res, w.want)
		default:
			t.Logf("%s: %s", w.name, res)
		}
	}
	// The other sandbox lives on.
	if out := strings.TrimSpace(run(t, d, "probe-b", "echo", "alive")); out != "alive" {
		t.Errorf("probe-b after the probes: %q", out)
	}
}
