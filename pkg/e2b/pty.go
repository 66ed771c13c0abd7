package e2b

import (
	"context"
	"strconv"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/client/terminal"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// E2B addresses a terminal by pid in separate calls (start, input,
// resize, signal, reconnect); Tartarus's terminal is one WebSocket. The
// handler therefore holds each terminal's WebSocket open from Start until
// the command exits or is killed, and names it with a pid of its own from
// ptyPidBase up, above any Linux pid (pid_max is at most 2^22), so that it
// never collides with a background process's.

const ptyPidBase = 1 << 30

// maxPTYsPerSandbox bounds the terminals the handler holds for one sandbox.
const maxPTYsPerSandbox = 64

type ptyTable struct {
	mu   sync.Mutex
	next uint32
	byID map[string]map[uint32]*ptySession
}

type ptySession struct {
	pid     uint32
	sandbox string
	token   string
	cmd     processConfig
	pty     *terminal.PTY
	cancel  context.CancelFunc

	mu    sync.Mutex
	subs  map[chan []byte]struct{}
	done  chan struct{}
	exit  int
	ended bool
}

func (t *ptyTable) add(s *ptySession) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.byID[s.sandbox]
	if m == nil {
		m = map[uint32]*ptySession{}
		t.byID[s.sandbox] = m
	}
	if len(m) >= maxPTYsPerSandbox {
		return &rpcError{Code: "resource_exhausted", Message: "at most " + strconv.Itoa(maxPTYsPerSandbox) + " terminals per sandbox"}
	}
	t.next++
	s.pid = ptyPidBase + t.next
	m[s.pid] = s
	return nil
}

func (t *ptyTable) remove(s *ptySession) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.byID[s.sandbox]; m != nil {
		delete(m, s.pid)
		if len(m) == 0 {
			delete(t.byID, s.sandbox)
		}
	}
}

// find returns the terminal sel names in the call's sandbox (nil when sel
// names none). A caller with another token than the one that opened it
// must be able to see the sandbox.
func (t *ptyTable) find(ctx context.Context, e *envdCall, token string, sel tartarus.ProcessSelector) (*ptySession, error) {
	if sel.Pid < ptyPidBase {
		return nil, nil
	}
	t.mu.Lock()
	s := t.byID[e.id][uint32(sel.Pid)]
	t.mu.Unlock()
	if s == nil {
		return nil, &rpcError{Code: "not_found", Message: "process " + strconv.Itoa(sel.Pid) + " not found"}
	}
	if token != s.token {
		if _, err := e.c.GetSandbox(ctx, e.id); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (t *ptyTable) list(id string) []processInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []processInfo
	for _, s := range t.byID[id] {
		out = append(out, processInfo{Pid: s.pid, Config: s.cmd})
	}
	return out
}

func (t *ptyTable) closeSandbox(id string) {
	t.mu.Lock()
	m := t.byID[id]
	t.mu.Unlock()
	for _, s := range m {
		s.hangup()
	}
}

func (t *ptyTable) closeAll() {
	t.mu.Lock()
	ids := make([]string, 0, len(t.byID))
	for id := range t.byID {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	for _, id := range ids {
		t.closeSandbox(id)
	}
}

// startPTY opens a terminal and streams it to s until the command exits
// or the client leaves (the terminal then stays open for Connect).
func (e *envdCall) startPTY(ctx context.Context, token string, in *startRequest, s *stream) error {
	opts := &terminal.PTYOptions{Cmd: append([]string{in.Process.Cmd}, in.Process.Args...), Env: in.Process.Envs, Cols: 80, Rows: 24}
	if in.Process.Cwd != nil {
		opts.Cwd = e.abs(*in.Process.Cwd)
	}
	if sz := in.Pty.Size; sz != nil && sz.Cols > 0 && sz.Rows > 0 {
		opts.Cols, opts.Rows = int(sz.Cols), int(sz.Rows)
	}
	// The terminal outlives this call: its WebSocket has a context of its
	// own, ended by hangup.
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p, err := terminal.Open(life, e.c, e.id, opts)
	if err != nil {
		cancel()
		return err
	}
	sess := &ptySession{sandbox: e.id, token: token, cmd: *in.Process, pty: p, cancel: cancel,
		subs: map[chan []byte]struct{}{}, done: make(chan struct{})}
	if err := e.h.ptys.add(sess); err != nil {
		_ = p.Close()
		cancel()
		return err
	}
	sub := sess.subscribe()
	go sess.pump(&e.h.ptys)
	if err := s.send(processEvent("start", map[string]uint32{"pid": sess.pid})); err != nil {
		sess.unsubscribe(sub)
		return err
	}
	return sess.stream(ctx, e.h, sub, s)
}

// pump reads the terminal's output and hands it to the subscribers until
// the command exits.
func (s *ptySession) pump(t *ptyTable) {
	defer t.remove(s)
	defer s.cancel()
	buf := make([]byte, 32<<10)
	for {
		n, err := s.pty.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			s.mu.Lock()
			for ch := range s.subs {
				select {
				case ch <- data:
				default: // a subscriber that does not keep up is cut off
					delete(s.subs, ch)
					close(ch)
				}
			}
			s.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	code, ok := s.pty.ExitCode()
	if !ok {
		code = -1
	}
	s.mu.Lock()
	s.exit, s.ended = code, true
	for ch := range s.subs {
		close(ch)
	}
	s.subs = nil
	s.mu.Unlock()
	close(s.done)
}

func (s *ptySession) subscribe() chan []byte {
	ch := make(chan []byte, 256)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		close(ch)
		return ch
	}
	s.subs[ch] = struct{}{}
	return ch
}

func (s *ptySession) unsubscribe(ch chan []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[ch]; ok {
		delete(s.subs, ch)
		close(ch)
	}
}

// stream sends the terminal's output from sub to st, then its end.
func (s *ptySession) stream(ctx context.Context, h *Handler, sub chan []byte, st *stream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go h.keepalive(ctx, cancel, st)
	for {
		select {
		case <-ctx.Done():
			s.unsubscribe(sub)
			return ctx.Err()
		case data, ok := <-sub:
			if !ok {
				s.mu.Lock()
				ended, code := s.ended, s.exit
				s.mu.Unlock()
				if !ended {
					return &rpcError{Code: "resource_exhausted", Message: "terminal output was not read fast enough"}
				}
				end := map[string]any{"exitCode": code, "exited": true, "status": "exit status " + strconv.Itoa(code)}
				return st.send(processEvent("end", end))
			}
			if err := st.send(processEvent("data", map[string][]byte{"pty": data})); err != nil {
				s.unsubscribe(sub)
				return err
			}
		}
	}
}

// follow is Connect on a terminal: its output from now on.
func (s *ptySession) follow(ctx context.Context, h *Handler, st *stream) error {
	sub := s.subscribe()
	if err := st.send(processEvent("start", map[string]uint32{"pid": s.pid})); err != nil {
		s.unsubscribe(sub)
		return err
	}
	return s.stream(ctx, h, sub, st)
}

// hangup closes the terminal.
func (s *ptySession) hangup() {
	_ = s.pty.Close()
	s.cancel()
}
