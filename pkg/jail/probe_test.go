package jail

import (
	"bufio"
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
	"time"

	"golang.org/x/sys/unix"
)

// The probes run inside the shim, after the jail is built, with exactly
// the identity Start gives QEMU (plus the shim's spawn filter, which stands
// in for QEMU's -sandbox spawn=deny). Paths come in the environment.
var testProbes = map[string]func() int{
	"sleep": func() int {
		time.Sleep(time.Hour)
		return 0
	},
	"walls":  probeWalls,
	"strict": probeStrict,
}

func TestMain(m *testing.M) {
	RunShimIfAsked(testProbes)
	os.Exit(m.Run())
}

// wall is one thing a jailed process must not do, and why it fails.
type wall struct {
	name string
	try  func(env map[string]string) error
	// want is the errno the attempt must fail with: the documented reason.
	want syscall.Errno
}

var walls = []wall{
	// The data directory is not in the jail's root at all.
	{"read admin key", func(e map[string]string) error { return readFile(e["ADMIN_KEY"]) }, syscall.ENOENT},
	{"read database", func(e map[string]string) error { return readFile(e["DATABASE"]) }, syscall.ENOENT},
	// Nor is another sandbox's directory.
	{"read other disk", func(e map[string]string) error { return readFile(e["OTHER_DISK"]) }, syscall.ENOENT},
	{"connect other qmp", func(e map[string]string) error {
		c, err := net.Dial("unix", e["OTHER_QMP"])
		if err == nil {
			c.Close()
		}
		return err
	}, syscall.ENOENT},
	// Another sandbox's QEMU is outside this pid namespace.
	{"signal other qemu", func(e map[string]string) error {
		pid, _ := strconv.Atoi(e["OTHER_PID"])
		return unix.Kill(pid, syscall.SIGKILL)
	}, syscall.ESRCH},
	{"signal every process", func(e map[string]string) error {
		// kill(-1) reaches every process this uid may signal: none but itself
		// would be fatal, so ask with signal 0 of the other's pid group.
		pid, _ := strconv.Atoi(e["OTHER_PID"])
		return unix.Kill(-pid, 0)
	}, syscall.ESRCH},
	// Spawning is denied by the seccomp filter.
	{"execve", func(e map[string]string) error {
		return unix.Exec("/usr/bin/true", []string{"true"}, nil)
	}, syscall.EPERM},
	{"fork", func(e map[string]string) error {
		_, _, errno := unix.RawSyscall(unix.SYS_FORK, 0, 0, 0)
		return errnoErr(errno)
	}, syscall.EPERM},
	// The root is a read-only tmpfs; /usr is bound read-only.
	{"write root", func(e map[string]string) error { return writeFile("/escape") }, syscall.EROFS},
	{"write usr", func(e map[string]string) error { return writeFile("/usr/escape") }, syscall.EROFS},
	{"write image", func(e map[string]string) error { return writeFile(e["IMAGE"]) }, syscall.EROFS},
	// No capabilities: no way back to root, no mounts, no device nodes.
	{"setuid 0", func(e map[string]string) error { return errnoErr(rawSetuid(0)) }, syscall.EPERM},
	{"mount", func(e map[string]string) error {
		return unix.Mount("none", e["OWN_DIR"], "tmpfs", 0, "")
	}, syscall.EPERM},
	{"mknod", func(e map[string]string) error {
		return unix.Mknod(filepath.Join(e["OWN_DIR"], "mem"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 1)))
	}, syscall.EPERM},
	{"chroot", func(e map[string]string) error { return unix.Chroot(e["OWN_DIR"]) }, syscall.EPERM},
}

func rawSetuid(uid int) syscall.Errno {
	_, _, errno := unix.RawSyscall(unix.SYS_SETUID, uintptr(uid), 0, 0)
	return errno
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func readFile(p string) error {
	_, err := os.ReadFile(p)
	return err
}

func writeFile(p string) error {
	return os.WriteFile(p, []byte("x"), 0o644)
}

// probeWalls tries every wall and prints one line each: name, then "denied
// ERRNO" or "ALLOWED". A positive control proves the probe can act at all.
func probeWalls() int {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if err := writeFile(filepath.Join(env["OWN_DIR"], "control")); err != nil {
		fmt.Printf("control FAILED %v\n", err)
		return 1
	}
	fmt.Printf("control ok\n")
	for _, w := range walls {
		err := w.try(env)
		var errno syscall.Errno
		switch {
		case err == nil:
			fmt.Printf("%s ALLOWED\n", w.name)
		case errors.As(err, &errno):
			fmt.Printf("%s denied %d %v\n", w.name, int(errno), err)
		default:
			fmt.Printf("%s denied ? %v\n", w.name, err)
		}
	}
	return 0
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("jail tests need root")
	}
}

