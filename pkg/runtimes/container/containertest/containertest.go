// Package containertest sets up what the container drivers' end-to-end
// tests (and `tartarus migrate`'s) need: a small busybox template image built
// on the spot, and private dockerd and containerd daemons (own sockets and
// data directories, stopped after the test). Nothing here is a fake: the
// tests run against the real daemons.
package containertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// RequireEnv is the environment variable that turns a missing prerequisite
// into a test failure instead of a skip (CI sets it once the prerequisites
// are installed).
const RequireEnv = "TARTARUS_REQUIRE_KAMPE"

// Require skips the test (or fails it when RequireEnv is set) unless this
// process is root and every binary in bins is on PATH or is an existing path.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	miss := func(why string) {
		t.Helper()
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("prerequisite missing: %s", why)
		}
		t.Skipf("prerequisite missing: %s (install with scripts/deps.sh and scripts/runsc.sh; set %s=1 to fail instead)", why, RequireEnv)
	}
	if os.Geteuid() != 0 {
		miss("needs root")
	}
	for _, b := range bins {
		if strings.Contains(b, "/") {
			if _, err := os.Stat(b); err != nil {
				miss(b)
			}
			continue
		}
		if _, err := exec.LookPath(b); err != nil {
			miss(b + " not on PATH")
		}
	}
}

// busyboxPath finds Debian's static busybox.
func busyboxPath() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("busybox not found (apt-get install busybox-static)")
}

// BuildRootFS writes a minimal busybox root filesystem into dir: every
// applet linked in /bin, /etc/passwd and /etc/group with root.
func BuildRootFS(dir string) error {
	bb, err := busyboxPath()
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "etc", "root", "tmp", "proc", "sys", "dev", "run", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	_ = os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
	b, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), b, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname": "sandbox\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Image builds the busybox root filesystem as an ext4 image (as the images
// package makes templates) and returns it as template "containertest".
func Image(t testing.TB) *tartarus.Image {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	if err := BuildRootFS(root); err != nil {
		t.Fatalf("build rootfs: %v", err)
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if err := kampe.MakeExt4(context.Background(), root, img, 16); err != nil {
		t.Fatalf("make ext4: %v", err)
	}
	bb, _ := busyboxPath()
	b, _ := os.ReadFile(bb)
	sum := sha256.Sum256(b)
	return &tartarus.Image{Name: "containertest", RootFS: img, Digest: "sha256:" + hex.EncodeToString(sum[:]),
		Description: "busybox test template", BuiltAt: time.Now()}
}

// shortDir makes a directory with a short path under /tmp: daemons put
// unix sockets in it, and a socket path must stay under 108 bytes.
func shortDir(t testing.TB, prefix string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join(os.TempDir(), prefix+hex.EncodeToString(b[:]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// daemon runs one daemon process until the test ends.
type daemon struct {
	cmd *exec.Cmd
	log *os.File
}

func startDaemon(t testing.TB, dir, name string, args ...string) *daemon {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return &daemon{cmd: cmd, log: logf}
}

// stop ends the daemon politely, then firmly, and shows its log when the
// test failed.
func (d *daemon) stop(t testing.TB) {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	if t.Failed() {
		b, _ := os.ReadFile(d.log.Name())
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("%s log (tail):\n%s", filepath.Base(d.log.Name()), b)
	}
	d.log.Close()
}

func waitSocket(t testing.TB, d *daemon, sock string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if d.cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(d.log.Name())
	t.Fatalf("daemon socket %s did not come up; log:\n%s", sock, tail(b))
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

// unmountUnder lazily unmounts whatever a daemon left mounted under dir, so
// the directory can be removed.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// Dockerd starts a private dockerd (no iptables, no bridge: containers get
// no network) and returns its host address ("unix:///…/docker.sock"). It is
// stopped and its data removed when the test ends. It remaps users
// (userns-remap=default: dockerd makes the dockremap user and its
// subordinate ids once), as a node's daemon should: root in a container
// is not root on the host.
func Dockerd(t testing.TB) string {
	t.Helper()
	Require(t, "dockerd", "containerd", "runc")
	dir := shortDir(t, "kd-")
	// The remapped root must reach its containers' files below dir.
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	d := startDaemon(t, dir, "dockerd",
		"--host", "unix://"+sock,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--iptables=false", "--ip-masq=false", "--bridge=none",
		"--config-file", writeFile(t, dir, "daemon.json", `{"userns-remap": "default"}`),
	)
	t.Cleanup(func() {
		d.stop(t)
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
	})
	waitSocket(t, d, sock)
	return "unix://" + sock
}

// Containerd starts a private containerd (CRI plugin off) and returns its
// socket path. It is stopped and its data removed when the test ends.
func Containerd(t testing.TB) string {
	t.Helper()
	Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	dir := shortDir(t, "kc-")
	// Sandboxes run in a user namespace: their remapped root must reach
	// its root filesystem below dir (as under /run/containerd, 0711).
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	d := startDaemon(t, dir, "containerd", "--config", writeFile(t, dir, "config.toml", cfg))
	t.Cleanup(func() {
		d.stop(t)
		killShims(sock)
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
	})
	waitSocket(t, d, sock)
	return sock
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// killShims ends the runc shims a test left behind for the containerd at
// sock (shims outlive their daemon by design) and removes their runc state,
// which lives under /run/containerd/runc/<namespace> whatever the daemon.
func killShims(sock string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		var ns, id, addr string
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-namespace":
				ns = args[i+1]
			case "-id":
				id = args[i+1]
			case "-address":
				addr = args[i+1]
			}
		}
		if addr != sock {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if ns != "" && id != "" {
			_ = exec.Command("runc", "--root", filepath.Join("/run/containerd/runc", ns), "delete", "--force", id).Run()
		}
	}
}
