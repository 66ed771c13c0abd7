package agent

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Bounds on background processes: the guest keeps them across host
// sessions, so what they hold must not grow without end.
const (
	maxBackground = 128      // processes, running or exited but kept
	ringBytes     = 64 << 10 // recent output kept per process
	attachQueue   = 256      // chunks queued for a slow attached host
)

// procTable is the background processes, by pid.
type procTable struct {
	mu    sync.Mutex
	procs map[int]*bgProc
}

func newProcTable() *procTable { return &procTable{procs: map[int]*bgProc{}} }

// chunk is one piece of a process's output.
type chunk struct {
	t    proto.FrameType
	data []byte
}

// bgProc is one background process.
type bgProc struct {
	info  proto.ProcInfo
	stdin *os.File // nil without stdin, or once closed

	mu     sync.Mutex
	ring   []chunk
	ringN  int
	subs   map[chan chunk]struct{}
	done   chan struct{}
	result proto.ExecResult
}

// find returns the process named by pid or tag; with both, they must agree.
func (t *procTable) find(r *proto.ProcRequest) (*bgProc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.Pid > 0 {
		p := t.procs[r.Pid]
		if p == nil || (r.Tag != "" && p.info.Tag != r.Tag) {
			return nil, tartarus.Errorf(tartarus.ErrNotFound, "no background process %d", r.Pid)
		}
		return p, nil
	}
	var found *bgProc
	for _, p := range t.procs {
		// The newest running process with the tag wins.
		if p.info.Tag == r.Tag && (found == nil || better(p, found)) {
			found = p
		}
	}
	if found == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "no background process tagged %q", r.Tag)
	}
	return found, nil
}

func better(p, q *bgProc) bool {
	if p.exited() != q.exited() {
		return !p.exited()
	}
	return p.info.StartedAt.After(q.info.StartedAt)
}

func (p *bgProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// room makes space for one more process by forgetting the oldest exited
// one; it fails when every kept process still runs.
func (t *procTable) room() error {
	if len(t.procs) < maxBackground {
		return nil
	}
	var oldest *bgProc
	for _, p := range t.procs {
		if p.exited() && (oldest == nil || p.info.StartedAt.Before(oldest.info.StartedAt)) {
			oldest = p
		}
	}
	if oldest == nil {
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "%d background processes already run", maxBackground)
	}
	delete(t.procs, oldest.info.Pid)
	return nil
}

func (t *procTable) list() []proto.ProcInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]proto.ProcInfo, 0, len(t.procs))
	for _, p := range t.procs {
		out = append(out, p.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pid < out[j].Pid })
	return out
}

func (p *bgProc) snapshot() proto.ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := p.info
	if p.exited() {
		info.Exited, info.ExitCode = true, p.result.ExitCode
	}
	return info
}

// emit records output in the ring and hands it to attached hosts. A host
// that falls attachQueue chunks behind is cut off (its stream ends with an
// error), so a slow host never blocks the process.
func (p *bgProc) emit(t proto.FrameType, b []byte) {
	c := chunk{t: t, data: append([]byte(nil), b...)}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ring = append(p.ring, c)
	p.ringN += len(c.data)
	for p.ringN > ringBytes && len(p.ring) > 1 {
		p.ringN -= len(p.ring[0].data)
		p.ring = p.ring[1:]
	}
	for ch := range p.subs {
		select {
		case ch <- c:
		default:
			delete(p.subs, ch)
			close(ch)
		}
	}
}

// attach subscribes to output; replay is the ring's content at that moment.
func (p *bgProc) attach() (ch chan chunk, replay []chunk) {
	ch = make(chan chunk, attachQueue)
	p.mu.Lock()
	defer p.mu.Unlock()
	replay = append([]chunk(nil), p.ring...)
	if p.subs == nil {
		p.subs = map[chan chunk]struct{}{}
	}
	p.subs[ch] = struct{}{}
	return ch, replay
}

