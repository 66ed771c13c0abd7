package containertest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ConfinedOptions says what Confined needs of the driver under test.
type ConfinedOptions struct {
	// HostPid returns the host pid of the sandbox's init, through which
	// the test looks at the sandbox's files from the host.
	HostPid func(t *testing.T, id string) int
	// LogFile returns the sandbox's log file on the host, "" when the
	// runtime keeps no log; LogCap bounds its size.
	LogFile func(t *testing.T, id string) string
	LogCap  int64
}

// run executes cmd in sandbox id and returns its result and combined output.
func run(t *testing.T, rt tartarus.Runtime, id string, timeout time.Duration, cmd ...string) (*tartarus.ExecResult, string) {
	t.Helper()
	// One buffer behind a lock: stdout and stderr are copied concurrently.
	out := &lockedBuffer{}
	res, err := rt.Exec(context.Background(), id, &tartarus.ExecRequest{Cmd: cmd, Stdout: out, Stderr: out, Timeout: timeout})
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	return res, out.String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start creates and starts a sandbox of 1 CPU and memMB, destroyed when t ends.
func start(t *testing.T, rt tartarus.Runtime, img *tartarus.Image, id string, memMB int) {
	t.Helper()
	ctx := context.Background()
	if _, err := rt.Create(ctx, &tartarus.VMConfig{ID: id, Template: img.Name, Image: img, CPUs: 1, MemoryMB: memMB}); err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		if err := rt.Destroy(context.Background(), id); err != nil {
			t.Errorf("destroy %s: %v", id, err)
		}
	})
	if err := rt.Start(ctx, id); err != nil {
		t.Fatalf("start: %v", err)
	}
}

// Confined proves a container runtime's walls from inside its sandboxes:
// root inside is not root outside, a syscall the seccomp profile blocks
// fails with EPERM, a fork bomb stops at the pids limit with the host
// fine, memory past the limit is OOM-killed inside, and a log flood stays
// capped.
func Confined(t *testing.T, rt tartarus.Runtime, img *tartarus.Image, o ConfinedOptions) {
	id := "confined-" + strings.ToLower(rt.Name())
	start(t, rt, img, id, 256)

	t.Run("UserNamespace", func(t *testing.T) {
		// Exit codes, not output: the checks hold whatever the streams do.
		script := `read a b c </proc/self/uid_map; [ "$a" = 0 ] || exit 3; [ "$b" != 0 ] || exit 4
[ "$(id -u)" = 0 ] || exit 5; touch /tmp/made-inside`
		if res, out := run(t, rt, id, 10*time.Second, "sh", "-c", script); res.ExitCode != 0 {
			t.Fatalf("uid_map check: exit %d %q (3: root not mapped, 4: root is host root, 5: not root inside)", res.ExitCode, out)
		}
		// The file as the host sees it, through the init's root.
		p := filepath.Join("/proc", strconv.Itoa(o.HostPid(t, id)), "root", "tmp", "made-inside")
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid == 0 || st.Uid < 65536 {
			t.Errorf("a file root made inside is owned by host uid %d: want a high uid", st.Uid)
		}
		t.Logf("a file root made inside is host uid %d", st.Uid)
	})

	t.Run("Seccomp", func(t *testing.T) {
		// The profile lets unshare(2) through only with CAP_SYS_ADMIN,
		// which the sandbox does not have.
		script := `unshare -U -r true 2>/tmp/e && exit 3; grep -q "Operation not permitted" /tmp/e || exit 4
grep -q "^Seccomp:[[:space:]]*2" /proc/self/status || exit 5
grep -q "^NoNewPrivs:[[:space:]]*1" /proc/self/status || exit 6`
		switch res, out := run(t, rt, id, 10*time.Second, "sh", "-c", script); res.ExitCode {
		case 0:
		case 3:
			t.Error("unshare -U succeeded: want EPERM")
		case 4:
			t.Error("unshare -U failed, but not with EPERM")
		case 5:
			t.Error("no seccomp filter on the sandbox's processes")
		case 6:
			t.Error("the sandbox's processes may gain privileges")
		default:
			t.Errorf("check: exit %d %q", res.ExitCode, out)
		}
	})

	t.Run("Memory", func(t *testing.T) {
		// 400 MiB held by one shell in a 256 MiB sandbox (no swap).
		res, out := run(t, rt, id, time.Minute, "sh", "-c", `x=$(head -c 400000000 /dev/zero | tr '\0' a); echo ${#x}`)
		if res.ExitCode == 0 {
			t.Fatalf("400 MB in a 256 MiB sandbox: exit 0 %q", out)
		}
		if res, _ := run(t, rt, id, 10*time.Second, "true"); res.ExitCode != 0 {
			t.Errorf("the sandbox does not run commands after the OOM kill")
		}
		t.Logf("exit %d %s", res.ExitCode, res.Signal)
	})

	t.Run("LogFlood", func(t *testing.T) {
		// The init's output is the log; 20 MB into it.
		res, out := run(t, rt, id, time.Minute, "sh", "-c", `head -c 20000000 /dev/zero | tr '\0' x >/proc/1/fd/1; echo done`)
		if res.ExitCode != 0 {
			t.Logf("flood: exit %d %q", res.ExitCode, out)
		}
		if o.LogFile == nil {
			return
		}
		p := o.LogFile(t, id)
		if p == "" {
			return
		}
		var total int64
		matches, _ := filepath.Glob(p + "*")
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil {
				total += fi.Size()
			}
		}
		if total > o.LogCap {
			t.Errorf("log %s holds %d bytes after a 20 MB flood: want at most %d", p, total, o.LogCap)
		}
		t.Logf("log after a 20 MB flood: %d bytes in %d files", total, len(matches))
	})

	t.Run("ForkBomb", func(t *testing.T) {
		bomb := "bomb-" + strings.ToLower(rt.Name())
		start(t, rt, img, bomb, 256)
		done := make(chan *tartarus.ExecResult, 1)
		go func() {
			// Processes that stay: the count holds at the limit rather
			// than rising and collapsing as a classic bomb's does.
			res, _ := rt.Exec(context.Background(), bomb, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", `while :; do sleep 1000 & done`},
				Timeout: 12 * time.Second})
			done <- res
		}()
		most := 0
		for range 12 {
			time.Sleep(500 * time.Millisecond)
			st, err := rt.Stats(context.Background(), bomb)
			if err != nil {
				t.Logf("stats: %v", err)
				continue
			}
			most = max(most, st.Processes)
		}
		if limit := container.PidsLimit(256); int64(most) > limit || int64(most) < limit*3/4 {
			t.Errorf("at most %d processes in the sandbox: want up to the pids limit %d", most, limit)
		}
		t.Logf("processes at the most: %d (limit %d)", most, container.PidsLimit(256))
		// The host still forks.
		if err := exec.Command("true").Run(); err != nil {
			t.Errorf("the host cannot fork: %v", err)
		}
		// Another sandbox still works.
		if res, _ := run(t, rt, id, 10*time.Second, "true"); res.ExitCode != 0 {
			t.Error("the other sandbox does not run commands during the bomb")
		}
		if res := <-done; res != nil {
			t.Logf("bomb: exit %d timed out %v", res.ExitCode, res.TimedOut)
		}
	})
}
