package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestServerEndToEnd builds the real binary, runs `tartarus server` with the
// microvm runtime on a loopback port, drives it with the CLI verbs (create by
// restore of the template's snapshot, exec, cp, pause, hibernate with a
// transparent wake, fork), kills the server with SIGKILL mid-life (one
// sandbox hibernated, one VM gone), restarts it, and checks that the
// surviving sandbox is adopted, the sleeping one wakes, the other is failed
// as lost, and no QEMU is left at the end.
//
// It needs root, QEMU and built templates (cached in $TARTARUS_TEST_DATA or
// /var/tmp/tartarus-test; built when missing). It skips with the reason
// otherwise, unless TARTARUS_E2E=1, which makes a missing piece a failure.
func TestServerEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newE2E(t)

	id := e.cli(t, 0, "", "sandbox", "create", "--template", "base", "--timeout", "900", "--env", "GREETING=hello")
	id = strings.TrimSpace(id)
	if !strings.HasPrefix(id, "sb-") {
		t.Fatalf("create printed %q", id)
	}
	if out := e.cli(t, 7, "", "exec", id, "--", "sh", "-c", "echo $GREETING; echo oops >&2; exit 7"); out != "hello\n" {
		t.Errorf("exec stdout %q", out)
	}
	if out := e.cli(t, 0, "from stdin", "exec", id, "--", "cat"); out != "from stdin" {
		t.Errorf("exec with stdin: %q", out)
	}
	if out := e.cli(t, 0, "", "exec", id, "--", "uname", "-r"); strings.TrimSpace(out) == hostKernel(t) {
		t.Errorf("guest kernel %q is the host's: not a VM?", out)
	}

	// Files, streamed both ways, byte-exact.
	data := make([]byte, 3<<20)
	_, _ = rand.Read(data)
	local := filepath.Join(t.TempDir(), "in.bin")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.cli(t, 0, "", "cp", local, id+":/tmp/e2e/in.bin")
	back := filepath.Join(t.TempDir(), "out.bin")
	e.cli(t, 0, "", "cp", id+":/tmp/e2e/in.bin", back)
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Errorf("cp round trip: %d bytes back, want %d byte-exact", len(got), len(data))
	}

	e.cli(t, 0, "", "sandbox", "pause", id)
	e.cli(t, 1, "", "exec", id, "--", "true") // 409: not running
	e.cli(t, 0, "", "sandbox", "resume", id)

	// Hibernate: a background process and a file survive, the process
	// continues where it was, and no QEMU runs while the sandbox sleeps.
	e.cli(t, 0, "", "exec", id, "--", "sh", "-c",
		`setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &`)
	before := e.waitCounter(t, id, 3)
	if out := e.cli(t, 0, "", "sandbox", "hibernate", id); !strings.Contains(out, "hibernated") {
		t.Errorf("hibernate printed %q", out)
	}
	var list api.SandboxList
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "ls", "-o", "json")), &list); err != nil ||
		len(list.Sandboxes) != 1 || list.Sandboxes[0].State != tartarus.StateHibernated || list.Sandboxes[0].SnapshotBytes <= 0 {
		t.Fatalf("ls -o json while hibernated: %+v %v", list, err)
	}
	if left := e.qemus(t); len(left) != 0 {
		t.Errorf("QEMU processes while the only sandbox sleeps: %v", left)
	}
	if out := e.cli(t, 0, "", "sandbox", "ls"); !strings.Contains(out, "hibernated") || !strings.Contains(out, "MiB") {
		t.Errorf("sandbox ls while hibernated:\n%s", out)
	}
	// exec wakes it transparently.
	if after := e.counter(t, id); after < before {
		t.Errorf("counter went from %d to %d across hibernation: the process restarted", before, after)
	}
	e.waitCounter(t, id, before+3)

	// Fork: two copies with the same files and the counter running on.
	kids := strings.Fields(e.cli(t, 0, "", "sandbox", "fork", id, "--count", "2"))
	if len(kids) != 2 {
		t.Fatalf("fork printed %q", kids)
	}
	for _, k := range kids {
		if out := e.cli(t, 0, "", "exec", k, "--", "wc", "-c", "/tmp/e2e/in.bin"); !strings.HasPrefix(strings.TrimSpace(out), strconv.Itoa(len(data))) {
			t.Errorf("fork %s: wc %q", k, out)
		}
		e.waitCounter(t, k, before+3)
	}
	e.cli(t, 0, "", append([]string{"sandbox", "rm"}, kids...)...)

	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "ls", "-o", "json")), &list); err != nil ||
		len(list.Sandboxes) != 1 || list.Sandboxes[0].State != tartarus.StateRunning {
		t.Fatalf("ls -o json: %+v %v", list, err)
	}

	// Crash: SIGKILL the server while one sandbox sleeps; one VM dies
	// while the server is down.
	sleeper := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--timeout", "900"))
	e.cli(t, 0, "", "exec", sleeper, "--", "sh", "-c", "echo zzz > /tmp/sleeper")
	e.cli(t, 0, "", "sandbox", "hibernate", sleeper)
	lost := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--timeout", "900"))
	e.kill(t)
	qemuPid := e.qemuPid(t, lost)
	if err := syscall.Kill(qemuPid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the VM of %s: %v", lost, err)
	}
	e.start(t)

	if out := e.cli(t, 0, "", "exec", id, "--", "cat", "/tmp/e2e/in.bin"); out != string(data) {
		t.Errorf("adopted sandbox lost its file: %d bytes", len(out))
	}
	var sb tartarus.Sandbox
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "get", lost, "-o", "json")), &sb); err != nil ||
		sb.State != tartarus.StateFailed || !strings.Contains(sb.Error, "lost") {
		t.Errorf("sandbox whose VM died: %+v %v", sb, err)
	}

	if out := e.cli(t, 0, "", "exec", sleeper, "--", "cat", "/tmp/sleeper"); out != "zzz\n" {
		t.Errorf("sandbox hibernated across a server crash: %q", out)
	}

	e.cli(t, 0, "", "sandbox", "rm", id, sleeper)
	if left := e.qemus(t); len(left) != 0 {
		t.Errorf("QEMU processes left after rm: %v", left)
	}
}

