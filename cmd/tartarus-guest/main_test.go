//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The test binary doubles as the agent: with this variable set it runs
// main's flags instead of the tests.
const childEnv = "TARTARUS_GUEST_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := run(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "tartarus-guest:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseCmdline(t *testing.T) {
	def := bootConfig{Root: "/dev/vda", FSType: "ext4", Hostname: "tartarus"}
	tests := []struct {
		in   string
		want bootConfig
	}{
		{"", def},
		{"console=ttyS0 quiet", def},
		{"tartarus.root=/dev/vdb tartarus.rootfstype=xfs tartarus.hostname=sb-1",
			bootConfig{Root: "/dev/vdb", FSType: "xfs", Hostname: "sb-1"}},
		{"tartarus.root= tartarus.hostname= tartarus.debug", bootConfig{Root: "/dev/vda", FSType: "ext4", Hostname: "tartarus", Debug: true}},
		{"tartarus.rootflags=noatime,discard tartarus.debug=0",
			bootConfig{Root: "/dev/vda", FSType: "ext4", Hostname: "tartarus", RootFlags: "noatime,discard"}},
	}
	for _, tc := range tests {
		if got := parseCmdline(tc.in); got != tc.want {
			t.Errorf("parseCmdline(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// startAgent runs the agent binary (this test binary) with args and
// returns its socket.
func startAgent(t *testing.T, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	var stderr bytes.Buffer
	cmd := exec.Command(os.Args[0], append([]string{"--listen", "unix:" + sock}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})
	// The socket's file exists from bind(2), before listen(2): wait until a
	// connection is accepted, not until the file is there.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not listen; stderr:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dial(t testing.TB, sock string) *guest.Client {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A daemon that left its exec's process group and session is orphaned to
// the agent (as to PID 1 in a VM); SignalProcesses still reaches it, and
// its SIGTERM trap writes its state.
func TestSignalProcessesReachesDaemons(t *testing.T) {
	sock := startAgent(t, "--reaper")
	c := dial(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	ready, state := filepath.Join(dir, "ready"), filepath.Join(dir, "state")
	daemon := `trap 'echo saved > ` + state + `; exit 0' TERM; echo > ` + ready + `; while :; do sleep 0.05; done`
	res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", `setsid sh -c "$0" </dev/null >/dev/null 2>&1 &`, daemon}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start daemon: %+v, %v", res, err)
	}
	waitPath(t, ready)
	n, err := c.SignalProcesses(ctx, syscall.SIGTERM)
	if err != nil || n < 1 {
		t.Fatalf("SignalProcesses = %d, %v", n, err)
	}
	// The shell creates the file before echo writes into it: wait for the
	// line, not for the file.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(state)
		if string(b) == "saved\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %q", b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitPath(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReaperMode runs the agent as a child subreaper, which collects every
// orphan's status the way PID 1 does, and checks that exec statuses are
// never stolen by the reaping of orphans, however the two interleave.
func TestReaperMode(t *testing.T) {
	sock := startAgent(t, "--reaper")
	c := dial(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				code := (i*5 + j) % 256
				var out bytes.Buffer
				// Orphans (the backgrounded sleeps) exit around the time
				// the exec's own process does, and are reaped by the agent.
				res, err := c.Exec(ctx, &tartarus.ExecRequest{
					Cmd:    []string{"sh", "-c", fmt.Sprintf("(sleep 0.0%d; true) >/dev/null 2>&1 & echo %d; exit %d", j, code, code)},
					Stdout: &out,
				})
				switch {
				case err != nil:
					errs <- err
				case res.ExitCode != code || strings.TrimSpace(out.String()) != fmt.Sprint(code):
					errs <- fmt.Errorf("exec %d: exit %d output %q", code, res.ExitCode, out.String())
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Processes that exit immediately, and a command that does not exist.
	for range 20 {
		res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"true"}})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("true: %+v %v", res, err)
		}
	}
	res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "kill -KILL $$"}})
	if err != nil || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("killed: %+v %v", res, err)
	}
	// No zombie is left: every orphan was reaped.
	time.Sleep(200 * time.Millisecond)
	out := &bytes.Buffer{}
	zombies := `awk -v p=$PPID '$4 == p && $3 == "Z" { print }' /proc/[0-9]*/stat 2>/dev/null; true`
	if _, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", zombies}, Stdout: out}); err != nil {
		t.Fatal(err)
	}
	if out.Len() > 0 {
		t.Errorf("zombies of the agent left:\n%s", out.String())
	}
}

func TestListenReconnect(t *testing.T) {
	sock := startAgent(t)
	for range 3 {
		c := dial(t, sock)
		var out bytes.Buffer
		res, err := c.Exec(context.Background(), &tartarus.ExecRequest{Cmd: []string{"echo", "ok"}, Stdout: &out})
		if err != nil || res.ExitCode != 0 || out.String() != "ok\n" {
			t.Fatalf("%+v %v %q", res, err, out.String())
		}
		c.Close()
	}
}

func TestFindVirtioPortMissing(t *testing.T) {
	if _, err := findVirtioPort("no-such-port-xyz"); err == nil {
		t.Fatal("found a port that does not exist")
	}
}

// blockedWriter never returns from Write, as a stalled serial console.
type blockedWriter struct{ block chan struct{} }

func (w blockedWriter) Write(p []byte) (int, error) { <-w.block; return len(p), nil }

func TestDropWriterNeverBlocks(t *testing.T) {
	w := blockedWriter{make(chan struct{})}
	defer close(w.block)
	d := newDropWriter(w, 4)
	done := make(chan struct{})
	go func() {
		for range 100 {
			d.Write([]byte("line\n"))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("writes blocked on a stalled console")
	}
	if d.dropped.Load() == 0 {
		t.Fatal("nothing counted as dropped")
	}
}

func TestLoadModulesList(t *testing.T) {
	dir := t.TempDir()
	if n, err := loadModules(dir, slog.New(slog.DiscardHandler)); n != 0 || err != nil {
		t.Fatalf("no load file: %d %v", n, err)
	}
	// Not real modules: the kernel refuses them, and every failure is
	// reported by name while the list goes on.
	os.WriteFile(filepath.Join(dir, "a.ko"), []byte("not elf"), 0o644)
	os.WriteFile(filepath.Join(dir, "load"), []byte("# comment\n\na.ko\nmissing.ko\n"), 0o644)
	n, err := loadModules(dir, slog.New(slog.DiscardHandler))
	if n != 0 || err == nil || !strings.Contains(err.Error(), "a.ko") || !strings.Contains(err.Error(), "missing.ko") {
		t.Fatalf("loaded %d, %v", n, err)
	}
}

func TestWaitFor(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dev")
	go func() { time.Sleep(20 * time.Millisecond); os.WriteFile(p, nil, 0o644) }()
	if err := waitFor(p, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(p+"-never", 30*time.Millisecond); err == nil {
		t.Fatal("waited for nothing")
	}
}
