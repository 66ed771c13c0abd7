package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// BaseEnv is the environment every exec starts from; the request's
// environment is laid over it.
var baseEnv = [...][2]string{
	{"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	{"HOME", "/root"},
	{"LANG", "C.UTF-8"},
	{"TERM", "xterm"},
}

// Exit codes a shell uses when it cannot run a command; the agent uses them
// too, with the shell's message on stderr, so callers handle one convention.
const (
	exitNotFound      = 127
	exitNotExecutable = 126
)

// outputChunk is the most an exec's output frame carries.
const outputChunk = 64 << 10

// execState is one running exec, for cancellation.
type execState struct {
	pgid     int
	mu       sync.Mutex
	killed   bool
	timedOut bool
}

// kill SIGKILLs the exec's process group.
func (e *execState) kill() {
	e.mu.Lock()
	e.killed = true
	e.mu.Unlock()
	_ = unix.Kill(-e.pgid, unix.SIGKILL)
}

func (e *execState) timeout() {
	e.mu.Lock()
	e.timedOut = true
	e.mu.Unlock()
	e.kill()
}

func (s *session) cancel(id string) (any, error) {
	s.mu.Lock()
	e := s.execs[id]
	s.mu.Unlock()
	if e == nil {
		// Already finished: cancelling is idempotent.
		return struct{}{}, nil
	}
	e.kill()
	return struct{}{}, nil
}

// buildEnv lays env over the base environment, sorted for determinism.
func buildEnv(env map[string]string) []string {
	m := make(map[string]string, len(baseEnv)+len(env))
	for _, kv := range baseEnv {
		m[kv[0]] = kv[1]
	}
	for k, v := range env {
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// lookPath finds name the way a shell does, in the exec's own PATH (not the
// agent's), and returns the exit code a shell would give when it cannot.
func lookPath(name, pathEnv string) (string, int, error) {
	if strings.Contains(name, "/") {
		err := checkExecutable(name)
		return name, shellCode(err), err
	}
	var firstErr error
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		err := checkExecutable(p)
		if err == nil {
			return p, 0, nil
		}
		if firstErr == nil && !errors.Is(err, fs.ErrNotExist) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", exitNotExecutable, firstErr
	}
	return "", exitNotFound, fs.ErrNotExist
}

// shellCode is the exit code a shell gives for a command it cannot run.
func shellCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, fs.ErrNotExist):
		return exitNotFound
	}
	return exitNotExecutable
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return syscall.EISDIR
	}
	if fi.Mode()&0o111 == 0 {
		return fs.ErrPermission
	}
	return nil
}

func shellMessage(name string, err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist) && !strings.Contains(name, "/"):
		return name + ": command not found"
	case errors.Is(err, fs.ErrNotExist):
		return name + ": No such file or directory"
	case errors.Is(err, syscall.EISDIR):
		return name + ": Is a directory"
	case errors.Is(err, fs.ErrPermission):
		return name + ": Permission denied"
	case errors.Is(err, syscall.ENOEXEC):
		return name + ": cannot execute: Exec format error"
	}
	return name + ": " + err.Error()
}

// exec runs one command for the host. It answers an ExecResult, or an
// Error when the command could not be started for a reason other than a
// missing or non-executable program.
func (s *session) exec(ctx context.Context, st *yamux.Stream, fr *proto.FrameReader, fw *proto.FrameWriter, req *proto.ExecRequest) {
	a := s.a
	started := a.clock.Now()
	a.activity.touch(started)
	defer func() { a.activity.touch(a.clock.Now()) }()
	fail := func(err error) { _ = fw.WriteJSON(proto.FrameError, proto.ErrorFrom(err)) }

	cmd, code, msg, err := command(req)
	if err != nil {
		fail(err)
		return
	}
	if cmd == nil {
		_ = fw.Write(proto.FrameStderr, []byte(msg))
		_ = fw.WriteJSON(proto.FrameResult, &proto.ExecResult{ExitCode: code, DurationNS: int64(a.clock.Now().Sub(started))})
		return
	}
	cmd.SysProcAttr.Setpgid = true
	outR, outW, err := os.Pipe()
	if err != nil {
		fail(err)
		return
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		fail(err)
		return
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	var stdinW *os.File
	if req.Stdin {
		var stdinR *os.File
		stdinR, stdinW, err = os.Pipe()
		if err != nil {
			for _, f := range []*os.File{outR, outW, errR, errW} {
				f.Close()
			}
			fail(err)
			return
		}
		cmd.Stdin = stdinR
	}
	wait, err := a.procs.start(cmd)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if errors.Is(err, syscall.ENOEXEC) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOENT) {
			// Not a program, or its interpreter is missing: answer as a
			// shell would.
			_ = fw.Write(proto.FrameStderr, []byte("tartarus-guest: "+shellMessage(req.Cmd[0], err)+"\n"))
			_ = fw.WriteJSON(proto.FrameResult, &proto.ExecResult{ExitCode: shellCode(err), DurationNS: int64(a.clock.Now().Sub(started))})
			if f, ok := cmd.Stdin.(*os.File); ok {
				f.Close()
				stdinW.Close()
			}
			return
		}
		if f, ok := cmd.Stdin.(*os.File); ok {
			f.Close()
			stdinW.Close()
		}
		fail(err)
		return
	}
	// Hold no copy of the child's stdin, so writes fail once it exits.
	if f, ok := cmd.Stdin.(*os.File); ok {
		f.Close()
	}
	pid := cmd.Process.Pid
	e := &execState{pgid: pid}
	a.groups.add(pid)
	if req.ID != "" {
		s.mu.Lock()
		s.execs[req.ID] = e
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.execs, req.ID)
			s.mu.Unlock()
		}()
	}
	a.log.Debug("exec started", "pid", pid, "cmd", req.Cmd[0])
	if req.TimeoutMS > 0 {
		t := a.clock.AfterFunc(time.Duration(req.TimeoutMS)*time.Millisecond, e.timeout)
		defer t.Stop()
	}

	out := &outputPumps{fw: fw}
	out.start(outR, proto.FrameStdout)
	out.start(errR, proto.FrameStderr)

	// Input: stdin frames, EOF, cancel; a stream that ends early means the
	// host gave up on this exec.
	finished := make(chan struct{})
	var closeStdin sync.Once
	closeIn := func() {
		if stdinW != nil {
			closeStdin.Do(func() { stdinW.Close() })
		}
	}
	go func() {
		for {
			t, p, err := fr.Next()
			if err != nil {
				select {
				case <-finished:
				default:
					// Nobody will read the output: kill, and fail the
					// pumps' pending writes instead of letting them wait
					// for window the host will never grant.
					e.kill()
					_ = st.SetWriteDeadline(time.Unix(1, 0))
				}
				closeIn()
				return
			}
			switch t {
			case proto.FrameStdin:
				if stdinW != nil {
					if _, err := stdinW.Write(p); err != nil {
						closeIn() // the child closed its stdin; drop the rest
					}
				}
			case proto.FrameEOF:
				closeIn()
			case proto.FrameCancel:
				e.kill()
			}
		}
	}()

	ws := wait()
	ended := a.clock.Now()
	closeIn()
	out.finish(a.clock, a.opts.ExecLinger)
	close(finished)

	res := &proto.ExecResult{DurationNS: int64(ended.Sub(started))}
	switch {
	case ws.Exited():
		res.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		res.ExitCode = 128 + int(ws.Signal())
		res.Signal = unix.SignalName(ws.Signal())
	}
	e.mu.Lock()
	res.TimedOut = e.timedOut
	e.mu.Unlock()
	if err := fw.WriteJSON(proto.FrameResult, res); err != nil {
		a.log.Debug("exec result not delivered", "pid", pid, "err", err)
	}
}