func (p *bgProc) detach(ch chan chunk) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.subs[ch]; ok {
		delete(p.subs, ch)
		close(ch)
	}
}

// procStart starts a background process.
func (a *Agent) procStart(req *proto.Request) (any, error) {
	a.activity.touch(a.clock.Now())
	var opts proto.ProcRequest
	if req.Proc != nil {
		opts = *req.Proc
	}
	cmd, code, msg, err := command(req.Exec)
	if err != nil {
		return nil, err
	}
	if cmd == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "%s (exit code %d)", msg[:len(msg)-1], code)
	}
	a.bg.mu.Lock()
	err = a.bg.room()
	a.bg.mu.Unlock()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr.Setpgid = true
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	var stdinR, stdinW *os.File
	if opts.Stdin {
		if stdinR, stdinW, err = os.Pipe(); err != nil {
			for _, f := range []*os.File{outR, outW, errR, errW} {
				f.Close()
			}
			return nil, err
		}
		cmd.Stdin = stdinR
	}
	wait, err := a.procs.start(cmd)
	outW.Close()
	errW.Close()
	if stdinR != nil {
		stdinR.Close()
	}
	if err != nil {
		outR.Close()
		errR.Close()
		if stdinW != nil {
			stdinW.Close()
		}
		return nil, err
	}
	pid := cmd.Process.Pid
	a.groups.add(pid)
	p := &bgProc{
		info: proto.ProcInfo{Pid: pid, Tag: opts.Tag, Cmd: req.Exec.Cmd, Cwd: cmd.Dir,
			StartedAt: a.clock.Now().UTC()},
		stdin: stdinW,
		done:  make(chan struct{}),
	}
	a.bg.mu.Lock()
	a.bg.procs[pid] = p
	a.bg.mu.Unlock()
	var pumps sync.WaitGroup
	for _, f := range []struct {
		r *os.File
		t proto.FrameType
	}{{outR, proto.FrameStdout}, {errR, proto.FrameStderr}} {
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			defer f.r.Close()
			buf := make([]byte, outputChunk)
			for {
				n, err := f.r.Read(buf)
				if n > 0 {
					p.emit(f.t, buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	}
	go func() {
		started := a.clock.Now()
		ws := wait()
		// What the process wrote before it exited is in the pipes; its
		// own children may hold them open, so do not wait for ever.
		drained := make(chan struct{})
		go func() { pumps.Wait(); close(drained) }()
		expired := make(chan struct{})
		t := a.clock.AfterFunc(a.opts.ExecLinger, func() { close(expired) })
		select {
		case <-drained:
		case <-expired:
		}
		t.Stop()
		res := proto.ExecResult{DurationNS: int64(a.clock.Now().Sub(started))}
		switch {
		case ws.Exited():
			res.ExitCode = ws.ExitStatus()
		case ws.Signaled():
			res.ExitCode = 128 + int(ws.Signal())
			res.Signal = unix.SignalName(ws.Signal())
		}
		p.mu.Lock()
		p.result = res
		if p.stdin != nil {
			p.stdin.Close()
			p.stdin = nil
		}
		for ch := range p.subs {
			close(ch)
		}
		p.subs = nil
		close(p.done)
		p.mu.Unlock()
		a.activity.touch(a.clock.Now())
	}()
	a.log.Debug("background process started", "pid", pid, "tag", opts.Tag)
	return p.snapshot(), nil
}

// procAttach streams a background process's output until it exits or the
// host closes the stream.
func (a *Agent) procAttach(st *yamux.Stream, fw *proto.FrameWriter, r *proto.ProcRequest) {
	p, err := a.bg.find(r)
	if err != nil {
		_ = fw.WriteJSON(proto.FrameError, proto.ErrorFrom(err))
		return
	}
	ch, replay := p.attach()
	defer p.detach(ch)
	hostGone := make(chan struct{})
	go func() {
		// The host sends nothing more; its end of the stream means detach.
		buf := make([]byte, 512)
		for {
			if _, err := st.Read(buf); err != nil {
				close(hostGone)
				_ = st.SetWriteDeadline(time.Unix(1, 0))
				return
			}
		}
	}()
	if r.Replay {
		for _, c := range replay {
			if fw.Write(c.t, c.data) != nil {
				return
			}
		}
	}
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				// Closed under p.mu, by an exit (which also closes done
				// before unlocking) or by an overflow.
				p.mu.Lock()
				exited, res := p.exited(), p.result
				p.mu.Unlock()
				if !exited {
					_ = fw.WriteJSON(proto.FrameError, &proto.Error{Code: proto.CodeUnavailable,
						Message: fmt.Sprintf("process %d: output overflowed %d queued chunks; attach again", p.info.Pid, attachQueue)})
					return
				}
				_ = fw.WriteJSON(proto.FrameResult, &res)
				return
			}
			if fw.Write(c.t, c.data) != nil {
				return
			}
		case <-hostGone:
			return
		case <-p.done:
			// Take what was queued before the exit, then the result.
		queued:
			for {
				select {
				case c, ok := <-ch:
					if !ok {
						break queued
					}
					if fw.Write(c.t, c.data) != nil {
						return
					}
				default:
					break queued
				}
			}
			p.mu.Lock()
			res := p.result
			p.mu.Unlock()
			_ = fw.WriteJSON(proto.FrameResult, &res)
			return
		}
	}
}

