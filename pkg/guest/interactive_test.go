package guest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// syncBuf is a buffer written by one goroutine and read by another.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or the test's patience ends.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestPTY(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("no /dev/ptmx")
	}
	e := start(t, agent.Options{})
	p, err := e.client.StartPTY(ctxT(t), &tartarus.PTYRequest{
		Cmd:  []string{"sh", "-c", `stty size; [ -t 0 ] && echo tty; read x; stty size; echo "got $x"; exit 3`},
		Cols: 100, Rows: 30,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	out := &syncBuf{}
	copied := make(chan error, 1)
	go func() { _, err := io.Copy(out, p); copied <- err }()
	waitFor(t, "first size", func() bool { return strings.Contains(out.String(), "30 100") })
	if err := p.Resize(120, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-copied; err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"30 100", "tty", "40 120", "got hello"} {
		if !strings.Contains(got, want) {
			t.Errorf("output %q lacks %q", got, want)
		}
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", res.ExitCode)
	}
	if err := p.Resize(0, 5); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("resize to 0 columns: %v, want invalid", err)
	}
}

// TestPTYHangUp: closing the terminal ends the command.
func TestPTYHangUp(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("no /dev/ptmx")
	}
	e := start(t, agent.Options{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	p, err := e.client.StartPTY(ctxT(t), &tartarus.PTYRequest{Cmd: []string{"sh", "-c", "echo $$ >" + pidFile + "; exec sleep 60"}, Cols: 80, Rows: 24})
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	waitFor(t, "the pid file", func() bool {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid > 0
	})
	p.Close()
	waitFor(t, "the command to die", func() bool { return syscall.Kill(pid, 0) != nil })
}

func TestBackgroundProcess(t *testing.T) {
	e := start(t, agent.Options{ExecLinger: 50 * time.Millisecond})
	ctx := ctxT(t)
	p, err := e.client.StartProcess(ctx, &tartarus.ProcessRequest{
		Cmd:   []string{"sh", "-c", `echo started; while read line; do echo "echo:$line"; echo "err:$line" >&2; done; echo bye; exit 7`},
		Tag:   "worker",
		Stdin: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid <= 0 || p.Tag != "worker" || p.StartedAt.IsZero() {
		t.Fatalf("process = %+v", p)
	}
	list, err := e.client.ListProcesses(ctx)
	if err != nil || len(list) != 1 || list[0].Pid != p.Pid || list[0].Exited {
		t.Fatalf("list = %+v, %v", list, err)
	}
	// A first attach that leaves: the process keeps running.
	actx, cancel := context.WithCancel(ctx)
	first := &syncBuf{}
	detached := make(chan error, 1)
	go func() {
		_, err := e.client.AttachProcess(actx, tartarus.ProcessSelector{Tag: "worker"}, true, first, io.Discard)
		detached <- err
	}()
	waitFor(t, "replayed output", func() bool { return strings.Contains(first.String(), "started") })
	cancel()
	if err := <-detached; !errors.Is(err, context.Canceled) {
		t.Fatalf("detach: %v", err)
	}
	// Reattach by pid, feed input, close stdin: the process ends.
	stdout, stderr := &syncBuf{}, &syncBuf{}
	done := make(chan *tartarus.ExecResult, 1)
	go func() {
		res, err := e.client.AttachProcess(ctx, tartarus.ProcessSelector{Pid: p.Pid}, false, stdout, stderr)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	time.Sleep(100 * time.Millisecond) // let the attach register before the output it should see
	if err := e.client.ProcessInput(ctx, tartarus.ProcessSelector{Pid: p.Pid}, []byte("one\n"), false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "echoed input", func() bool { return strings.Contains(stdout.String(), "echo:one") })
	if err := e.client.ProcessInput(ctx, tartarus.ProcessSelector{Tag: "worker"}, []byte("two\n"), true); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res == nil || res.ExitCode != 7 {
		t.Fatalf("result %+v", res)
	}
	if !strings.Contains(stdout.String(), "echo:two") || !strings.Contains(stdout.String(), "bye") || !strings.Contains(stderr.String(), "err:one") {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	if strings.Contains(stdout.String(), "started") {
		t.Errorf("attach without replay got old output: %q", stdout.String())
	}
	list, _ = e.client.ListProcesses(ctx)
	if len(list) != 1 || !list[0].Exited || list[0].ExitCode != 7 {
		t.Errorf("after exit, list = %+v", list)
	}
	// Attaching to an exited process answers its result at once.
	res, err = e.client.AttachProcess(ctx, tartarus.ProcessSelector{Pid: p.Pid}, true, io.Discard, io.Discard)
	if err != nil || res.ExitCode != 7 {
		t.Errorf("attach after exit: %+v, %v", res, err)
	}
	if err := e.client.ProcessInput(ctx, tartarus.ProcessSelector{Pid: p.Pid}, []byte("x"), false); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("input after exit: %v", err)
	}
}

func TestBackgroundProcessSignal(t *testing.T) {
	e := start(t, agent.Options{ExecLinger: 50 * time.Millisecond})
	ctx := ctxT(t)
	p, err := e.client.StartProcess(ctx, &tartarus.ProcessRequest{Cmd: []string{"sleep", "60"}, Tag: "sleeper"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *tartarus.ExecResult, 1)
	go func() {
		res, _ := e.client.AttachProcess(ctx, tartarus.ProcessSelector{Tag: "sleeper"}, false, nil, nil)
		done <- res
	}()
	time.Sleep(50 * time.Millisecond)
	if err := e.client.SignalProcess(ctx, tartarus.ProcessSelector{Pid: p.Pid}, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res == nil || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("result %+v", res)
	}
	// Bad selectors.
	for _, sel := range []tartarus.ProcessSelector{{Pid: 999999}, {Tag: "nope"}} {
		if err := e.client.SignalProcess(ctx, sel, syscall.SIGTERM); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("signal %+v: %v, want not found", sel, err)
		}
	}
	if err := e.client.SignalProcess(ctx, tartarus.ProcessSelector{}, syscall.SIGTERM); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("empty selector: %v, want invalid", err)
	}
	if _, err := e.client.StartProcess(ctx, &tartarus.ProcessRequest{Cmd: []string{"no-such-program"}}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("missing program: %v, want invalid", err)
	}
	if _, err := e.client.StartProcess(ctx, &tartarus.ProcessRequest{Cmd: []string{"true"}, Tag: "bad\ntag"}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("bad tag: %v, want invalid", err)
	}
}

func TestFileOps(t *testing.T) {
	e := start(t, agent.Options{})
	ctx := ctxT(t)
	dir := t.TempDir()
	c := e.client
	created, err := c.MakeDir(ctx, dir+"/a/b/c", true)
	if err != nil || !created {
		t.Fatalf("mkdir -p: %v %v", created, err)
	}
	if created, err := c.MakeDir(ctx, dir+"/a/b/c", true); err != nil || created {
		t.Errorf("mkdir again: %v %v", created, err)
	}
	if _, err := c.MakeDir(ctx, dir+"/x/y", false); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("mkdir without parents: %v", err)
	}
	if err := os.WriteFile(dir+"/a/b/c/f.txt", []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := c.StatFile(ctx, dir+"/a/b/c/f.txt")
	if err != nil || fi.Size != 5 || fi.IsDir || fi.Name != "f.txt" || fi.Path != dir+"/a/b/c/f.txt" || fi.Mode.Perm() != 0o600 {
		t.Fatalf("stat = %+v, %v", fi, err)
	}
	if _, err := c.StatFile(ctx, dir+"/missing"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("stat missing: %v", err)
	}
	all, err := c.ListFilesDepth(ctx, dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range all {
		paths = append(paths, strings.TrimPrefix(f.Path, dir))
	}
	slices.Sort(paths)
	if want := []string{"/a", "/a/b", "/a/b/c"}; !slices.Equal(paths, want) {
		t.Errorf("depth 3: %v, want %v", paths, want)
	}
	all, _ = c.ListFilesDepth(ctx, dir, 4)
	if len(all) != 4 {
		t.Errorf("depth 4: %d entries, want 4", len(all))
	}
	moved, err := c.MoveFile(ctx, dir+"/a/b/c/f.txt", dir+"/new/g.txt")
	if err != nil || moved.Name != "g.txt" || moved.Size != 5 {
		t.Fatalf("move: %+v %v", moved, err)
	}
	if _, err := os.Stat(dir + "/a/b/c/f.txt"); !os.IsNotExist(err) {
		t.Errorf("source still there: %v", err)
	}
	if err := c.RemoveFile(ctx, dir+"/a", false); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("remove non-empty dir: %v", err)
	}
	if err := c.RemoveFile(ctx, dir+"/a", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/a"); !os.IsNotExist(err) {
		t.Errorf("a still there: %v", err)
	}
	if err := c.RemoveFile(ctx, dir+"/a", true); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("remove again: %v", err)
	}
	if err := c.RemoveFile(ctx, "/", true); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("remove /: %v", err)
	}
	if _, err := c.ListFilesDepth(ctx, dir, 99); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("depth 99: %v", err)
	}
}

