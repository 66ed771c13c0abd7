package microvm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestJailedQEMU boots a sandbox with the jail on and reads, from the
// host, the identity its QEMU really has: its own uid, no capabilities,
// no_new_privs, QEMU's seccomp filter, new namespaces, its cgroup; and its
// sockets reachable by that uid and root only. Then it snapshots and
// restores it (memory through a passed descriptor, spawn=deny) and
// recovers it from a second driver.
func TestJailedQEMU(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	d := newDriverJail(t, stateDir, imgs.base, newJail(t, stateDir))
	t.Cleanup(func() { d.Close() })
	fp, _ := d.Fingerprint(ctxT(t))
	if fp.Jail == nil || !fp.Jail.Enabled || !fp.Jail.Seccomp || fp.Jail.UIDRange == "" {
		t.Fatalf("fingerprint jail = %+v, want enabled with seccomp and a uid range", fp.Jail)
	}
	ids := []string{"jail-a", "jail-b"}
	for _, id := range ids {
		if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 256}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
		if err := d.Start(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	}
	uids := map[string]bool{}
	for _, id := range ids {
		pid := pidOf(t, d, id)
		st := procStatus(t, pid)
		uid := strings.Fields(st["Uid"])[0]
		if uid == "0" || uids[uid] {
			t.Errorf("%s: QEMU runs as uid %s (0 or shared)", id, uid)
		}
		uids[uid] = true
		for k, want := range map[string]string{
			"Uid": strings.Repeat(uid+"\t", 3) + uid, "CapEff": "0000000000000000", "CapPrm": "0000000000000000",
			"CapBnd": "0000000000000000", "CapInh": "0000000000000000", "CapAmb": "0000000000000000",
			"NoNewPrivs": "1", "Seccomp": "2", "Groups": "",
		} {
			if st[k] != want {
				t.Errorf("%s: QEMU %s = %q, want %q", id, k, st[k], want)
			}
		}
		for _, ns := range []string{"mnt", "pid", "net", "ipc", "uts"} {
			a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
			b, _ := os.Readlink("/proc/self/ns/" + ns)
			if a == b {
				t.Errorf("%s: QEMU shares the host's %s namespace", id, ns)
			}
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if !strings.Contains(string(cg), "/"+id+"\n") {
			t.Errorf("%s: QEMU is not in its cgroup:\n%s", id, cg)
		}
		checkCgroupLimits(t, id, string(cg), fp.Jail.CgroupVersion)
		jd := filepath.Join(stateDir, id, "jail")
		for _, f := range []string{"qmp.sock", "agent.sock", "overlay.qcow2"} {
			if got := ownerOf(t, filepath.Join(jd, f)); strconv.Itoa(got) != uid {
				t.Errorf("%s: %s owned by %d, want the sandbox's uid %s", id, f, got, uid)
			}
		}
		if fi, err := os.Stat(jd); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %s mode %v, want 0700 (the sandbox's uid and root only)", id, jd, fi.Mode())
		}
		if got := ownerOf(t, jd); strconv.Itoa(got) != uid {
			t.Errorf("%s: %s owned by %d, want the sandbox's uid %s", id, jd, got, uid)
		}
		if out := strings.TrimSpace(run(t, d, id, "echo", "jailed")); out != "jailed" {
			t.Errorf("%s: exec = %q", id, out)
		}
	}

	// Snapshot and restore, jailed on both sides.
	snap := t.TempDir()
	if _, err := d.Snapshot(ctxT(t), "jail-a", snap); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if err := d.Destroy(ctxT(t), "jail-a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Restore(ctxT(t), &tartarus.VMConfig{ID: "jail-c", Template: "base", Image: imgs.base}, snap); err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Cleanup(func() { _ = d.Destroy(context.Background(), "jail-c") })
	if out := strings.TrimSpace(run(t, d, "jail-c", "hostname")); out != "jail-c" {
		t.Errorf("restored hostname = %q", out)
	}
	if st := procStatus(t, pidOf(t, d, "jail-c")); st["Seccomp"] != "2" || st["CapEff"] != "0000000000000000" {
		t.Errorf("restored QEMU: Seccomp %s CapEff %s", st["Seccomp"], st["CapEff"])
	}

	// A restarted driver adopts the jailed VMs.
	d.Close()
	d2 := newDriverJail(t, stateDir, imgs.base, newJail(t, stateDir))
	t.Cleanup(func() { d2.Close() })
	got, err := d2.Recover(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("recovered %d sandboxes, want 2 (jail-b, jail-c)", len(got))
	}
	for _, id := range []string{"jail-b", "jail-c"} {
		if out := strings.TrimSpace(run(t, d2, id, "echo", "adopted")); out != "adopted" {
			t.Errorf("%s after recover: exec = %q", id, out)
		}
		if err := d2.Destroy(ctxT(t), id); err != nil {
			t.Error(err)
		}
	}
	// Destroy freed the uids and cgroups.
	if ents, _ := os.ReadDir(filepath.Join(stateDir+".jail", "uids")); len(ents) != 0 {
		t.Errorf("%d uids still allocated after every sandbox was destroyed", len(ents))
	}
}

func pidOf(t *testing.T, d interface {
	List(context.Context) ([]*tartarus.Instance, error)
}, id string) int {
	t.Helper()
	list, err := d.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.ID == id {
			return in.Pid
		}
	}
	t.Fatalf("no sandbox %s", id)
	return 0
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	st := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		st[k] = strings.TrimSpace(v)
	}
	return st
}

