package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/client/terminal"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// lockedBuf is written by a stream and read by the test.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func eventually(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

// TestInteractiveEndToEnd drives the native features the E2B SDK needs
// against a real server with real microVMs: a terminal resized while a
// shell runs on it, a background process reattached, fed and killed, a
// directory watch seeing a file appear, file management, metadata
// filters, a new timeout and per-sandbox metrics.
func TestInteractiveEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newE2E(t)
	key, err := os.ReadFile(filepath.Join(e.data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(e.url, strings.TrimSpace(string(key)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", TimeoutS: 600, Metadata: map[string]string{"suite": "interactive", "run": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", TimeoutS: 600, Metadata: map[string]string{"suite": "other"}})
	if err != nil {
		t.Fatal(err)
	}
	id := sb.ID

	t.Run("pty", func(t *testing.T) {
		p, err := terminal.Open(ctx, c, id, &terminal.PTYOptions{
			Cmd:  []string{"sh", "-c", `stty size; read x; stty size; echo "got $x"; exit 5`},
			Cols: 80, Rows: 24,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		out := &lockedBuf{}
		copied := make(chan error, 1)
		go func() { _, err := io.Copy(out, p); copied <- err }()
		eventually(t, "the first size", 30*time.Second, func() bool { return strings.Contains(out.String(), "24 80") })
		if err := p.Resize(120, 40); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // the resize and the input travel apart
		if _, err := p.Write([]byte("hello\r")); err != nil {
			t.Fatal(err)
		}
		if err := <-copied; err != nil {
			t.Fatal(err)
		}
		if code, ok := p.ExitCode(); !ok || code != 5 {
			t.Errorf("exit code %d %v, want 5", code, ok)
		}
		for _, want := range []string{"24 80", "40 120", "got hello"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("terminal output %q lacks %q", out.String(), want)
			}
		}
	})

	t.Run("background process", func(t *testing.T) {
		p, err := c.StartProcess(ctx, id, &api.ProcessStart{
			Cmd:   []string{"sh", "-c", `echo ready; while read l; do echo "got:$l"; done; sleep 600`},
			Tag:   "server",
			Stdin: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		ps, err := c.ListProcesses(ctx, id)
		if err != nil || len(ps) != 1 || ps[0].Pid != p.Pid || ps[0].Tag != "server" || ps[0].Exited {
			t.Fatalf("processes = %+v, %v", ps, err)
		}
		// The caller went away; a new one reattaches by tag, with the
		// output printed meanwhile replayed.
		out := &lockedBuf{}
		attached := make(chan struct{})
		done := make(chan *client.ExecResult, 1)
		go func() {
			res, err := c.AttachProcess(ctx, id, tartarus.ProcessSelector{Tag: "server"}, true, out, io.Discard, func() { close(attached) })
			if err != nil {
				t.Error(err)
			}
			done <- res
		}()
		<-attached
		eventually(t, "replayed output", 30*time.Second, func() bool { return strings.Contains(out.String(), "ready") })
		if err := c.ProcessInput(ctx, id, tartarus.ProcessSelector{Pid: p.Pid}, []byte("ping\n"), false); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the echoed input", 30*time.Second, func() bool { return strings.Contains(out.String(), "got:ping") })
		if err := c.SignalProcess(ctx, id, tartarus.ProcessSelector{Tag: "server"}, "SIGKILL"); err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res == nil || res.ExitCode != 137 {
			t.Fatalf("result %+v, want exit 137", res)
		}
		if err := c.SignalProcess(ctx, id, tartarus.ProcessSelector{Tag: "nope"}, "TERM"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("signal unknown tag: %v", err)
		}
	})

	t.Run("watch", func(t *testing.T) {
		if _, err := c.MakeDir(ctx, id, "/tmp/watched/sub", true); err != nil {
			t.Fatal(err)
		}
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		lines := make(chan api.WatchLine, 64)
		go func() {
			_ = c.Watch(wctx, id, "/tmp/watched", true, func(l api.WatchLine) error {
				lines <- l
				return nil
			})
			close(lines)
		}()
		if l := <-lines; l.Type != api.WatchWatching {
			t.Fatalf("first line %+v", l)
		}
		if err := c.WriteFile(ctx, id, "/tmp/watched/sub/new.txt", 0o644, strings.NewReader("hi")); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("watch ended")
				}
				// The upload lands by rename: the file appears as a create.
				if l.Type == "create" && l.Name == "sub/new.txt" {
					return
				}
			case <-timeout:
				t.Fatal("no create event for sub/new.txt")
			}
		}
	})

	t.Run("files", func(t *testing.T) {
		if made, err := c.MakeDir(ctx, id, "/tmp/f/a/b", true); err != nil || !made {
			t.Fatalf("mkdir: %v %v", made, err)
		}
		if err := c.WriteFile(ctx, id, "/tmp/f/a/b/x", 0o600, strings.NewReader("12345")); err != nil {
			t.Fatal(err)
		}
		fi, err := c.StatFile(ctx, id, "/tmp/f/a/b/x")
		if err != nil || fi.Size != 5 || fi.IsDir {
			t.Fatalf("stat: %+v %v", fi, err)
		}
		all, err := c.ListFilesDepth(ctx, id, "/tmp/f", 3)
		if err != nil || len(all) != 3 {
			t.Fatalf("list depth 3: %+v %v", all, err)
		}
		if fi, err := c.MoveFile(ctx, id, "/tmp/f/a/b/x", "/tmp/f/y"); err != nil || fi.Name != "y" {
			t.Fatalf("move: %+v %v", fi, err)
		}
		if err := c.RemoveFile(ctx, id, "/tmp/f", true); err != nil {
			t.Fatal(err)
		}
		if _, err := c.StatFile(ctx, id, "/tmp/f"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("stat after remove: %v", err)
		}
	})

	t.Run("metadata and timeout", func(t *testing.T) {
		list, err := c.ListSandboxesWithMetadata(ctx, map[string]string{"suite": "interactive"})
		if err != nil || len(list) != 1 || list[0].ID != id {
			t.Fatalf("filtered list: %v %v", list, err)
		}
		got, err := c.SetTimeout(ctx, other.ID, 2)
		if err != nil || time.Until(got.ExpiresAt) > 3*time.Second {
			t.Fatalf("set timeout: %+v %v", got, err)
		}
		eventually(t, "the expiry loop to end the sandbox", 60*time.Second, func() bool {
			sb, err := c.GetSandbox(ctx, other.ID)
			return err == nil && sb.State.Final()
		})
	})

	t.Run("cli", func(t *testing.T) {
		// exec -t with piped input: the shell reads it from the terminal.
		out := e.cli(t, 3, "echo from-tty; [ -t 0 ] && echo is-a-tty; exit 3\n", "exec", "-t", id, "--", "sh")
		if !strings.Contains(out, "from-tty") || !strings.Contains(out, "is-a-tty") {
			t.Errorf("exec -t output %q", out)
		}
		pid := strings.TrimSpace(e.cli(t, 0, "", "proc", "start", id, "--tag", "cli-sleeper", "--", "sleep", "300"))
		if ls := e.cli(t, 0, "", "proc", "ls", id); !strings.Contains(ls, pid) || !strings.Contains(ls, "cli-sleeper") {
			t.Errorf("proc ls: %q", ls)
		}
		e.cli(t, 0, "", "proc", "kill", id, "cli-sleeper", "--signal", "KILL")
		e.cli(t, 137, "", "proc", "attach", id, pid)

		// watch prints a line a change until interrupted.
		w := exec.Command(e.bin, "watch", id+":/tmp")
		w.Env = append(os.Environ(), "TARTARUS_URL="+e.url, "TARTARUS_DATA_DIR="+e.data, "TARTARUS_API_KEY=")
		stdout := &lockedBuf{}
		stderr := &lockedBuf{}
		w.Stdout, w.Stderr = stdout, stderr
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		defer w.Process.Kill()
		eventually(t, "the watch to start", 30*time.Second, func() bool { return strings.Contains(stderr.String(), "watching /tmp") })
		e.cli(t, 0, "", "exec", id, "--", "sh", "-c", "echo x > /tmp/cli-watched")
		eventually(t, "the create line", 30*time.Second, func() bool { return strings.Contains(stdout.String(), "create  cli-watched") })
		_ = w.Process.Signal(os.Interrupt)
		if err := w.Wait(); err != nil {
			t.Errorf("watch after interrupt: %v\n%s", err, stderr.String())
		}
	})

	t.Run("metrics", func(t *testing.T) {
		var ms []tartarus.MetricSample
		eventually(t, "a metrics sample", 30*time.Second, func() bool {
			ms, err = c.Metrics(ctx, id)
			return err == nil && len(ms) > 0
		})
		m := ms[len(ms)-1]
		if m.MemoryTotalMB <= 0 || m.MemoryUsedMB <= 0 || m.DiskTotalMB <= 0 || m.CPUCount != 1 {
			t.Errorf("sample %+v", m)
		}
	})
}
