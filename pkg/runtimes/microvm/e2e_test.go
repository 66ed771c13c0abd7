package microvm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/runtimetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestConformance runs the shared Runtime suite against real microVMs.
func TestConformance(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	var prev *microvm.Driver
	runtimetest.Run(t, func(t *testing.T) (tartarus.Runtime, *tartarus.Image) {
		if prev != nil {
			// A restarted node agent: the old one's connections are gone.
			prev.Close()
		}
		prev = newDriver(t, stateDir, imgs.base)
		return prev, imgs.base
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run executes cmd and returns its stdout, failing the test on error or a non-zero exit.
func run(t *testing.T, rt tartarus.Runtime, id string, cmd ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: cmd, Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatalf("exec %q: %v", cmd, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q: exit %d, stderr %q", cmd, res.ExitCode, errOut.String())
	}
	return out.String()
}

// kernelRelease reads the guest kernel's release from the template's manifest
// ("linux-image-6.1.0-56-amd64=6.1.192-2" → "6.1.0-56-amd64").
func kernelRelease(t *testing.T, img *tartarus.Image) string {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(img.Kernel), "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Inputs map[string]string }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	pkg, _, _ := strings.Cut(m.Inputs["kernel"], "=")
	return strings.TrimPrefix(pkg, "linux-image-")
}

// TestSandboxes boots one base and one python sandbox and shares them
// between subtests: each boot costs seconds of CPU under TCG.
func TestSandboxes(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	d := newDriver(t, stateDir, imgs.base)
	t.Cleanup(func() { d.Close() })

	fp, err := d.Fingerprint(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fingerprint: accel %s (%s), max %d CPUs / %d MiB", fp.Accel, fp.Details["accel_reason"], fp.MaxCPUs, fp.MaxMemoryMB)

	boot := func(img *tartarus.Image) string {
		id := "e2e-" + img.Name
		if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: img.Name, Image: img, CPUs: 1, MemoryMB: 256}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
		start := time.Now()
		if err := d.Start(ctxT(t), id); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		t.Logf("%s booted in %s", id, time.Since(start).Round(time.Millisecond))
		return id
	}
	base := boot(imgs.base)
	python := boot(imgs.python)

	t.Run("GuestKernel", func(t *testing.T) {
		host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
		want := kernelRelease(t, imgs.base)
		for _, id := range []string{base, python} {
			got := strings.TrimSpace(run(t, d, id, "uname", "-r"))
			if got != want || got == strings.TrimSpace(string(host)) {
				t.Errorf("%s: uname -r = %q, want the Debian guest kernel %q (host runs %q)", id, got, want, strings.TrimSpace(string(host)))
			}
		}
	})
	t.Run("Hostname", func(t *testing.T) {
		if got := strings.TrimSpace(run(t, d, base, "hostname")); got != base {
			t.Errorf("hostname %q, want %q", got, base)
		}
	})
	t.Run("Python", func(t *testing.T) {
		if got := run(t, d, python, "python3", "-c", "print(6*7)"); got != "42\n" {
			t.Errorf("python3 printed %q, want 42", got)
		}
	})
	t.Run("FreeSpace", func(t *testing.T) {
		for _, id := range []string{base, python} {
			out := run(t, d, id, "df", "-k", "/")
			f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1])
			avail, err := strconv.Atoi(f[3])
			if err != nil || avail < 900*1024 {
				t.Errorf("%s: df / = %q; want at least 900 MiB available", id, out)
			}
		}
	})
	t.Run("FileRoundTrip", func(t *testing.T) {
		data := make([]byte, 3<<20+17)
		_, _ = rand.Read(data)
		copy(data, "\x00\r\n\xff")
		if err := d.WriteFile(ctxT(t), python, "/root/sub/dir/blob.bin", 0o640, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		rc, err := d.ReadFile(ctxT(t), python, "/root/sub/dir/blob.bin")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes, not the %d written", len(got), len(data))
		}
		sum := run(t, d, python, "python3", "-c", "import hashlib;print(hashlib.sha256(open('/root/sub/dir/blob.bin','rb').read()).hexdigest())")
		hostSum := exec.Command("sha256sum")
		hostSum.Stdin = bytes.NewReader(data)
		want, _ := hostSum.Output()
		if strings.Fields(sum)[0] != strings.Fields(string(want))[0] {
			t.Errorf("guest sha256 %s, host %s", sum, want)
		}
		files, err := d.ListFiles(ctxT(t), python, "/root/sub/dir")
		if err != nil || len(files) != 1 || files[0].Name != "blob.bin" || files[0].Size != int64(len(data)) {
			t.Errorf("ListFiles = %+v, %v", files, err)
		}
		if _, err := d.ReadFile(ctxT(t), python, "/no/such/file"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("ReadFile of a missing file: %v, want ErrNotFound", err)
		}
	})
	t.Run("PauseResume", func(t *testing.T) {
		if err := d.Pause(ctxT(t), base); err != nil {
			t.Fatal(err)
		}
		_, err := d.Exec(ctxT(t), base, &tartarus.ExecRequest{Cmd: []string{"true"}})
		if !errors.Is(err, tartarus.ErrFailedPrecondition) {
			t.Errorf("exec while paused: %v, want ErrFailedPrecondition", err)
		}
		if err := d.Resume(ctxT(t), base); err != nil {
			t.Fatal(err)
		}
		if got := run(t, d, base, "echo", "back"); got != "back\n" {
			t.Errorf("after resume: %q", got)
		}
	})
	t.Run("GuestPanicThenStart", func(t *testing.T) {
		// A kernel panic ends QEMU (panic=-1, -no-reboot); Start boots it again.
		_, _ = d.Exec(ctxT(t), base, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo c > /proc/sysrq-trigger"}})
		deadline := time.Now().Add(30 * time.Second)
		for {
			in := findInstance(t, d, base)
			if in != nil && in.State == tartarus.InstanceStopped {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after a guest panic the sandbox is %+v, want stopped", in)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := d.Start(ctxT(t), base); err != nil {
			t.Fatal(err)
		}
		if got := run(t, d, base, "echo", "again"); got != "again\n" {
			t.Errorf("after restart: %q", got)
		}
	})
	t.Run("SnapshotRestore", func(t *testing.T) {
		run(t, d, base, "sh", "-c", "echo remembered > /root/note")
		snap := t.TempDir()
		start := time.Now()
		info, err := d.Snapshot(ctxT(t), base, snap)
		if err != nil {
			t.Fatal(err)
		}
		saved := time.Since(start)
		// A booted sandbox with mapped memory keeps its RAM as one
		// more file (memory.ram).
		wantFiles := 4
		if copyMemory() {
			wantFiles = 3
		}
		if info.Template != "base" || info.MemoryBytes != 256<<20 || len(info.Files) != wantFiles {
			t.Errorf("snapshot info %+v, want %d files", info, wantFiles)
		}
		if in := findInstance(t, d, base); in == nil || in.State != tartarus.InstancePaused {
			t.Errorf("after Snapshot the sandbox is %+v, want paused", in)
		}
		// A second copy of the files, for a second restore below.
		snap2 := t.TempDir()
		if out, err := exec.Command("cp", "-r", "--sparse=always", snap+"/.", snap2).CombinedOutput(); err != nil {
			t.Fatalf("copy the snapshot: %v %s", err, out)
		}
		copyID := base + "-copy"
		start = time.Now()
		if err := d.Restore(ctxT(t), &tartarus.VMConfig{ID: copyID, Template: "base", Image: imgs.base}, snap); err != nil {
			t.Fatal(err)
		}
		restored := time.Since(start)
		t.Logf("snapshot of a 256 MiB guest saved in %s, restored to a running guest in %s", saved.Round(time.Millisecond), restored.Round(time.Millisecond))
		if got := run(t, d, copyID, "cat", "/root/note"); got != "remembered\n" {
			t.Errorf("restored sandbox has %q in /root/note", got)
		}
		if got := strings.TrimSpace(run(t, d, copyID, "hostname")); got != copyID {
			t.Errorf("restored hostname %q, want %q", got, copyID)
		}
		// Two restores of one snapshot are reseeded apart: their random
		// bytes differ.
		copy2 := base + "-copy2"
		if err := d.Restore(ctxT(t), &tartarus.VMConfig{ID: copy2, Template: "base", Image: imgs.base}, snap2); err != nil {
			t.Fatal(err)
		}
		random := "head -c 16 /dev/urandom | od -An -tx1"
		if a, b := run(t, d, copyID, "sh", "-c", random), run(t, d, copy2, "sh", "-c", random); a == b {
			t.Errorf("two restores of one snapshot read the same random bytes %q", a)
		}
		if err := d.Destroy(ctxT(t), copy2); err != nil {
			t.Fatal(err)
		}
		run(t, d, copyID, "sh", "-c", "echo changed > /root/note")
		// The restored sandbox's own snapshot (a hibernate, a fork)
		// holds all its memory in the stream: it does not depend on
		// the first snapshot's memory file.
		snap3 := t.TempDir()
		info3, err := d.Snapshot(ctxT(t), copyID, snap3)
		if err != nil {
			t.Fatal(err)
		}
		if len(info3.Files) != 3 || slices.Contains(info3.Files, "memory.ram") {
			t.Errorf("snapshot of a restored sandbox has files %v, want the stream, disk and config only", info3.Files)
		}
		copy3 := base + "-copy3"
		if err := d.Restore(ctxT(t), &tartarus.VMConfig{ID: copy3, Template: "base", Image: imgs.base}, snap3); err != nil {
			t.Fatal(err)
		}
		if got := run(t, d, copy3, "cat", "/root/note"); got != "changed\n" {
			t.Errorf("restore of the restored sandbox's snapshot has %q in /root/note", got)
		}
		if err := d.Destroy(ctxT(t), copy3); err != nil {
			t.Fatal(err)
		}
		if err := d.Resume(ctxT(t), copyID); err != nil {
			t.Fatal(err)
		}
		if err := d.Resume(ctxT(t), base); err != nil {
			t.Fatal(err)
		}
		if got := run(t, d, base, "cat", "/root/note"); got != "remembered\n" {
			t.Errorf("original sandbox sees %q after the copy wrote: disks are shared", got)
		}
		if err := d.Destroy(ctxT(t), copyID); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("StreamedSnapshot", func(t *testing.T) { testStreamedSnapshot(t, d, imgs.base, base) })
	t.Run("Recover", func(t *testing.T) {
		// Simulate a node agent restart: drop the driver, make a new one over the same state.
		d.Close()
		d2 := newDriver(t, stateDir, imgs.base)
		adopted, err := d2.Recover(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(adopted) != 2 {
			t.Fatalf("adopted %d sandboxes, want 2", len(adopted))
		}
		if got := run(t, d2, python, "python3", "-c", "print('adopted')"); got != "adopted\n" {
			t.Errorf("exec after recover: %q", got)
		}
		d = d2
	})
	t.Run("DestroyLeavesNothing", func(t *testing.T) {
		for _, id := range []string{base, python} {
			ins, _ := d.List(ctxT(t))
			var pid int
			for _, in := range ins {
				if in.ID == id {
					pid = in.Pid
				}
			}
			if pid == 0 {
				t.Fatalf("%s: no pid in List", id)
			}
			if err := d.Destroy(ctxT(t), id); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(stateDir, id)); !os.IsNotExist(err) {
				t.Errorf("%s: state dir still there: %v", id, err)
			}
			// Destroy returns once QEMU is dead. Here the first driver (dropped
			// in Recover) started it, so this process's reaper may take a
			// moment to collect the zombie; a real restarted agent is not
			// QEMU's parent at all.
			gone := false
			for i := 0; i < 200 && !gone; i++ {
				_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
				gone = os.IsNotExist(err)
				time.Sleep(10 * time.Millisecond)
			}
			if !gone {
				t.Errorf("%s: qemu pid %d still exists", id, pid)
			}
			if out, _ := exec.Command("pgrep", "-f", "tartarus-"+id).Output(); len(out) > 0 {
				t.Errorf("%s: processes left: %s", id, out)
			}
			if err := d.Destroy(ctxT(t), id); err != nil {
				t.Errorf("second destroy: %v", err)
			}
		}
		left, _ := os.ReadDir(stateDir)
		for _, e := range left {
			if !strings.HasPrefix(e.Name(), ".kvm-probe") {
				t.Errorf("state dir keeps %s", e.Name())
			}
		}
	})
}

// TestRecoverCleansDeadSandboxes: a state directory whose QEMU is gone is removed.
func TestRecoverCleansDeadSandboxes(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	d := newDriver(t, stateDir, imgs.base)
	if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: "never-started", Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 128}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d2 := newDriver(t, stateDir, imgs.base)
	adopted, err := d2.Recover(ctxT(t))
	if err != nil || len(adopted) != 0 {
		t.Fatalf("Recover = %v, %v; want nothing adopted", adopted, err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "never-started")); !os.IsNotExist(err) {
		t.Errorf("state dir of a dead sandbox survived Recover: %v", err)
	}
}

func findInstance(t *testing.T, rt tartarus.Runtime, id string) *tartarus.Instance {
	t.Helper()
	list, err := rt.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	return nil
}