// sandboxDirs makes a fake node: a data directory with an admin key and a
// database, and two sandboxes, each with a directory of its own (disk, a
// listening QMP socket) owned by its uid.
func TestProbesWithTheJailsIdentity(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	data := filepath.Join(base, "data")
	must(t, os.MkdirAll(data, 0o700))
	adminKey := filepath.Join(data, "admin.key")
	db := filepath.Join(data, "tartarus.db")
	must(t, os.WriteFile(adminKey, []byte("secret"), 0o600))
	must(t, os.WriteFile(db, []byte("SQLite format 3\x00"), 0o600))
	image := filepath.Join(base, "images", "rootfs.ext4")
	must(t, os.MkdirAll(filepath.Dir(image), 0o755))
	must(t, os.WriteFile(image, []byte("rootfs"), 0o644))

	j, err := New(Config{StateDir: filepath.Join(data, "vms"), UIDBase: 1_950_000_000, UIDCount: 16, CgroupParent: "tartarus-test/" + filepath.Base(base)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Registered first, so it runs after the sandboxes' own cleanups: nothing of the jail stays.
		for _, c := range []string{"memory", "pids", ""} {
			if _, err := os.Stat(filepath.Join(j.cg.root, c, j.cg.parent)); err == nil {
				t.Errorf("cgroup parent %s stays after every sandbox was removed", filepath.Join(c, j.cg.parent))
			}
		}
	})
	ctx := context.Background()
	type sandbox struct {
		id, dir string
		proc    *Process
	}
	start := func(id, probe string, env []string, out *os.File) *sandbox {
		dir := filepath.Join(data, "vms", id)
		own := filepath.Join(dir, "jail")
		must(t, os.MkdirAll(own, 0o700))
		uid, err := j.UID(id)
		must(t, err)
		must(t, os.Chown(own, uid, uid))
		must(t, os.WriteFile(filepath.Join(own, "overlay.qcow2"), []byte("disk of "+id), 0o600))
		p, err := j.Start(ctx, &Spec{
			ID: id, Root: filepath.Join(dir, "root"), CPUs: 1, MemoryMB: 64,
			Binds:   []Bind{{Source: own, Writable: true}, {Source: image}},
			Devices: []string{"/dev/null", "/dev/urandom"},
			Probe:   probe, DenySpawn: true,
			Env: env, Stdout: out, Stderr: out,
		})
		must(t, err)
		t.Cleanup(func() {
			_ = p.Cmd.Process.Kill()
			_ = p.Cmd.Wait()
			if err := j.Remove(id); err != nil {
				t.Error(err)
			}
		})
		return &sandbox{id: id, dir: own, proc: p}
	}
	// The other sandbox: a sleeping "QEMU" with a QMP socket in its directory.
	other := start("other", "sleep", nil, nil)
	qmpPath := filepath.Join(other.dir, "qmp.sock")
	ln, err := net.Listen("unix", qmpPath)
	must(t, err)
	defer ln.Close()

	out, err := os.Create(filepath.Join(base, "walls.out"))
	must(t, err)
	defer out.Close()
	own := filepath.Join(data, "vms", "prober", "jail")
	prober := start("prober", "walls", []string{
		"ADMIN_KEY=" + adminKey, "DATABASE=" + db,
		"OTHER_DISK=" + filepath.Join(other.dir, "overlay.qcow2"), "OTHER_QMP=" + qmpPath,
		"OTHER_PID=" + strconv.Itoa(other.proc.Cmd.Process.Pid),
		"IMAGE=" + image, "OWN_DIR=" + own,
	}, out)
	if err := prober.proc.Cmd.Wait(); err != nil {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("probe: %v\n%s", err, b)
	}
	if other.proc.UID == prober.proc.UID {
		t.Fatalf("two sandboxes share uid %d", other.proc.UID)
	}
	b, err := os.ReadFile(out.Name())
	must(t, err)
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		name, rest, _ := strings.Cut(sc.Text(), " ")
		for _, w := range walls { // names have spaces: match the known ones
			if strings.HasPrefix(sc.Text(), w.name+" ") {
				name, rest = w.name, strings.TrimPrefix(sc.Text(), w.name+" ")
			}
		}
		got[name] = rest
	}
	if got["control"] != "ok" {
		t.Fatalf("the probe could not write its own directory, so it proves nothing:\n%s", b)
	}
	for _, w := range walls {
		res, ok := got[w.name]
		switch {
		case !ok:
			t.Errorf("%s: no result\n%s", w.name, b)
		case !strings.HasPrefix(res, "denied "):
			t.Errorf("%s: %s — the wall does not hold", w.name, res)
		case !strings.HasPrefix(res, fmt.Sprintf("denied %d ", int(w.want))):
			t.Errorf("%s: %s, want %v (the documented reason)", w.name, res, w.want)
		default:
			t.Logf("%s: %s", w.name, res)
		}
	}
	// The other sandbox's process still lives (the signal probe did not reach it).
	if err := syscall.Kill(other.proc.Cmd.Process.Pid, 0); err != nil {
		t.Errorf("other sandbox's process: %v", err)
	}
	checkIdentity(t, j, other.id, other.proc)
}

// checkIdentity reads a jailed process's credentials from the host, for
// every one of its threads.
func checkIdentity(t *testing.T, j *Jail, id string, p *Process) {
	t.Helper()
	pid := p.Cmd.Process.Pid
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	must(t, err)
	u := strconv.Itoa(p.UID)
	want := map[string]string{
		"Uid": u + "\t" + u + "\t" + u + "\t" + u, "Gid": u + "\t" + u + "\t" + u + "\t" + u, "Groups": "",
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2",
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		must(t, err)
		got := map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			got[k] = strings.TrimSpace(v)
		}
		for k, w := range want {
			if got[k] != w {
				t.Errorf("task %s of %s: %s = %q, want %q", task.Name(), id, k, got[k], w)
			}
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	must(t, err)
	if !strings.Contains(string(b), j.cg.parent+"/"+id+"\n") {
		t.Errorf("%s is not in its cgroup %s/%s:\n%s", id, j.cg.parent, id, b)
	}
	ns := func(p int, kind string) string {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", p, kind))
		return l
	}
	for _, kind := range []string{"mnt", "pid", "ipc", "uts", "net"} {
		if ns(pid, kind) == ns(os.Getpid(), kind) {
			t.Errorf("%s shares the host's %s namespace", id, kind)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