// procInput writes to a background process's stdin.
func (a *Agent) procInput(r *proto.ProcRequest) (any, error) {
	p, err := a.bg.find(r)
	if err != nil {
		return nil, err
	}
	a.activity.touch(a.clock.Now())
	p.mu.Lock()
	in := p.stdin
	p.mu.Unlock()
	if in == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "process %d has no open stdin", p.info.Pid)
	}
	if len(r.Data) > 0 {
		// A pipe takes 64 KiB without a reader; bound the wait for more.
		_ = in.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := in.Write(r.Data); err != nil {
			return nil, fmt.Errorf("write stdin of process %d: %w", p.info.Pid, err)
		}
	}
	if r.CloseStdin {
		p.mu.Lock()
		if p.stdin != nil {
			p.stdin.Close()
			p.stdin = nil
		}
		p.mu.Unlock()
	}
	return struct{}{}, nil
}

// procSignal signals a background process's group.
func (a *Agent) procSignal(r *proto.ProcRequest, sig int) (any, error) {
	p, err := a.bg.find(r)
	if err != nil {
		return nil, err
	}
	if p.exited() {
		return struct{}{}, nil // already over: signalling is idempotent
	}
	if err := unix.Kill(-p.info.Pid, signalOf(sig)); err != nil && !errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("signal process %d: %w", p.info.Pid, err)
	}
	return struct{}{}, nil
}

// handleInteractive runs the interactive ops that answer one result.
func (a *Agent) handleInteractive(req *proto.Request) (any, error) {
	switch req.Op {
	case proto.OpProcStart:
		return a.procStart(req)
	case proto.OpProcList:
		return &proto.ProcList{Processes: a.bg.list()}, nil
	case proto.OpProcInput:
		return a.procInput(req.Proc)
	case proto.OpProcSignal:
		return a.procSignal(req.Proc, req.Signal)
	case proto.OpStat:
		return a.stat(req.Path)
	case proto.OpMkdir:
		return a.mkdir(req.Path, req.File != nil && req.File.Parents)
	case proto.OpMove:
		return a.move(req.Path, req.File.Dest)
	case proto.OpRemove:
		return a.remove(req.Path, req.File != nil && req.File.Recursive)
	}
	return nil, &proto.Error{Code: proto.CodeNotImplemented, Message: fmt.Sprintf("unknown op %q", req.Op)}
}
