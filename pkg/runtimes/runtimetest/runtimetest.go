// Package runtimetest is the conformance suite every tartarus.Runtime must
// pass: call Run from the implementation's tests.
//
// The suite boots few sandboxes (one shared by most subtests, one more that
// is created and destroyed without a start), so it stays affordable on a
// real microVM under software emulation.
//
// Contract details the suite pins down, beyond the Runtime doc comments:
//   - Exec on a paused sandbox fails promptly with an error wrapping
//     tartarus.ErrFailedPrecondition and runs nothing; commands already
//     running are frozen and continue after Resume.
//   - A timed-out command is killed with its process group: TimedOut is set
//     and ExitCode is 137.
//   - A command killed by a signal exits 128+signal.
//   - VMConfig.Env is the environment of every Exec; ExecRequest.Env adds to
//     it and wins on conflicts.
//   - Missing files and directories are tartarus.ErrNotFound; an unknown
//     sandbox id is tartarus.ErrNotFound for every method but Destroy.
//   - A capability declared false in Fingerprint makes its methods fail with
//     tartarus.ErrNotImplemented.
package runtimetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Factory returns a runtime and the image to boot. The suite calls it once
// at the start and once more in the recover subtest: the second call must
// return a NEW runtime value over the SAME state (for example the same state
// directory, created once outside the factory), as a restarted node agent
// would have. Before that second call the suite calls the first runtime's
// Close() error method, when it has one, which must let go of the sandboxes
// (connections, sockets) without stopping them, as an exiting agent does.
type Factory func(t *testing.T) (tartarus.Runtime, *tartarus.Image)

// callTimeout bounds every single call; a real VM under TCG may need a while
// to boot, so it is generous.
const callTimeout = 3 * time.Minute