func TestWatch(t *testing.T) {
	e := start(t, agent.Options{})
	ctx := ctxT(t)
	dir := t.TempDir()
	w, err := e.client.WatchDir(ctx, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.MkdirAll(dir+"/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	var seen []tartarus.WatchEvent
	next := func(want tartarus.WatchEvent) {
		t.Helper()
		for !slices.Contains(seen, want) {
			evs, err := w.Next()
			if err != nil {
				t.Fatalf("waiting for %+v: %v (seen %+v)", want, err, seen)
			}
			seen = append(seen, evs...)
		}
	}
	next(tartarus.WatchEvent{Type: "create", Name: "sub", IsDir: true})
	// The new directory is watched too.
	if err := os.WriteFile(dir+"/sub/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	next(tartarus.WatchEvent{Type: "create", Name: "sub/f"})
	next(tartarus.WatchEvent{Type: "write", Name: "sub/f"})
	if err := os.Chmod(dir+"/sub/f", 0o600); err != nil {
		t.Fatal(err)
	}
	next(tartarus.WatchEvent{Type: "chmod", Name: "sub/f"})
	if err := os.Rename(dir+"/sub/f", dir+"/g"); err != nil {
		t.Fatal(err)
	}
	next(tartarus.WatchEvent{Type: "rename", Name: "sub/f"})
	next(tartarus.WatchEvent{Type: "create", Name: "g"})
	if err := os.Remove(dir + "/g"); err != nil {
		t.Fatal(err)
	}
	next(tartarus.WatchEvent{Type: "remove", Name: "g"})

	if _, err := e.client.WatchDir(ctx, dir+"/nope", false); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("watch missing dir: %v", err)
	}
}
