// Package agent is the guest side of the Tartarus guest protocol: it serves
// one host session at a time over a byte stream (the VM's virtio-serial
// port, or a unix socket in tests), running commands, moving files,
// reporting stats and taking the host's clock and entropy.
//
// An Agent outlives sessions: the process groups it started, its activity
// record and its CPU sampler carry over when the host reconnects (after a
// host restart or a snapshot restore).
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// Version is the agent's protocol and build version, reported in Info.
const Version = "0.1.0"

// Options configure an Agent. The zero value is safe anywhere: it changes
// nothing on the machine beyond running what it is asked to run.
type Options struct {
	Logger *slog.Logger
	// Clock decides exec timeouts, output linger, CPU sampling and
	// activity times; nil means clock.System.
	Clock clock.Clock
	// SetClock lets OpSync set CLOCK_REALTIME. Only for PID 1 in a VM.
	SetClock bool
	// SeedRNG lets OpSync mix the host's bytes into the kernel RNG with
	// credit (RNDADDENTROPY) and force a reseed (RNDRESEEDCRNG).
	SeedRNG bool
	// SetHostname lets OpSync set the hostname. Only for PID 1 in a VM.
	SetHostname bool
	// Reaper, when set, collects the exit statuses of every child (the
	// agent is PID 1 or a subreaper). Otherwise each exec waits for its
	// own pid.
	Reaper *Reaper
	// BootError is reported in Info when the guest did not boot fully.
	BootError string
	// OnSync, when set, runs on every OpSync (the host sends one after
	// boot and after every restore); the init checks the guest's network
	// configuration with it. Its error fails the sync.
	OnSync func() error
	// SampleInterval is how often CPU use is sampled for Stats and
	// activity; zero means 2 s.
	SampleInterval time.Duration
	// ExecLinger is how long an exec's result waits, after its process
	// exited, for output still held open by processes it left behind;
	// zero means 250 ms. Later output of those processes is discarded.
	ExecLinger time.Duration
}

// Agent serves host sessions. Create it with New and Close it when done.
type Agent struct {
	opts  Options
	log   *slog.Logger
	clock clock.Clock
	procs starter

	groups   *groupSet
	bg       *procTable
	activity *activity
	cpu      *cpuSampler

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// New starts an agent's background sampler.
func New(opts Options) *Agent {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	if opts.SampleInterval <= 0 {
		opts.SampleInterval = 2 * time.Second
	}
	if opts.ExecLinger <= 0 {
		opts.ExecLinger = 250 * time.Millisecond
	}
	a := &Agent{
		opts:     opts,
		log:      opts.Logger,
		clock:    opts.Clock,
		groups:   newGroupSet(),
		bg:       newProcTable(),
		activity: &activity{},
		cpu:      &cpuSampler{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if opts.Reaper != nil {
		a.procs = opts.Reaper
	} else {
		a.procs = pidWaiter{}
	}
	a.activity.touch(a.clock.Now())
	go a.sampleLoop()
	return a
}

// Close stops the sampler. Processes the agent started keep running.
func (a *Agent) Close() error {
	a.once.Do(func() { close(a.stop) })
	<-a.done
	return nil
}

// Serve runs one session on conn with a fresh Agent; see Agent.Serve.
func Serve(ctx context.Context, conn io.ReadWriteCloser, opts Options) error {
	a := New(opts)
	defer a.Close()
	return a.Serve(ctx, conn)
}

// ErrStaleSession is what Serve returns when the session ended because the
// other end stopped speaking yamux (a new host is handshaking with a session
// left over from before a snapshot restore) and conn cannot interrupt a
// read, so Serve cannot start the new session on it itself. Serve again at
// once.
var ErrStaleSession = errors.New("agent: stale session replaced by a new host")

type rwc struct {
	io.Reader
	io.Writer
	io.Closer
}

// readInterrupter is a conn whose blocked reads can be ended without
// closing it: the virtio port (a pollable file) and sockets.
type readInterrupter interface {
	SetReadDeadline(time.Time) error
}

// interrupt is the Close yamux sees when Serve keeps the conn: it ends a
// read in progress, so the session's receiver stops, and leaves conn open.
type interrupt struct{ readInterrupter }

func (i interrupt) Close() error { return i.SetReadDeadline(time.Now()) }

// lastRead remembers the bytes of the latest Read: when a stale session
// fails on a new host's HELLO, they hold it, and the next handshake starts
// from them instead of waiting for the host to repeat it. It keeps the
// reader's own slice, not a copy: once the session has failed, nothing
// reads into that buffer again.
type lastRead struct {
	r    io.Reader
	last []byte
}

func (l *lastRead) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.last = p[:n]
	return n, err
}

// Serve handshakes with the host on conn and serves its RPCs until the host
// goes away, conn fails, or ctx ends. It closes conn. A session that ends
// because the peer left returns nil. When a new host's handshake breaks the
// session (after a snapshot restore, the guest is mid-session with a host
// that no longer exists), Serve answers that handshake on the same conn at
// once; a conn that cannot interrupt reads makes it return ErrStaleSession
// instead.
func (a *Agent) Serve(ctx context.Context, conn io.ReadWriteCloser) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	ri, _ := conn.(readInterrupter)
	var replay []byte
	for {
		tail, err := a.serveSession(ctx, conn, ri, replay)
		if !errors.Is(err, ErrStaleSession) || ri == nil || ctx.Err() != nil {
			return err
		}
		if err := ri.SetReadDeadline(time.Time{}); err != nil {
			return fmt.Errorf("reuse the port: %w", err)
		}
		replay = tail
	}
}

// serveSession runs one session on conn, its handshake reading replay
// first. A stale session returns ErrStaleSession and the bytes it last read.
func (a *Agent) serveSession(ctx context.Context, conn io.ReadWriteCloser, ri readInterrupter, replay []byte) ([]byte, error) {
	in := &lastRead{r: conn}
	var src io.Reader = in
	if len(replay) > 0 {
		src = io.MultiReader(bytes.NewReader(replay), in)
	}
	r, err := proto.ServerHandshake(rwc{src, conn, conn})
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var closer io.Closer = conn
	if ri != nil {
		closer = interrupt{ri} // Serve closes conn when it is done with it
	}
	sess, err := yamux.Server(rwc{r, conn, closer}, proto.YamuxConfig(a.log, proto.GuestWindow))
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	defer sess.Close()
	a.log.Info("host session started")
	s := &session{a: a, execs: map[string]*execState{}}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			a.log.Info("host session ended", "reason", err)
			s.closeAll()
			if errors.Is(err, yamux.ErrInvalidVersion) || errors.Is(err, yamux.ErrInvalidMsgType) {
				// Not yamux: a new host's handshake reached a stale
				// session (after a snapshot restore).
				sess.Close() // its receiver has stopped: last is final
				return in.last, ErrStaleSession
			}
			return nil, nil
		}
		go s.handle(ctx, st)
	}
}

