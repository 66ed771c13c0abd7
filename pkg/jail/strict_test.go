package jail

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// strictCalls are what the strict probe tries: name and the raw call.
var strictCalls = []struct {
	name string
	try  func() syscall.Errno
}{
	{"socket unix", func() syscall.Errno { return socketErrno(unix.AF_UNIX) }},
	{"socket inet", func() syscall.Errno { return socketErrno(unix.AF_INET) }},
	{"socket inet6", func() syscall.Errno { return socketErrno(unix.AF_INET6) }},
	{"socket netlink", func() syscall.Errno { return socketErrno(unix.AF_NETLINK) }},
	{"socket packet", func() syscall.Errno { return socketErrno(unix.AF_PACKET) }},
	{"personality", func() syscall.Errno {
		_, _, e := unix.RawSyscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0) // query only
		return e
	}},
	{"userfaultfd", func() syscall.Errno {
		r, _, e := unix.RawSyscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC, 0, 0)
		if e == 0 {
			unix.Close(int(r))
		}
		return e
	}},
	{"unshare user", func() syscall.Errno {
		_, _, e := unix.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_NEWUSER, 0, 0)
		return e
	}},
	{"ptrace", func() syscall.Errno {
		_, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, 1, 0)
		return e
	}},
	{"bpf", func() syscall.Errno {
		_, _, e := unix.RawSyscall(unix.SYS_BPF, 0xffff, 0, 0) // an unknown command
		return e
	}},
	{"x32 socket", func() syscall.Errno {
		_, _, e := unix.RawSyscall(0x40000000|unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_DGRAM, 0)
		return e
	}},
}

func socketErrno(family int) syscall.Errno {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EINVAL
}

// probeStrict prints one line a call: its name and its errno (0: allowed).
func probeStrict() int {
	for _, c := range strictCalls {
		fmt.Printf("%s=%d\n", c.name, int(c.try()))
	}
	return 0
}

// TestStrictSeccomp runs the probe with the jail's identity, with and
// without the strict filter: the filter, not the jail, is what refuses an
// AF_INET socket, and an AF_UNIX socket (QEMU's QMP, agent and console)
// still opens under it.
func TestStrictSeccomp(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	j, err := New(Config{StateDir: filepath.Join(base, "state"), UIDBase: 1_950_000_100, UIDCount: 4, CgroupParent: "tartarus-test/" + filepath.Base(base)})
	must(t, err)
	run := func(id string, strict bool) map[string]int {
		out, err := os.Create(filepath.Join(base, id+".out"))
		must(t, err)
		defer out.Close()
		p, err := j.Start(context.Background(), &Spec{
			ID: id, Root: filepath.Join(base, id, "root"), CPUs: 1, MemoryMB: 64,
			Devices: []string{"/dev/null"},
			Probe:   "strict", StrictSeccomp: strict,
			Stdout: out, Stderr: out,
		})
		must(t, err)
		err = p.Cmd.Wait()
		_ = j.Remove(id)
		b, _ := os.ReadFile(out.Name())
		if err != nil {
			t.Fatalf("probe %s: %v\n%s", id, err, b)
		}
		got := map[string]int{}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			var n int
			if _, err := fmt.Sscan(v, &n); ok && err == nil {
				got[k] = n
			}
		}
		t.Logf("%s: %v", id, got)
		return got
	}
	loose, strict := run("loose", false), run("strict", true)
	for _, c := range strictCalls {
		want := syscall.EPERM
		if c.name == "socket unix" {
			want = 0
		}
		if g, ok := strict[c.name]; !ok || syscall.Errno(g) != want {
			t.Errorf("strict: %s: errno %d (%v), want %d (%v)", c.name, g, syscall.Errno(g), int(want), want)
		}
	}
	// The controls: without the filter the jail alone lets these through.
	for _, name := range []string{"socket unix", "socket inet", "socket inet6", "socket netlink", "personality"} {
		if g := loose[name]; g != 0 {
			t.Errorf("without the filter: %s: errno %d (%v), want allowed", name, g, syscall.Errno(g))
		}
	}
}