type e2e struct {
	bin, data, url string
	args           []string // extra server flags
	server         *exec.Cmd
	logs           string
}

func newE2E(t testing.TB, serverArgs ...string) *e2e {
	t.Helper()
	bin, cache := e2eBinary(t)
	e := &e2e{bin: bin, data: t.TempDir(), args: serverArgs}
	if err := os.Symlink(filepath.Join(cache, "images"), filepath.Join(e.data, "images")); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	ln.Close()
	t.Cleanup(func() { e.cleanup(t) })
	e.start(t)
	return e
}

func (e *e2e) start(t testing.TB) {
	t.Helper()
	e.logs = filepath.Join(e.data, "server-"+strconv.FormatInt(time.Now().UnixNano(), 10)+".log")
	logf, err := os.Create(e.logs)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	e.server = exec.Command(e.bin, append([]string{"server", "--listen", strings.TrimPrefix(e.url, "http://"),
		"--data-dir", e.data, "--accel", "tcg", "--log-level", "debug"}, e.args...)...)
	e.server.Stdout, e.server.Stderr = logf, logf
	if err := e.server.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(e.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(e.logs)
			t.Fatalf("server not healthy after 60s (last: %v)\n%s", err, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *e2e) kill(t testing.TB) {
	t.Helper()
	_ = e.server.Process.Kill()
	_ = e.server.Wait()
}

// cli runs a client verb and checks its exit code; it returns stdout.
func (e *e2e) cli(t testing.TB, wantCode int, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), "TARTARUS_URL="+e.url, "TARTARUS_DATA_DIR="+e.data, "TARTARUS_API_KEY=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tartarus %v: %v", args, err)
	}
	if code != wantCode {
		t.Fatalf("tartarus %v: exit %d, want %d\nstdout: %.500s\nstderr: %.500s", args, code, wantCode, out.String(), errb.String())
	}
	return out.String()
}