// session is the state of one host session: the execs it may cancel.
type session struct {
	a     *Agent
	mu    sync.Mutex
	execs map[string]*execState
}

func (s *session) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.execs {
		e.kill()
	}
}

// handle runs one RPC. Every path ends with one result or error frame.
func (s *session) handle(ctx context.Context, st *yamux.Stream) {
	defer st.Close()
	fr := proto.NewFrameReader(st)
	fw := proto.NewFrameWriter(st)
	defer func() {
		// A bug in one RPC must not take down PID 1 (and the kernel).
		if v := recover(); v != nil {
			s.a.log.Error("rpc panicked", "panic", v, "stack", string(debug.Stack()))
			_ = fw.WriteJSON(proto.FrameError, &proto.Error{Code: proto.CodeInternal, Message: fmt.Sprintf("agent panic: %v", v)})
		}
	}()
	t, p, err := fr.Next()
	if err != nil {
		return
	}
	if t != proto.FrameRequest {
		_ = fw.WriteJSON(proto.FrameError, &proto.Error{Code: proto.CodeInvalid, Message: "first frame is " + t.String() + ", want request"})
		return
	}
	req, err := proto.DecodeRequest(p)
	if err != nil {
		_ = fw.WriteJSON(proto.FrameError, proto.ErrorFrom(err))
		return
	}
	a := s.a
	var res any
	switch req.Op {
	case proto.OpPing:
		res = struct{}{}
	case proto.OpSync:
		res, err = a.sync(req.Sync)
	case proto.OpExec:
		s.exec(ctx, st, fr, fw, req.Exec)
		return
	case proto.OpCancel:
		res, err = s.cancel(req.ExecID)
	case proto.OpSignal:
		res = &proto.SignalResult{Groups: a.groups.signal(signalOf(req.Signal))}
	case proto.OpSignalProcesses:
		res, err = signalDescendants(signalOf(req.Signal))
	case proto.OpReadFile:
		res, err = a.readFile(st, fw, req.Path)
	case proto.OpWriteFile:
		res, err = a.writeFile(fr, req.Path, req.Mode)
	case proto.OpListFiles:
		res, err = a.listFiles(fw, req.Path, listDepth(req))
	case proto.OpStats:
		res, err = a.stats()
	case proto.OpPTY:
		s.pty(ctx, st, fr, fw, req)
		return
	case proto.OpProcAttach:
		a.procAttach(st, fw, req.Proc)
		return
	case proto.OpWatch:
		a.watch(st, fw, req)
		return
	default:
		res, err = a.handleInteractive(req)
	}
	if err != nil {
		a.log.Debug("rpc failed", "op", req.Op, "err", err)
		_ = fw.WriteJSON(proto.FrameError, proto.ErrorFrom(err))
		if req.Op == proto.OpWriteFile {
			// Answer first, so the host stops sending, then take what
			// it sent meanwhile.
			drain(fr)
		}
		return
	}
	_ = fw.WriteJSON(proto.FrameResult, res)
}

func (a *Agent) sampleLoop() {
	defer close(a.done)
	t := a.clock.NewTicker(a.opts.SampleInterval)
	defer t.Stop()
	a.cpu.sample(a.clock.Now())
	for {
		select {
		case <-a.stop:
			return
		case <-t.C():
		}
		a.sampleOnce()
	}
}

// sampleOnce measures CPU use since the last sample; a busy window counts
// as activity.
func (a *Agent) sampleOnce() {
	now := a.clock.Now()
	if pct, ok := a.cpu.sample(now); ok && pct > activeCPUPercent {
		a.activity.touch(now)
	}
	a.groups.prune()
}
