package guest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// socketpair returns the two ends of a unix stream socket pair.
func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

type env struct {
	client *guest.Client
	agent  *agent.Agent
	host   net.Conn // the host's end, to break the session
	served chan error
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// start serves an in-process agent on a socket pair and dials it.
func start(t testing.TB, opts agent.Options) *env {
	t.Helper()
	hostEnd, guestEnd := socketpair(t)
	if opts.Logger == nil {
		opts.Logger = testLogger(t).With("side", "guest")
	}
	a := agent.New(opts)
	served := make(chan error, 1)
	go func() { served <- a.Serve(context.Background(), guestEnd) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, hostEnd, testLogger(t).With("side", "host"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Error("agent session did not end after the client closed")
		}
		a.Close()
	})
	return &env{client: c, agent: a, host: hostEnd, served: served}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type execOut struct {
	res            *tartarus.ExecResult
	stdout, stderr string
}

func run(t testing.TB, c *guest.Client, req *tartarus.ExecRequest) execOut {
	t.Helper()
	var o, e bytes.Buffer
	req.Stdout, req.Stderr = &o, &e
	res, err := c.Exec(ctxT(t), req)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Cmd, err)
	}
	return execOut{res, o.String(), e.String()}
}

func TestDialInfo(t *testing.T) {
	e := start(t, agent.Options{})
	in := e.client.Info()
	host, _ := os.Hostname()
	if in.AgentVersion != agent.Version || in.Hostname != host || in.Kernel == "" {
		t.Errorf("info = %+v", in)
	}
	if in.BootedAt.IsZero() || in.BootedAt.After(time.Now()) {
		t.Errorf("booted at %v", in.BootedAt)
	}
	if err := e.client.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestExec(t *testing.T) {
	e := start(t, agent.Options{})
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	binary := filepath.Join(dir, "binary")
	if err := os.WriteFile(plain, []byte("echo hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(binary, []byte{0, 1, 2, 3}, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		req       tartarus.ExecRequest
		code      int
		signal    string
		stdout    string
		stderrHas string
		timedOut  bool
	}{
		{name: "echo", req: tartarus.ExecRequest{Cmd: []string{"echo", "hi"}}, stdout: "hi\n"},
		{name: "exit code", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "exit 3"}}, code: 3},
		{name: "stderr", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo oops >&2; exit 1"}}, code: 1, stderrHas: "oops"},
		{name: "stdin", req: tartarus.ExecRequest{Cmd: []string{"tr", "a-z", "A-Z"}, Stdin: strings.NewReader("hello")}, stdout: "HELLO"},
		{name: "no stdin is empty", req: tartarus.ExecRequest{Cmd: []string{"cat"}}, stdout: ""},
		{name: "env", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", `echo "$FOO $HOME $LANG $TERM"`}, Env: map[string]string{"FOO": "bar"}}, stdout: "bar /root C.UTF-8 xterm\n"},
		{name: "env overrides base", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", `echo $HOME`}, Env: map[string]string{"HOME": "/tmp"}}, stdout: "/tmp\n"},
		{name: "default cwd", req: tartarus.ExecRequest{Cmd: []string{"pwd"}}, stdout: "/\n"},
		{name: "cwd", req: tartarus.ExecRequest{Cmd: []string{"pwd"}, Cwd: dir}, stdout: dir + "\n"},
		{name: "killed by signal", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "kill -TERM $$"}}, code: 128 + 15, signal: "SIGTERM"},
		{name: "timeout", req: tartarus.ExecRequest{Cmd: []string{"sleep", "30"}, Timeout: 200 * time.Millisecond}, code: 137, signal: "SIGKILL", timedOut: true},
		{name: "command not found", req: tartarus.ExecRequest{Cmd: []string{"no-such-command-xyz"}}, code: 127, stderrHas: "no-such-command-xyz: command not found"},
		{name: "missing path", req: tartarus.ExecRequest{Cmd: []string{"/no/such/bin"}}, code: 127, stderrHas: "No such file"},
		{name: "not executable", req: tartarus.ExecRequest{Cmd: []string{plain}}, code: 126, stderrHas: "Permission denied"},
		{name: "not a program", req: tartarus.ExecRequest{Cmd: []string{binary}}, code: 126, stderrHas: "Exec format error"},
		{name: "directory", req: tartarus.ExecRequest{Cmd: []string{dir}}, code: 126, stderrHas: "Is a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := run(t, e.client, &tc.req)
			if out.res.ExitCode != tc.code || out.res.Signal != tc.signal || out.res.TimedOut != tc.timedOut {
				t.Errorf("result = %+v, want code %d signal %q timed out %v (stderr %q)", out.res, tc.code, tc.signal, tc.timedOut, out.stderr)
			}
			if tc.stdout != "" || tc.stderrHas == "" {
				if out.stdout != tc.stdout {
					t.Errorf("stdout = %q, want %q", out.stdout, tc.stdout)
				}
			}
			if !strings.Contains(out.stderr, tc.stderrHas) {
				t.Errorf("stderr = %q, want it to contain %q", out.stderr, tc.stderrHas)
			}
		})
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	e := start(t, agent.Options{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The background sleeper is in the exec's process group.
	out := run(t, e.client, &tartarus.ExecRequest{
		Cmd:     []string{"sh", "-c", "sleep 30 & echo $! > " + pidFile + "; wait"},
		Timeout: 300 * time.Millisecond,
	})
	if !out.res.TimedOut || out.res.ExitCode != 137 {
		t.Fatalf("result = %+v", out.res)
	}
	waitGone(t, readPid(t, pidFile))
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitGone waits for pid to exit (it may linger as a zombie of init).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still alive", pid)
}

func TestExecCancel(t *testing.T) {
	e := start(t, agent.Options{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(ctxT(t))
	// Stdin that never ends and a child that never reads it: the exec's
	// stream is stalled, so cancellation must not depend on it.
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, err := e.client.Exec(ctx, &tartarus.ExecRequest{
			Cmd:   []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 60"},
			Stdin: pr,
		})
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("exec did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let stdin fill the window
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("exec error = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exec did not return after cancel")
	}
	waitGone(t, readPid(t, pidFile))
	// The session is still usable.
	if err := e.client.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestSignalAll(t *testing.T) {
	e := start(t, agent.Options{})
	dir := t.TempDir()
	// Two detached groups, each leader gone, a sleeper left in each.
	var pids []int
	for i := range 2 {
		f := filepath.Join(dir, fmt.Sprint(i))
		out := run(t, e.client, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $! > " + f}})
		if out.res.ExitCode != 0 {
			t.Fatalf("result %+v", out.res)
		}
		pids = append(pids, readPid(t, f))
	}
	if err := e.client.SignalAll(ctxT(t), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
}

// SignalProcesses reaches a program that traps SIGTERM, which then writes
// its state. The in-process agent signals only its own descendants, never
// the rest of the machine.
func TestSignalProcesses(t *testing.T) {
	e := start(t, agent.Options{})
	dir := t.TempDir()
	ready, state := filepath.Join(dir, "ready"), filepath.Join(dir, "state")
	script := `trap 'echo saved > ` + state + `; exit 3' TERM; echo > ` + ready + `; while :; do sleep 0.05; done`
	done := make(chan execOut, 1)
	go func() { done <- run(t, e.client, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", script}}) }()
	waitFile(t, ready)
	n, err := e.client.SignalProcesses(ctxT(t), syscall.SIGTERM)
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Errorf("signal reached %d processes", n)
	}
	out := <-done
	if out.res.ExitCode != 3 {
		t.Errorf("trapping program ended %+v", out.res)
	}
	if b, err := os.ReadFile(state); err != nil || string(b) != "saved\n" {
		t.Errorf("state file %q, %v", b, err)
	}
}

func waitFile(t *testing.T, path string) {
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

func TestExecLargeOutput(t *testing.T) {
	e := start(t, agent.Options{})
	const size = 8 << 20
	h := sha256.New()
	var n countWriter
	res, err := e.client.Exec(ctxT(t), &tartarus.ExecRequest{
		Cmd:    []string{"head", "-c", fmt.Sprint(size), "/dev/urandom"},
		Stdout: io.MultiWriter(h, &n),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || n.n != size {
		t.Fatalf("result %+v, %d bytes", res, n.n)
	}
	// Large input through stdin, echoed back and checked.
	in := make([]byte, 4<<20)
	rand.Read(in)
	var out bytes.Buffer
	res, err = e.client.Exec(ctxT(t), &tartarus.ExecRequest{Cmd: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatal(res, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat returned %d bytes, not the %d sent", out.Len(), len(in))
	}
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func TestExecBackgroundHoldsOutput(t *testing.T) {
	e := start(t, agent.Options{ExecLinger: 100 * time.Millisecond})
	start := time.Now()
	out := run(t, e.client, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo before; sleep 30 & echo after"}})
	if out.res.ExitCode != 0 || out.stdout != "before\nafter\n" {
		t.Fatalf("result %+v stdout %q", out.res, out.stdout)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("exec waited %v for a background process", d)
	}
	if err := e.client.SignalAll(ctxT(t), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentExecs(t *testing.T) {
	e := start(t, agent.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			res, err := e.client.Exec(ctxT(t), &tartarus.ExecRequest{
				Cmd:    []string{"sh", "-c", fmt.Sprintf("sleep 0.1; echo %d; exit %d", i, i)},
				Stdout: &out,
			})
			switch {
			case err != nil:
				errs <- err
			case res.ExitCode != i || out.String() != fmt.Sprintf("%d\n", i):
				errs <- fmt.Errorf("exec %d: code %d output %q", i, res.ExitCode, out.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestFiles(t *testing.T) {
	e := start(t, agent.Options{})
	ctx := ctxT(t)
	dir := t.TempDir()
	data := make([]byte, 8<<20+123)
	rand.Read(data)
	path := filepath.Join(dir, "a/b/file.bin")
	if err := e.client.WriteFile(ctx, path, 0o600, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v", fi.Mode())
	}
	rc, err := e.client.ReadFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if got, want := h.Sum(nil), sha256.Sum256(data); !bytes.Equal(got, want[:]) {
		t.Fatal("read back different bytes")
	}

	// Empty file, default mode, replaced atomically.
	if err := e.client.WriteFile(ctx, path, 0, strings.NewReader("")); err != nil {
		t.Fatal(err)
	}
	rc, err = e.client.ReadFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || len(b) != 0 {
		t.Fatalf("empty file read %d bytes, %v", len(b), err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("default mode = %v", fi.Mode())
	}

	list, err := e.client.ListFiles(ctx, filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "b" || !list[0].IsDir {
		t.Errorf("list = %+v", list)
	}
	list, err = e.client.ListFiles(ctx, filepath.Join(dir, "a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "file.bin" || list[0].Size != 0 || list[0].IsDir {
		t.Errorf("list = %+v (temp files left behind?)", list)
	}
}

func TestFileErrors(t *testing.T) {
	e := start(t, agent.Options{})
	ctx := ctxT(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"read missing", func() error { _, err := e.client.ReadFile(ctx, missing); return err }, tartarus.ErrNotFound},
		{"read relative", func() error { _, err := e.client.ReadFile(ctx, "etc/passwd"); return err }, tartarus.ErrInvalid},
		{"read directory", func() error { _, err := e.client.ReadFile(ctx, dir); return err }, tartarus.ErrInvalid},
		{"list missing", func() error { _, err := e.client.ListFiles(ctx, missing); return err }, tartarus.ErrNotFound},
		{"list relative", func() error { _, err := e.client.ListFiles(ctx, "."); return err }, tartarus.ErrInvalid},
		{"list a file", func() error { _, err := e.client.ListFiles(ctx, "/etc/passwd"); return err }, tartarus.ErrInvalid},
		{"write relative", func() error { return e.client.WriteFile(ctx, "x", 0, strings.NewReader("x")) }, tartarus.ErrInvalid},
		{"write over directory", func() error { return e.client.WriteFile(ctx, dir, 0, strings.NewReader("x")) }, tartarus.ErrInvalid},
		{"exec bad cwd", func() error {
			_, err := e.client.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"true"}, Cwd: missing})
			return err
		}, tartarus.ErrNotFound},
		{"exec empty", func() error { _, err := e.client.Exec(ctx, &tartarus.ExecRequest{}); return err }, tartarus.ErrInvalid},
		{"exec relative cwd", func() error {
			_, err := e.client.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"true"}, Cwd: "tmp"})
			return err
		}, tartarus.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Errorf("error = %v, want %v", err, tc.want)
			}
		})
	}
	// A large upload into a place that cannot take it fails cleanly.
	big := bytes.NewReader(make([]byte, 16<<20))
	if err := e.client.WriteFile(ctx, dir, 0, big); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("large write over directory: %v", err)
	}
	// The guest's early answer stops an endless upload.
	if err := e.client.WriteFile(ctx, dir, 0, zeros{}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("endless write over directory: %v", err)
	}
	// A failing reader leaves nothing behind.
	target := filepath.Join(dir, "partial")
	err := e.client.WriteFile(ctx, target, 0, io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), errReader{}))
	if err == nil {
		t.Error("write from failing reader succeeded")
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial upload left %s: %v", target, err)
	}
	if err := e.client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestReadFileEarlyClose(t *testing.T) {
	e := start(t, agent.Options{})
	ctx := ctxT(t)
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, make([]byte, 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		rc, err := e.client.ReadFile(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
	if err := e.client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestStats(t *testing.T) {
	e := start(t, agent.Options{})
	st, err := e.client.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryTotalMB <= 0 || st.MemoryUsedMB <= 0 || st.MemoryUsedMB > st.MemoryTotalMB {
		t.Errorf("memory %d/%d MB", st.MemoryUsedMB, st.MemoryTotalMB)
	}
	if st.Processes < 1 || st.CPUPercent < 0 || st.CPUPercent > 100 {
		t.Errorf("stats = %+v", st)
	}
	before := st.LastActivityAt
	if before.IsZero() {
		t.Error("no last activity")
	}
	time.Sleep(10 * time.Millisecond)
	run(t, e.client, &tartarus.ExecRequest{Cmd: []string{"true"}})
	st, err = e.client.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !st.LastActivityAt.After(before) {
		t.Errorf("exec did not move last activity: %v then %v", before, st.LastActivityAt)
	}
}

func TestSessionDeath(t *testing.T) {
	e := start(t, agent.Options{})
	ctx := ctxT(t)
	running := make(chan error, 1)
	go func() {
		_, err := e.client.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sleep", "30"}})
		running <- err
	}()
	time.Sleep(100 * time.Millisecond)
	e.host.Close() // the VM went away
	select {
	case <-e.client.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := <-running; !errors.Is(err, tartarus.ErrUnavailable) {
		t.Errorf("running exec: %v, want ErrUnavailable", err)
	}
	if err := e.client.Ping(ctx); !errors.Is(err, tartarus.ErrUnavailable) {
		t.Errorf("ping: %v, want ErrUnavailable", err)
	}
	if _, err := e.client.ReadFile(ctx, "/etc/hostname"); !errors.Is(err, tartarus.ErrUnavailable) {
		t.Errorf("read: %v, want ErrUnavailable", err)
	}
}

func TestSyncHarmless(t *testing.T) {
	// Without SetClock the guest's clock is left alone even if the host
	// says it is 2001.
	e := start(t, agent.Options{})
	if err := e.client.Sync(ctxT(t), time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC), []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	if time.Now().Year() < 2020 {
		t.Fatal("sync set the clock")
	}
}

func TestDialTimeout(t *testing.T) {
	// Nothing answers on the other end.
	hostEnd, guestEnd := socketpair(t)
	defer guestEnd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := guest.Dial(ctx, hostEnd, nil)
	if !errors.Is(err, tartarus.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial = %v", err)
	}
}

// switchboard stands for the VM's serial port: one endless byte stream on
// the guest side, to which hosts attach one after another. A host that is
// replaced vanishes without the guest seeing the stream end, as after a
// snapshot restore. Bytes from the guest while no host listens are lost.
type switchboard struct {
	raw net.Conn
	mu  sync.Mutex
	cur net.Conn
}

func newSwitchboard(raw net.Conn) *switchboard {
	s := &switchboard{raw: raw}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := raw.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			cur := s.cur
			s.mu.Unlock()
			if cur != nil {
				_, _ = cur.Write(buf[:n])
			}
		}
	}()
	return s
}

// attach returns a new host's end and cuts off the previous host.
func (s *switchboard) attach() net.Conn {
	host, board := net.Pipe()
	s.mu.Lock()
	old := s.cur
	s.cur = board
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go func() { _, _ = io.Copy(s.raw, board) }()
	return host
}

// port is the guest's end of the stream: Close does not end it (the agent
// reopens the same port), Shut does.
type port struct{ net.Conn }

func (port) Close() error { return nil }

// plainPort is a port that cannot interrupt a read: the agent cannot
// start a new session on it and returns ErrStaleSession instead.
type plainPort struct {
	io.Reader
	io.Writer
}

func (plainPort) Close() error { return nil }

func TestReconnectOverStaleSession(t *testing.T) {
	// A port that can interrupt reads (the virtio port can) is reused in
	// place; one that cannot makes Serve return for its caller to retry.
	for _, inPlace := range []bool{true, false} {
		t.Run(fmt.Sprintf("in place %v", inPlace), func(t *testing.T) { testReconnectOverStaleSession(t, inPlace) })
	}
}

func testReconnectOverStaleSession(t *testing.T, inPlace bool) {
	hostRaw, guestRaw := socketpair(t)
	defer hostRaw.Close()
	defer guestRaw.Close()
	a := agent.New(agent.Options{Logger: testLogger(t).With("side", "guest")})
	defer a.Close()
	var conn io.ReadWriteCloser = port{guestRaw}
	if !inPlace {
		conn = plainPort{guestRaw, guestRaw}
	}
	var stale atomic.Int32
	go func() {
		for {
			err := a.Serve(context.Background(), conn)
			if errors.Is(err, agent.ErrStaleSession) {
				stale.Add(1)
			} else if err != nil {
				return
			}
			if _, err := guestRaw.Write(nil); err != nil {
				return
			}
		}
	}()
	board := newSwitchboard(hostRaw)

	c1, err := guest.Dial(ctxT(t), board.attach(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	go c1.Exec(context.Background(), &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 60"}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("exec did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A new host arrives; the guest's session with the old one is stale.
	for i := range 3 {
		c2, err := guest.Dial(ctxT(t), board.attach(), nil)
		if err != nil {
			t.Fatalf("dial over stale session %d: %v", i, err)
		}
		if err := c2.Ping(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		out := run(t, c2, &tartarus.ExecRequest{Cmd: []string{"echo", "fresh"}})
		if out.stdout != "fresh\n" {
			t.Fatalf("stdout %q", out.stdout)
		}
	}
	// The stale session's exec had nobody to report to: it was killed.
	waitGone(t, readPid(t, pidFile))
	switch n := stale.Load(); {
	case inPlace && n != 0:
		t.Errorf("Serve returned ErrStaleSession %d times; want the new session on the same port", n)
	case !inPlace && n == 0:
		t.Error("no session ended as stale")
	}
}

func TestReconnectFresh(t *testing.T) {
	// The guest serves session after session on new connections, as on a
	// virtio port reopened after the host left.
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a := agent.New(agent.Options{Logger: testLogger(t)})
	defer a.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go a.Serve(context.Background(), c)
		}
	}()
	for i := range 3 {
		conn, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := guest.Dial(ctxT(t), conn, nil)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if err := c.Ping(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// slowWriter takes output slowly, as a far HTTP client does.
type slowWriter struct {
	n     int
	delay time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(w.delay)
	w.n += len(p)
	return len(p), nil
}

// TestExecSlowConsumer: output of a process that has exited is delivered in
// full even when the host takes it far slower than the linger time.
func TestExecSlowConsumer(t *testing.T) {
	e := start(t, agent.Options{ExecLinger: 10 * time.Millisecond})
	const size = 12 << 20
	w := &slowWriter{delay: 3 * time.Millisecond}
	res, err := e.client.Exec(ctxT(t), &tartarus.ExecRequest{
		Cmd:    []string{"head", "-c", fmt.Sprint(size), "/dev/zero"},
		Stdout: w,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatal(res, err)
	}
	if w.n != size {
		t.Fatalf("got %d of %d bytes", w.n, size)
	}
}

// TestExecChattyBackground: a background process that keeps writing to the
// exec's stdout does not keep the exec from ending.
func TestExecChattyBackground(t *testing.T) {
	e := start(t, agent.Options{ExecLinger: 50 * time.Millisecond})
	start := time.Now()
	out := run(t, e.client, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "(while true; do echo bg; sleep 0.02; done) & echo main"}})
	if out.res.ExitCode != 0 || !strings.Contains(out.stdout, "main\n") {
		t.Fatalf("%+v %q", out.res, out.stdout)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("exec took %v", d)
	}
	if err := e.client.SignalAll(ctxT(t), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}