// Run runs the conformance suite against the runtime newRuntime returns.
func Run(t *testing.T, newRuntime Factory) {
	rt, img := newRuntime(t)
	ctx := context.Background()
	fp, err := rt.Fingerprint(ctx)
	if err != nil {
		t.Fatalf("Fingerprint: %v", err)
	}
	if !fp.Available {
		t.Fatalf("runtime %s not available: %s", rt.Name(), fp.Reason)
	}
	if fp.Runtime != rt.Name() {
		t.Errorf("Fingerprint.Runtime = %q, Name() = %q", fp.Runtime, rt.Name())
	}
	if fp.MaxCPUs < 1 || fp.MaxMemoryMB < tartarus.MinMemoryMB {
		t.Errorf("Fingerprint limits: MaxCPUs %d MaxMemoryMB %d", fp.MaxCPUs, fp.MaxMemoryMB)
	}
	caps := fp.Capabilities
	mem := min(256, fp.MaxMemoryMB)

	t.Run("UnknownID", func(t *testing.T) {
		const id = "rt-does-not-exist"
		if _, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("Exec: %v, want ErrNotFound", err)
		}
		if err := rt.Start(ctxT(t), id); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("Start: %v, want ErrNotFound", err)
		}
		if _, err := rt.Stats(ctxT(t), id); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("Stats: %v, want ErrNotFound", err)
		}
		if err := rt.Destroy(ctxT(t), id); err != nil {
			t.Errorf("Destroy of an unknown id: %v, want nil", err)
		}
	})

	t.Run("CreateBeyondLimits", func(t *testing.T) {
		cfg := &tartarus.VMConfig{ID: newID(), Template: img.Name, Image: img, CPUs: fp.MaxCPUs + 1, MemoryMB: mem}
		if _, err := rt.Create(ctxT(t), cfg); !errors.Is(err, tartarus.ErrResourceExhausted) {
			t.Errorf("Create with %d CPUs (max %d): %v, want ErrResourceExhausted", cfg.CPUs, fp.MaxCPUs, err)
		}
		cfg = &tartarus.VMConfig{ID: newID(), Template: img.Name, Image: img, CPUs: 1, MemoryMB: fp.MaxMemoryMB + 1}
		if _, err := rt.Create(ctxT(t), cfg); !errors.Is(err, tartarus.ErrResourceExhausted) {
			t.Errorf("Create with %d MiB (max %d): %v, want ErrResourceExhausted", cfg.MemoryMB, fp.MaxMemoryMB, err)
		}
		assertGone(t, rt, cfg.ID)
	})

	t.Run("CreateDestroyWithoutStart", func(t *testing.T) {
		cfg := &tartarus.VMConfig{ID: newID(), Template: img.Name, Image: img, CPUs: 1, MemoryMB: mem}
		id, err := rt.Create(ctxT(t), cfg)
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		if id != cfg.ID {
			t.Errorf("Create returned %q, want %q", id, cfg.ID)
		}
		if err := rt.Destroy(ctxT(t), id); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		assertGone(t, rt, id)
	})

	// The shared sandbox.
	cfg := &tartarus.VMConfig{ID: newID(), Template: img.Name, Image: img, CPUs: 1, MemoryMB: mem,
		Env: map[string]string{"TT_VM": "from-vm", "TT_BOTH": "vm"}}
	id, err := rt.Create(ctx, cfg)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			_ = rt.Destroy(context.Background(), id)
		}
	})
	if err := rt.Start(ctxT(t), id); err != nil {
		t.Fatalf("Start: %v", err)
	}

	t.Run("Exec", func(t *testing.T) { testExec(t, rt, id) })
	t.Run("ExecTimeout", func(t *testing.T) {
		res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"sleep", "30"}, Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatalf("Exec: %v", err)
		}
		if !res.TimedOut || res.ExitCode != 137 {
			t.Errorf("result %+v, want TimedOut and exit 137", res)
		}
	})
	t.Run("ExecCancel", func(t *testing.T) {
		pid := startBackground(t, rt, id, func(ctx context.Context, ready func()) {
			<-ctx.Done()
		})
		assertDead(t, rt, id, pid)
	})
	t.Run("Signal", func(t *testing.T) {
		if !caps.Signal {
			if err := rt.Signal(ctxT(t), id, syscall.SIGTERM); !errors.Is(err, tartarus.ErrNotImplemented) {
				t.Errorf("Signal with Capabilities.Signal=false: %v, want ErrNotImplemented", err)
			}
			return
		}
		out := &readyWriter{ready: make(chan struct{})}
		done := make(chan *tartarus.ExecResult, 1)
		go func() {
			res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo up; exec sleep 30"}, Stdout: out})
			if err != nil {
				t.Errorf("Exec: %v", err)
			}
			done <- res
		}()
		waitReady(t, out)
		if err := rt.Signal(ctxT(t), id, syscall.SIGTERM); err != nil {
			t.Fatalf("Signal: %v", err)
		}
		select {
		case res := <-done:
			if res != nil && res.ExitCode != 128+int(syscall.SIGTERM) {
				t.Errorf("exit code %d after SIGTERM, want %d", res.ExitCode, 128+int(syscall.SIGTERM))
			}
		case <-time.After(callTimeout):
			t.Fatal("command did not end after SIGTERM")
		}
	})
	t.Run("PauseResume", func(t *testing.T) { testPause(t, rt, id, caps.Pause) })
	t.Run("Files", func(t *testing.T) { testFiles(t, rt, id, caps.Files) })
	t.Run("Stats", func(t *testing.T) {
		st, err := rt.Stats(ctxT(t), id)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if st.MemoryTotalMB <= 0 || st.MemoryTotalMB > mem || st.Processes < 0 {
			t.Errorf("Stats %+v: want 0 < MemoryTotalMB ≤ %d", st, mem)
		}
	})
	t.Run("List", func(t *testing.T) {
		in := find(t, rt, id)
		if in == nil {
			t.Fatalf("List lacks %s", id)
		}
		if in.State != tartarus.InstanceRunning || in.CPUs != 1 || in.MemoryMB != mem {
			t.Errorf("instance %+v", in)
		}
		if in.IdleSince == nil {
			t.Errorf("IdleSince is nil while no command runs")
		}
	})

	t.Run("Recover", func(t *testing.T) {
		if !caps.Recover {
			if _, err := rt.Recover(ctxT(t)); !errors.Is(err, tartarus.ErrNotImplemented) {
				t.Errorf("Recover with Capabilities.Recover=false: %v, want ErrNotImplemented", err)
			}
			t.Skip("runtime declares Capabilities.Recover=false")
		}
		// An exiting node agent lets go of its sandboxes without stopping
		// them; a runtime holding host-side connections does that in Close.
		if c, ok := rt.(tartarus.RuntimeCloser); ok {
			if err := c.Close(); err != nil {
				t.Fatalf("Close before recovering: %v", err)
			}
		}
		rt2, _ := newRuntime(t)
		if rt2 == rt {
			t.Fatal("the factory returned the same runtime value; it must make a new one over the same state")
		}
		adopted, err := rt2.Recover(ctxT(t))
		if err != nil {
			t.Fatalf("Recover: %v", err)
		}
		found := false
		for _, in := range adopted {
			found = found || in.ID == id
		}
		if !found {
			t.Fatalf("Recover did not adopt %s (got %d instances)", id, len(adopted))
		}
		var out bytes.Buffer
		res, err := rt2.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"echo", "still here"}, Stdout: &out})
		if err != nil || res.ExitCode != 0 || out.String() != "still here\n" {
			t.Fatalf("Exec after Recover: %v %+v %q", err, res, out.String())
		}
		rt = rt2 // the new runtime owns the sandbox from here on
	})

	t.Run("Destroy", func(t *testing.T) {
		if err := rt.Destroy(ctxT(t), id); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		destroyed = true
		if err := rt.Destroy(ctxT(t), id); err != nil {
			t.Errorf("second Destroy: %v, want nil", err)
		}
		assertGone(t, rt, id)
		if _, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("Exec after Destroy: %v, want ErrNotFound", err)
		}
	})
}

func testExec(t *testing.T, rt tartarus.Runtime, id string) {
	tests := []struct {
		name     string
		req      tartarus.ExecRequest
		stdin    string
		wantOut  string
		wantErr  string
		wantExit int
	}{
		{name: "stdout", req: tartarus.ExecRequest{Cmd: []string{"echo", "hello"}}, wantOut: "hello\n"},
		{name: "stderr and exit code", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}},
			wantOut: "out\n", wantErr: "err\n", wantExit: 3},
		{name: "stdin", req: tartarus.ExecRequest{Cmd: []string{"cat"}}, stdin: "line one\nline two", wantOut: "line one\nline two"},
		{name: "no stdin is EOF", req: tartarus.ExecRequest{Cmd: []string{"cat"}}, wantOut: ""},
		{name: "env from VMConfig and request", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo $TT_VM $TT_REQ $TT_BOTH"},
			Env: map[string]string{"TT_REQ": "from-req", "TT_BOTH": "req"}}, wantOut: "from-vm from-req req\n"},
		{name: "cwd", req: tartarus.ExecRequest{Cmd: []string{"pwd"}, Cwd: "/tmp"}, wantOut: "/tmp\n"},
		{name: "user", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "id -u; id -g"}, User: "1000:1000"}, wantOut: "1000\n1000\n"},
		{name: "root user", req: tartarus.ExecRequest{Cmd: []string{"id", "-u"}, User: "root"}, wantOut: "0\n"},
		{name: "default cwd is /", req: tartarus.ExecRequest{Cmd: []string{"pwd"}}, wantOut: "/\n"},
		{name: "killed by signal", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "kill -9 $$"}}, wantExit: 137},
		{name: "large output", req: tartarus.ExecRequest{Cmd: []string{"sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef; i=$((i+1)); done"}},
			wantOut: strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", 2000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			req := tt.req
			req.Stdout, req.Stderr = &out, &errb
			if tt.stdin != "" {
				req.Stdin = strings.NewReader(tt.stdin)
			}
			res, err := rt.Exec(ctxT(t), id, &req)
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if res.ExitCode != tt.wantExit || out.String() != tt.wantOut || errb.String() != tt.wantErr {
				t.Errorf("exit %d stdout %q stderr %q; want %d %q %q",
					res.ExitCode, trunc(out.String()), errb.String(), tt.wantExit, trunc(tt.wantOut), tt.wantErr)
			}
			if res.TimedOut {
				t.Errorf("TimedOut set without a timeout")
			}
		})
	}
}

func testPause(t *testing.T, rt tartarus.Runtime, id string, can bool) {
	if !can {
		if err := rt.Pause(ctxT(t), id); !errors.Is(err, tartarus.ErrNotImplemented) {
			t.Errorf("Pause with Capabilities.Pause=false: %v, want ErrNotImplemented", err)
		}
		if err := rt.Resume(ctxT(t), id); !errors.Is(err, tartarus.ErrNotImplemented) {
			t.Errorf("Resume with Capabilities.Pause=false: %v, want ErrNotImplemented", err)
		}
		return
	}
	// A command running across the pause continues after Resume.
	out := &readyWriter{ready: make(chan struct{})}
	done := make(chan string, 1)
	go func() {
		res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo up; read x; echo after $x"},
			Stdin: &gatedReader{gate: out.ready, data: "resumed\n", wait: 500 * time.Millisecond}, Stdout: out})
		if err != nil {
			done <- err.Error()
			return
		}
		done <- fmt.Sprintf("%d %s", res.ExitCode, out.String())
	}()
	waitReady(t, out)
	if err := rt.Pause(ctxT(t), id); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := rt.Pause(ctxT(t), id); err != nil {
		t.Errorf("second Pause: %v, want nil (idempotent)", err)
	}
	if in := find(t, rt, id); in == nil || in.State != tartarus.InstancePaused {
		t.Errorf("List while paused: %+v, want state paused", in)
	}
	_, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"true"}})
	if !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Exec while paused: %v, want ErrFailedPrecondition", err)
	}
	if err := rt.Resume(ctxT(t), id); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if err := rt.Resume(ctxT(t), id); err != nil {
		t.Errorf("second Resume: %v, want nil (idempotent)", err)
	}
	select {
	case got := <-done:
		if got != "0 up\nafter resumed\n" {
			t.Errorf("command across pause: %q", got)
		}
	case <-time.After(callTimeout):
		t.Fatal("command did not finish after Resume")
	}
	res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"true"}})
	if err != nil || res.ExitCode != 0 {
		t.Errorf("Exec after Resume: %v %+v", err, res)
	}
}