// counter reads the background counter of the hibernation check.
func (e *e2e) counter(t *testing.T, id string) int {
	t.Helper()
	for range 3 {
		n, err := strconv.Atoi(strings.TrimSpace(e.cli(t, 0, "", "exec", id, "--", "sh", "-c", "cat /tmp/counter 2>/dev/null || echo 0")))
		if err == nil {
			return n
		}
		// Read while the writer truncated it; read again.
	}
	t.Fatalf("cannot read the counter of %s", id)
	return 0
}

func (e *e2e) waitCounter(t *testing.T, id string, atLeast int) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n := e.counter(t, id)
		if n >= atLeast {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("the counter of %s stays at %d, want %d", id, n, atLeast)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// qemuPid reads the pid of a sandbox's QEMU from the driver's state dir.
func (e *e2e) qemuPid(t *testing.T, id string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.data, "vms", id, "qemu.pid"))
	if err != nil {
		t.Fatalf("pid of %s: %v", id, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// qemus lists the live QEMU processes whose command line names this test's
// data directory.
func (e *e2e) qemus(t testing.TB) []int {
	t.Helper()
	var pids []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids = pids[:0]
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			cmdline, err := os.ReadFile(p)
			if err != nil || !bytes.Contains(cmdline, []byte(e.data)) || !bytes.HasPrefix(cmdline, []byte("qemu")) {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// e2eBinary builds the tartarus binary (and the guest agent) for an
// end-to-end test and makes sure the base template is built in the cache,
// which it returns. It skips when the machine cannot run VMs, unless
// TARTARUS_E2E=1.
func e2eBinary(t testing.TB) (bin, cache string) {
	t.Helper()
	must := os.Getenv("TARTARUS_E2E") == "1"
	skip := func(reason string) {
		if must {
			t.Fatalf("TARTARUS_E2E=1 but %s", reason)
		}
		t.Skip(reason + " (set TARTARUS_E2E=1 to make this a failure)")
	}
	if os.Geteuid() != 0 {
		skip("the server e2e test needs root (QEMU, template builds)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip(tool + " is not installed")
		}
	}
	cache = os.Getenv("TARTARUS_TEST_DATA")
	if cache == "" {
		cache = "/var/tmp/tartarus-test"
	}
	binDir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for _, b := range []struct{ out, pkg string }{{"tartarus", "./cmd/tartarus"}, {"tartarus-guest", "./cmd/tartarus-guest"}} {
		// Built exactly as the Makefile and the microvm tests build them: the
		// guest agent's digest is a template input, and a different binary
		// would rebuild the shared templates under tests running beside us.
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(binDir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	bin = filepath.Join(binDir, "tartarus")
	// Templates are cached between runs; this is quick when they are built.
	build := exec.Command(bin, "template", "build", "--data-dir", cache, "base")
	if out, err := build.CombinedOutput(); err != nil {
		skip("cannot build the base template: " + err.Error() + "\n" + string(out))
	}
	return bin, cache
}

// cleanup stops the server and kills whatever VM this test left.
func (e *e2e) cleanup(t testing.TB) {
	if e.server != nil && e.server.ProcessState == nil {
		_ = e.server.Process.Signal(syscall.SIGTERM)
		_ = e.server.Wait()
	}
	for _, pid := range e.qemus(t) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if t.Failed() {
		logs, _ := os.ReadFile(e.logs)
		t.Logf("last server log:\n%s", logs)
	}
}

func hostKernel(t *testing.T) string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}