// outputPumps copies an exec's stdout and stderr pipes to frames.
//
// When the exec's process exits, everything it wrote is in the pipes, but
// processes it left in the background may hold the pipes open for ever. So
// after ExecLinger the pumps are detached as soon as both pipes are empty
// and neither pump holds data (or, at the latest, after lingerCap); from
// then on they discard what the background writes, so it never blocks or
// dies of SIGPIPE. Output of the exec's own process is never dropped unless
// the host takes longer than lingerCap to accept it.
type outputPumps struct {
	fw       *proto.FrameWriter
	pumps    []*pump
	wg       sync.WaitGroup
	mu       sync.Mutex // held while forwarding, so nothing follows detach
	detached bool
}

// pump is one pipe being copied.
type pump struct {
	r       *os.File
	t       proto.FrameType
	reading atomic.Bool // blocked in Read, holding no data
	done    atomic.Bool
}

// lingerCap bounds how long an exec's result waits for its output once its
// process has exited.
const lingerCap = 10 * time.Second

// lingerPoll is how often a lingering exec checks whether its pipes are empty.
const lingerPoll = 5 * time.Millisecond

func (o *outputPumps) start(r *os.File, t proto.FrameType) {
	p := &pump{r: r, t: t}
	o.pumps = append(o.pumps, p)
	o.wg.Add(1)
	go o.run(p)
}

func (o *outputPumps) run(p *pump) {
	defer o.wg.Done()
	defer p.done.Store(true)
	defer p.r.Close()
	buf := make([]byte, outputChunk)
	sendErr := false
	for {
		p.reading.Store(true)
		n, err := p.r.Read(buf)
		p.reading.Store(false)
		if n > 0 && !sendErr {
			o.mu.Lock()
			if !o.detached {
				if werr := o.fw.Write(p.t, buf[:n]); werr != nil {
					sendErr = true // host gone; keep draining so writers never block
				}
			}
			o.mu.Unlock()
		}
		if err != nil {
			return // EOF: every writer closed the pipe
		}
	}
}

// idle reports whether the pump has forwarded all the pipe holds.
func (p *pump) idle() bool {
	if p.done.Load() {
		return true
	}
	if !p.reading.Load() {
		return false
	}
	rc, err := p.r.SyscallConn()
	if err != nil {
		return true // closed: finished
	}
	pending := 0
	cerr := rc.Control(func(fd uintptr) {
		pending, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
	})
	if cerr != nil {
		return true
	}
	return err == nil && pending == 0 && p.reading.Load()
}

// finish waits, after the exec's process exited, until the pipes reach EOF
// or may be detached, then detaches.
func (o *outputPumps) finish(clk clock.Clock, linger time.Duration) {
	done := make(chan struct{})
	go func() { o.wg.Wait(); close(done) }()
	wait := func(d time.Duration) bool {
		expired := make(chan struct{})
		t := clk.AfterFunc(d, func() { close(expired) })
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-expired:
			return false
		}
	}
	if !wait(linger) {
		for elapsed := linger; elapsed < lingerCap; elapsed += lingerPoll {
			if o.allIdle() || wait(lingerPoll) {
				break
			}
		}
	}
	o.mu.Lock()
	o.detached = true
	o.mu.Unlock()
}

func (o *outputPumps) allIdle() bool {
	for _, p := range o.pumps {
		if !p.idle() {
			return false
		}
	}
	return true
}