func testFiles(t *testing.T, rt tartarus.Runtime, id string, can bool) {
	if !can {
		if _, err := rt.ReadFile(ctxT(t), id, "/etc/hostname"); !errors.Is(err, tartarus.ErrNotImplemented) {
			t.Errorf("ReadFile with Capabilities.Files=false: %v, want ErrNotImplemented", err)
		}
		if err := rt.WriteFile(ctxT(t), id, "/tmp/x", 0o644, strings.NewReader("x")); !errors.Is(err, tartarus.ErrNotImplemented) {
			t.Errorf("WriteFile with Capabilities.Files=false: %v, want ErrNotImplemented", err)
		}
		if _, err := rt.ListFiles(ctxT(t), id, "/tmp"); !errors.Is(err, tartarus.ErrNotImplemented) {
			t.Errorf("ListFiles with Capabilities.Files=false: %v, want ErrNotImplemented", err)
		}
		return
	}
	big := make([]byte, 8<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	const dir = "/tmp/tt-conformance/sub"
	if err := rt.WriteFile(ctxT(t), id, dir+"/big.bin", 0o640, bytes.NewReader(big)); err != nil {
		t.Fatalf("WriteFile 8 MiB: %v", err)
	}
	if err := rt.WriteFile(ctxT(t), id, dir+"/small.txt", 0o644, strings.NewReader("first")); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if err := rt.WriteFile(ctxT(t), id, dir+"/small.txt", 0o644, strings.NewReader("second")); err != nil {
		t.Fatalf("WriteFile replacing: %v", err)
	}
	for _, c := range []struct {
		path string
		want []byte
	}{{dir + "/big.bin", big}, {dir + "/small.txt", []byte("second")}} {
		rc, err := rt.ReadFile(ctxT(t), id, c.path)
		if err != nil {
			t.Fatalf("ReadFile %s: %v", c.path, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("ReadFile %s: %d bytes (err %v), want %d byte-exact", c.path, len(got), err, len(c.want))
		}
	}
	infos, err := rt.ListFiles(ctxT(t), id, dir)
	if err != nil {
		t.Fatalf("ListFiles: %v", err)
	}
	got := map[string]tartarus.FileInfo{}
	for _, fi := range infos {
		got[fi.Name] = fi
	}
	if fi, ok := got["big.bin"]; !ok || fi.Size != int64(len(big)) || fi.IsDir || fi.Mode.Perm() != 0o640 {
		t.Errorf("ListFiles big.bin: %+v (present %v), want size %d mode 0640", fi, ok, len(big))
	}
	if fi, ok := got["small.txt"]; !ok || fi.Size != 6 {
		t.Errorf("ListFiles small.txt: %+v (present %v)", fi, ok)
	}
	if len(got) != 2 {
		t.Errorf("ListFiles: %d entries, want 2", len(got))
	}
	parent, err := rt.ListFiles(ctxT(t), id, "/tmp/tt-conformance")
	if err != nil || len(parent) != 1 || !parent[0].IsDir || parent[0].Name != "sub" {
		t.Errorf("ListFiles parent: %+v %v, want one directory 'sub'", parent, err)
	}
	if _, err := rt.ReadFile(ctxT(t), id, "/tmp/tt-conformance/missing"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("ReadFile missing: %v, want ErrNotFound", err)
	}
	if _, err := rt.ListFiles(ctxT(t), id, "/tmp/tt-conformance/missing"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("ListFiles missing: %v, want ErrNotFound", err)
	}
}

// startBackground runs a long command, waits until it prints its pid, then
// lets body act; it returns the pid the command reported.
func startBackground(t *testing.T, rt tartarus.Runtime, id string, body func(ctx context.Context, ready func())) int {
	t.Helper()
	ctx, cancel := context.WithCancel(ctxT(t))
	out := &readyWriter{ready: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := rt.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo $$; exec sleep 60"}, Stdout: out})
		done <- err
	}()
	waitReady(t, out)
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("pid output %q: %v", out.String(), err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(callTimeout):
		t.Fatal("Exec did not return after its context was cancelled")
	}
	return pid
}

// assertDead checks with another Exec that pid no longer runs.
func assertDead(t *testing.T, rt tartarus.Runtime, id string, pid int) {
	t.Helper()
	// The kill is asynchronous in a guest; allow it a moment.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"kill", "-0", strconv.Itoa(pid)}})
		if err != nil {
			t.Fatalf("Exec kill -0: %v", err)
		}
		if res.ExitCode != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after its Exec's context was cancelled", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func assertGone(t *testing.T, rt tartarus.Runtime, id string) {
	t.Helper()
	if in := find(t, rt, id); in != nil {
		t.Errorf("List still has %s: %+v", id, in)
	}
}

func find(t *testing.T, rt tartarus.Runtime, id string) *tartarus.Instance {
	t.Helper()
	list, err := rt.List(ctxT(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	return nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("rt-%x", b)
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + fmt.Sprintf("…(%d bytes)", len(s))
	}
	return s
}

// readyWriter collects output and closes ready on the first write.
type readyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.once.Do(func() { close(w.ready) })
	return len(p), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func waitReady(t *testing.T, w *readyWriter) {
	t.Helper()
	select {
	case <-w.ready:
	case <-time.After(callTimeout):
		t.Fatal("command printed nothing")
	}
}

// gatedReader yields data only after gate is closed and wait has passed,
// so the command blocks reading stdin while the test pauses the sandbox.
type gatedReader struct {
	gate <-chan struct{}
	wait time.Duration
	data string
	done bool
}

func (r *gatedReader) Read(p []byte) (int, error) {
	if r.done {
		return 0, io.EOF
	}
	<-r.gate
	time.Sleep(r.wait)
	r.done = true
	return copy(p, r.data), nil
}
