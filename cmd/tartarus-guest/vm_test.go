//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestBootInVM boots a real QEMU microvm (TCG) with this agent as /init and
// talks to it over the virtio-serial port. It needs an uncompressed Debian
// vmlinux and a directory with its virtio/ext4 modules and their load list:
//
//	TARTARUS_TEST_KERNEL=/path/vmlinux TARTARUS_TEST_MODULES=/path/modules \
//	  go test -run TestBootInVM -v ./cmd/tartarus-guest
//
// The microvm driver's e2e tests cover the same path with the built images.
func TestBootInVM(t *testing.T) {
	// TARTARUS_TEST_KERNEL_ARGS adds to the kernel command line
	// (tartarus.debug logs each boot step and module).
	kernel, modules := os.Getenv("TARTARUS_TEST_KERNEL"), os.Getenv("TARTARUS_TEST_MODULES")
	if kernel == "" || modules == "" {
		t.Skip("set TARTARUS_TEST_KERNEL and TARTARUS_TEST_MODULES to boot a VM")
	}
	for _, tool := range []string{"qemu-system-x86_64", "mke2fs", "busybox", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	initrd := buildInitramfs(t, dir, modules)
	rootfs := buildRootfs(t, dir)
	sock := filepath.Join(dir, "agent.sock")
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-machine", "microvm", "-accel", "tcg",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-monitor", "none",
		"-m", "256", "-smp", "1",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 " + tscArg() + " reboot=k panic=-1 quiet tartarus.root=/dev/vda tartarus.rootfstype=ext4 tartarus.hostname=vmtest " + os.Getenv("TARTARUS_TEST_KERNEL_ARGS"),
		"-chardev", "file,id=console,path=" + console,
		"-serial", "chardev:console",
		"-drive", "id=root,file=" + rootfs + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-chardev", "socket,id=agent,path=" + sock + ",server=on,wait=off",
		"-device", "virtio-serial-device,max_ports=2",
		"-device", "virtserialport,chardev=agent,name=tartarus",
	}
	qemu := exec.Command("qemu-system-x86_64", args...)
	var qemuOut bytes.Buffer
	qemu.Stdout, qemu.Stderr = &qemuOut, &qemuOut
	started := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		qemu.Process.Kill()
		qemu.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("qemu:\n%s\nconsole:\n%s", qemuOut.String(), b)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := dialVM(t, ctx, sock)
	t.Logf("first session %v after QEMU start", time.Since(started).Round(time.Millisecond))
	in := c.Info()
	if in.Hostname != "vmtest" || in.BootError != "" || !strings.HasPrefix(in.AgentVersion, "0.") {
		t.Fatalf("info = %+v", in)
	}
	if d := time.Since(in.BootedAt); d < 0 || d > time.Minute {
		t.Errorf("guest clock not synced: booted %v ago", d)
	}

	var out bytes.Buffer
	res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "cat /proc/1/comm; hostname; mount | grep -c ' / '; ls /dev/pts/ptmx; date +%Y"}, Stdout: &out, Stderr: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %+v %v\n%s", res, err, out.String())
	}
	t.Logf("guest says:\n%s", out.String())
	if want := fmt.Sprintf("init\nvmtest\n1\n/dev/pts/ptmx\n%d\n", time.Now().Year()); out.String() != want {
		t.Errorf("guest said %q, want %q", out.String(), want)
	}

	// Round trips, measured.
	const pings = 20
	start := time.Now()
	for range pings {
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("ping round trip %v", (time.Since(start) / pings).Round(time.Microsecond))
	start = time.Now()
	for range 5 {
		if res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil || res.ExitCode != 0 {
			t.Fatal(res, err)
		}
	}
	t.Logf("exec true %v", (time.Since(start) / 5).Round(time.Microsecond))

	data := make([]byte, 4<<20)
	rand.Read(data)
	start = time.Now()
	if err := c.WriteFile(ctx, "/root/x/data.bin", 0o600, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	start = time.Now()
	rc, err := c.ReadFile(ctx, "/root/x/data.bin")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("file read back differs")
	}
	t.Logf("4 MiB upload %v, download %v", up.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryTotalMB < 100 || st.MemoryTotalMB > 256 || st.Processes < 1 {
		t.Errorf("stats = %+v", st)
	}
	t.Logf("stats %+v", st)

	// `kill 1` must not bring the guest down.
	if _, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"kill", "-TERM", "1"}}); err != nil {
		t.Fatal(err)
	}
	// The host leaves and comes back: a fresh session.
	c.Close()
	c = dialVM(t, ctx, sock)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()

	b, _ := os.ReadFile(console)
	if testing.Verbose() {
		t.Logf("console:\n%s", b)
	}
	if m := regexp.MustCompile(`msg="boot done".* ms=([0-9.]+) steps=(\S+)`).FindSubmatch(b); m != nil {
		t.Logf("guest boot %s ms: %s", m[1], m[2])
	} else {
		t.Errorf("no boot line on the console:\n%s", b)
	}
}

func dialVM(t *testing.T, ctx context.Context, sock string) *guest.Client {
	t.Helper()
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			c, err := guest.Dial(ctx, conn, nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatalf("agent socket: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tscArg avoids the TSC calibration hang under TCG (see docs/DESIGN).
func tscArg() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	m := regexp.MustCompile(`cpu MHz\s*:\s*([0-9.]+)`).FindSubmatch(b)
	if m == nil {
		return ""
	}
	var mhz float64
	fmt.Sscan(string(m[1]), &mhz)
	return fmt.Sprintf("tsc_early_khz=%d", int(mhz*1000))
}

// buildInitramfs writes a newc cpio with /init (this agent, built static),
// /dev/console and the modules.
func buildInitramfs(t *testing.T, dir, modules string) string {
	t.Helper()
	agentBin := filepath.Join(dir, "tartarus-guest")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	var buf bytes.Buffer
	w := &cpioWriter{w: &buf}
	w.dir("dev")
	w.node("dev/console", 0o20600, 5, 1)
	w.dir("modules")
	agentBytes, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	w.file("init", 0o755, agentBytes)
	ents, err := os.ReadDir(modules)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(modules, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		w.file("modules/"+e.Name(), 0o644, b)
	}
	w.trailer()
	p := filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// buildRootfs makes a small ext4 image holding busybox.
func buildRootfs(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "etc", "root", "tmp", "dev", "proc", "sys", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"sh", "cat", "echo", "ls", "true", "kill", "hostname", "mount", "grep", "date", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", c)); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", "-d", root, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	return img
}

// cpioWriter writes the newc format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	ino int
}

func (c *cpioWriter) entry(name string, mode, major, minor uint32, data []byte) {
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	io.WriteString(c.w, hdr)
	io.WriteString(c.w, name+"\x00")
	c.pad(110 + len(name) + 1)
	c.w.Write(data)
	c.pad(len(data))
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.w.Write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string) { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, 0, 0, data)
}
func (c *cpioWriter) node(name string, mode, major, minor uint32) {
	c.entry(name, mode, major, minor, nil)
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }
