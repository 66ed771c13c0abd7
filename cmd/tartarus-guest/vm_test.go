//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
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
	img := vmImages(t)
	v := img.start(t, "boot", img.rootfs, "")
	sock, console, started := v.sock, v.console, v.started
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

// vmImage is what the VM tests boot: the kernel, an initramfs with this
// agent as /init, and a busybox root file system.
type vmImage struct {
	dir, kernel, initrd, rootfs string
}

// vmImages builds the images once per test, or skips without a kernel.
func vmImages(t *testing.T) *vmImage {
	t.Helper()
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
	return &vmImage{dir: dir, kernel: kernel, initrd: buildInitramfs(t, dir, os.Getenv("TARTARUS_TEST_MODULES")), rootfs: buildRootfs(t, dir)}
}

// testVM is one QEMU process.
type testVM struct {
	name, sock, qmp, console string
	started                  time.Time
	cmd                      *exec.Cmd
}

// start runs QEMU on rootfs; incoming, if set, restores a saved state.
func (img *vmImage) start(t *testing.T, name, rootfs, incoming string) *testVM {
	t.Helper()
	v := &testVM{
		name:    name,
		sock:    filepath.Join(img.dir, name+".sock"),
		qmp:     filepath.Join(img.dir, name+".qmp"),
		console: filepath.Join(img.dir, name+".console"),
	}
	args := []string{
		"-machine", "microvm", "-accel", "tcg",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-monitor", "none",
		"-m", "256", "-smp", "1",
		"-kernel", img.kernel, "-initrd", img.initrd,
		"-append", "console=ttyS0 " + tscArg() + " reboot=k panic=-1 quiet tartarus.root=/dev/vda tartarus.rootfstype=ext4 tartarus.hostname=vmtest " + os.Getenv("TARTARUS_TEST_KERNEL_ARGS"),
		"-chardev", "file,id=console,path=" + v.console,
		"-serial", "chardev:console",
		"-drive", "id=root,file=" + rootfs + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-chardev", "socket,id=agent,path=" + v.sock + ",server=on,wait=off",
		"-device", "virtio-serial-device,max_ports=2",
		"-device", "virtserialport,chardev=agent,name=tartarus",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off",
	}
	if incoming != "" {
		args = append(args, "-incoming", incoming)
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	var out bytes.Buffer
	v.cmd.Stdout, v.cmd.Stderr = &out, &out
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.stop()
		if t.Failed() {
			b, _ := os.ReadFile(v.console)
			t.Logf("%s qemu:\n%s\nconsole:\n%s", name, out.String(), b)
		}
	})
	return v
}

func (v *testVM) stop() {
	if v.cmd.ProcessState == nil {
		v.cmd.Process.Kill()
		v.cmd.Wait()
	}
}

// qmpCall connects to the VM's QMP socket and runs commands in order,
// returning the last answer's "return".
func (v *testVM) qmpCall(t *testing.T, ctx context.Context, cmds ...string) json.RawMessage {
	t.Helper()
	var conn net.Conn
	var err error
	for {
		if conn, err = net.Dial("unix", v.qmp); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("qmp: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	dec := json.NewDecoder(conn)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		t.Fatalf("qmp greeting: %v", err)
	}
	var last json.RawMessage
	for _, c := range append([]string{`{"execute":"qmp_capabilities"}`}, cmds...) {
		if _, err := io.WriteString(conn, c+"\n"); err != nil {
			t.Fatal(err)
		}
		for {
			var msg struct {
				Return json.RawMessage        `json:"return"`
				Error  *struct{ Desc string } `json:"error"`
				Event  string                 `json:"event"`
			}
			if err := dec.Decode(&msg); err != nil {
				t.Fatalf("qmp %s: %v", c, err)
			}
			if msg.Event != "" {
				continue
			}
			if msg.Error != nil {
				t.Fatalf("qmp %s: %s", c, msg.Error.Desc)
			}
			last = msg.Return
			break
		}
	}
	return last
}

// TestSnapshotRestoreInVM saves a running guest to a file, restores it
// twice, and checks that each copy answers a fresh session, takes the
// host's clock, and no longer shares its RNG state with the other.
func TestSnapshotRestoreInVM(t *testing.T) {
	img := vmImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	orig := img.start(t, "orig", img.rootfs, "")
	c := dialVM(t, ctx, orig.sock)
	if err := c.WriteFile(ctx, "/tmp/marker", 0o644, strings.NewReader("before snapshot")); err != nil {
		t.Fatal(err)
	}
	// The host's session stays open across the snapshot, as a driver's does.
	state := filepath.Join(img.dir, "state.bin")
	orig.qmpCall(t, ctx, `{"execute":"stop"}`,
		`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":10737418240}}`,
		`{"execute":"migrate","arguments":{"uri":"exec:cat > `+state+`"}}`)
	for {
		ret := orig.qmpCall(t, ctx, `{"execute":"query-migrate"}`)
		if strings.Contains(string(ret), `"completed"`) {
			break
		}
		if strings.Contains(string(ret), `"failed"`) {
			t.Fatalf("migrate: %s", ret)
		}
		time.Sleep(50 * time.Millisecond)
	}
	orig.stop()
	c.Close()
	time.Sleep(2 * time.Second) // so a guest clock left at snapshot time would be visibly late

	draw := func(c *guest.Client) string {
		var out bytes.Buffer
		res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "head -c 16 /dev/urandom | od -An -tx1; cat /tmp/marker; echo; date +%s"}, Stdout: &out, Stderr: &out})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("exec: %+v %v %s", res, err, out.String())
		}
		return out.String()
	}
	var outs []string
	for i := range 2 {
		disk := filepath.Join(img.dir, fmt.Sprintf("disk%d.ext4", i))
		b, err := os.ReadFile(img.rootfs)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(disk, b, 0o644); err != nil {
			t.Fatal(err)
		}
		v := img.start(t, fmt.Sprintf("copy%d", i), disk, "exec:cat "+state)
		// Wait for the incoming state to load, then run. (A cont sent
		// while QEMU 7.2 is still "inmigrate" left the TCG guest dead here:
		// no console output, nothing read from the virtio-serial socket.)
		for !strings.Contains(string(v.qmpCall(t, ctx, `{"execute":"query-status"}`)), `"paused"`) {
			time.Sleep(20 * time.Millisecond)
		}
		v.qmpCall(t, ctx, `{"execute":"cont"}`)
		restored := time.Now()
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		cc := dialVM(t, dctx, v.sock)
		dcancel()
		t.Logf("copy %d: session %v after cont", i, time.Since(restored).Round(time.Millisecond))
		out := draw(cc)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || lines[1] != "before snapshot" {
			t.Fatalf("copy %d said %q", i, out)
		}
		var guestNow int64
		fmt.Sscan(lines[2], &guestNow)
		if d := time.Now().Unix() - guestNow; d > 1 || d < -1 {
			t.Errorf("copy %d: guest clock off by %d s after restore", i, d)
		}
		outs = append(outs, lines[0])
		cc.Close()
		v.stop()
	}
	if outs[0] == outs[1] {
		t.Errorf("both restored copies drew the same random bytes %s", outs[0])
	}
	t.Logf("random bytes: %s | %s", outs[0], outs[1])
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
	for _, c := range []string{"sh", "cat", "echo", "ls", "true", "kill", "hostname", "mount", "grep", "date", "sleep", "setsid", "sync"} {
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

// TestSignalProcessesInVM: in a real guest, a daemon that left its exec's
// session traps SIGTERM; SignalProcesses reaches it (the agent is PID 1)
// and it writes its state to the disk before it exits. A second program
// that ignores SIGTERM is still there afterwards, for SIGKILL to end.
func TestSignalProcessesInVM(t *testing.T) {
	img := vmImages(t)
	v := img.start(t, "signal", img.rootfs, "")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := dialVM(t, ctx, v.sock)
	trap := `trap 'echo saved > /root/state; sync; exit 0' TERM; echo > /tmp/trap.ready; while :; do sleep 0.1; done`
	deaf := `trap '' TERM; echo $$ > /tmp/deaf.pid; while :; do sleep 0.1; done`
	for _, script := range []string{trap, deaf} {
		res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", `setsid sh -c "$0" </dev/null >/dev/null 2>&1 &`, script}})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("start: %+v, %v", res, err)
		}
	}
	guestWait(t, ctx, c, "test -e /tmp/trap.ready && test -s /tmp/deaf.pid")
	n, err := c.SignalProcesses(ctx, syscall.SIGTERM)
	if err != nil || n < 2 {
		t.Fatalf("SignalProcesses = %d, %v", n, err)
	}
	guestWait(t, ctx, c, "test -e /root/state")
	var out bytes.Buffer
	if res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "cat /root/state; kill -0 $(cat /tmp/deaf.pid) && echo alive"}, Stdout: &out}); err != nil || res.ExitCode != 0 {
		t.Fatalf("check: %+v, %v", res, err)
	}
	if out.String() != "saved\nalive\n" {
		t.Errorf("guest says %q, want the trapping program's state and the deaf program alive", out.String())
	}
	if _, err := c.SignalProcesses(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	guestWait(t, ctx, c, "! kill -0 $(cat /tmp/deaf.pid)")
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("agent after SIGKILL to every process: %v", err)
	}
}

// guestWait runs cond in the guest until it succeeds.
func guestWait(t *testing.T, ctx context.Context, c *guest.Client, cond string) {
	t.Helper()
	for {
		res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", cond}})
		if err != nil {
			t.Fatalf("wait for %q: %v", cond, err)
		}
		if res.ExitCode == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %q", cond)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