func ownerOf(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

// TestJailedDiskFull fills a jailed guest's disk: the guest gets "No space
// left on device", the overlay on the host stays within the disk's virtual
// size (plus qcow2 metadata), and the sandbox still answers.
func TestJailedDiskFull(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	d := newDriverJail(t, stateDir, imgs.base, newJail(t, stateDir))
	t.Cleanup(func() { d.Close() })
	id := "jail-fill"
	if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
	if err := d.Start(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := d.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "dd if=/dev/zero of=/root/fill bs=1M 2>&1; sync"}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "No space left on device") {
		t.Fatalf("dd until full: exit %d, %q; want ENOSPC", res.ExitCode, out.String())
	}
	rootfs, err := os.Stat(imgs.base.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	overlay, err := os.Stat(filepath.Join(stateDir, id, "jail", "overlay.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	used := overlay.Sys().(*syscall.Stat_t).Blocks * 512
	if limit := rootfs.Size() + 64<<20; used > limit {
		t.Errorf("overlay holds %d MiB on the host, more than the disk's %d MiB plus metadata", used>>20, rootfs.Size()>>20)
	}
	t.Logf("guest disk full: overlay holds %d MiB for a %d MiB disk", used>>20, rootfs.Size()>>20)
	if out := strings.TrimSpace(run(t, d, id, "echo", "alive")); out != "alive" {
		t.Errorf("after filling the disk: exec = %q", out)
	}
}

// TestConsoleFlood floods a jailed guest's serial console: the host keeps
// at most two files of the cap, and the guest and the sandbox go on.
func TestConsoleFlood(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	const capBytes = 64 << 10
	d, err := microvm.New(context.Background(), microvm.Config{
		StateDir: stateDir, Log: testLogger(t), ProbeImage: imgs.base,
		ProbeCache:      filepath.Join(imagesVal.dataDir, "kvm-probe.json"),
		ConsoleMaxBytes: capBytes, Jail: newJail(t, stateDir),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	id := "jail-flood"
	if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
	if err := d.Start(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	// 512 KiB through the emulated UART (slow under TCG): 8 times the cap.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := d.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "head -c 524288 /dev/zero | tr '\\0' x > /dev/ttyS0"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("flood: %v %+v", err, res)
	}
	t.Logf("512 KiB of console in %s", time.Since(start).Round(time.Millisecond))
	if out := strings.TrimSpace(run(t, d, id, "echo", "alive")); out != "alive" {
		t.Errorf("after the flood: exec = %q", out)
	}
	for _, f := range []string{"console.log", "console.log.1"} {
		fi, err := os.Stat(filepath.Join(stateDir, id, f))
		if err != nil {
			t.Fatalf("%s: %v (the flood should have rotated it)", f, err)
		}
		if fi.Size() > capBytes {
			t.Errorf("%s: %d bytes, more than the cap %d", f, fi.Size(), capBytes)
		}
	}
}

// TestJailTurnedOn: a sandbox made with the jail off is adopted by a driver
// with the jail on, and its next boot is jailed, its disk kept.
func TestJailTurnedOn(t *testing.T) {
	imgs := needImages(t)
	stateDir := t.TempDir()
	d := newDriverJail(t, stateDir, imgs.base, nil)
	id := "jail-later"
	if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	run(t, d, id, "sh", "-c", "echo kept > /root/mark; sync")
	d.Close()

	d2 := newDriverJail(t, stateDir, imgs.base, newJail(t, stateDir))
	t.Cleanup(func() { _ = d2.Destroy(context.Background(), id); d2.Close() })
	if got, err := d2.Recover(ctxT(t)); err != nil || len(got) != 1 {
		t.Fatalf("recover: %d sandboxes, %v", len(got), err)
	}
	pid := pidOf(t, d2, id)
	if st := procStatus(t, pid); strings.Fields(st["Uid"])[0] != "0" {
		t.Fatalf("the adopted QEMU was started unjailed, yet runs as %s", st["Uid"])
	}
	// Its QEMU dies; the next start boots it jailed.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if err := d2.Start(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	st := procStatus(t, pidOf(t, d2, id))
	if strings.Fields(st["Uid"])[0] == "0" || st["Seccomp"] != "2" {
		t.Errorf("rebooted QEMU: Uid %s Seccomp %s; want jailed", st["Uid"], st["Seccomp"])
	}
	if out := strings.TrimSpace(run(t, d2, id, "cat", "/root/mark")); out != "kept" {
		t.Errorf("disk after moving into the jail: %q", out)
	}
}

// checkCgroupLimits reads a 1-vCPU 256 MiB sandbox's cgroup limits: memory
// = guest + the default 256 MiB overhead, CPU = 1.25 CPUs, 256 pids.
func checkCgroupLimits(t *testing.T, id, procCgroup, version string) {
	t.Helper()
	path := func(ctrl string) string {
		for _, line := range strings.Split(procCgroup, "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) == 3 && (f[1] == ctrl || (version == "v2" && f[0] == "0")) {
				if version == "v2" {
					return filepath.Join("/sys/fs/cgroup", f[2])
				}
				return filepath.Join("/sys/fs/cgroup", ctrl, f[2])
			}
		}
		return ""
	}
	want := map[string]string{}
	if version == "v2" {
		want[filepath.Join(path(""), "memory.max")] = strconv.Itoa(512 << 20)
		want[filepath.Join(path(""), "cpu.max")] = "125000 100000"
		want[filepath.Join(path(""), "pids.max")] = "256"
	} else {
		want[filepath.Join(path("memory"), "memory.limit_in_bytes")] = strconv.Itoa(512 << 20)
		want[filepath.Join(path("cpu"), "cpu.cfs_quota_us")] = "125000"
		want[filepath.Join(path("pids"), "pids.max")] = "256"
	}
	for f, w := range want {
		b, err := os.ReadFile(f)
		if got := strings.TrimSpace(string(b)); err != nil || got != w {
			t.Errorf("%s: %s = %q (%v), want %q", id, f, got, err, w)
		}
	}
}
