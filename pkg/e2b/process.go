package e2b

import (
	"context"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// process.Process, translated onto the native background processes
// (POST /v1/sandboxes/{id}/processes and its output, stdin and signal
// routes) and, for processes on a terminal, onto the native terminal
// WebSocket held open by this handler (pty.go).

// keepaliveEvery is how often a quiet stream sends a keepalive, so that
// proxies and the SDK's idle timers see it alive.
const keepaliveEvery = 30 * time.Second

type processConfig struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args"`
	Envs map[string]string `json:"envs"`
	Cwd  *string           `json:"cwd"`
}

type ptySize struct {
	Cols pbUint `json:"cols"`
	Rows pbUint `json:"rows"`
}

type ptyConfig struct {
	Size *ptySize `json:"size"`
}

type startRequest struct {
	Process *processConfig `json:"process"`
	Pty     *ptyConfig     `json:"pty"`
	Tag     *string        `json:"tag"`
	Stdin   *bool          `json:"stdin"`
}

type selector struct {
	Pid *pbUint `json:"pid"`
	Tag *string `json:"tag"`
}

type connectRequest struct {
	Process *selector `json:"process"`
}

type processInput struct {
	Stdin []byte `json:"stdin"`
	Pty   []byte `json:"pty"`
}

type sendInputRequest struct {
	Process *selector     `json:"process"`
	Input   *processInput `json:"input"`
}

type sendSignalRequest struct {
	Process *selector `json:"process"`
	Signal  pbEnum    `json:"signal"`
}

type updateRequest struct {
	Process *selector  `json:"process"`
	Pty     *ptyConfig `json:"pty"`
}

// nativeSelector checks a selector and converts it.
func nativeSelector(s *selector) (tartarus.ProcessSelector, error) {
	switch {
	case s == nil:
		return tartarus.ProcessSelector{}, invalidf("process selector is required")
	case s.Pid != nil && *s.Pid > 0:
		return tartarus.ProcessSelector{Pid: int(*s.Pid)}, nil
	case s.Tag != nil && *s.Tag != "":
		return tartarus.ProcessSelector{Tag: *s.Tag}, nil
	}
	return tartarus.ProcessSelector{}, invalidf("process selector: give a pid or a tag")
}

// processEvent wraps one ProcessEvent as StartResponse and ConnectResponse
// do: {"event": {…}}.
func processEvent(kind string, v any) map[string]any {
	return map[string]any{"event": map[string]any{kind: v}}
}

// streamWriter sends what is written as data events of one output.
type streamWriter struct {
	s      *stream
	output string
}

func (sw streamWriter) Write(p []byte) (int, error) {
	if err := sw.s.send(processEvent("data", map[string][]byte{sw.output: p})); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (e *envdCall) start(ctx context.Context, token string, in *startRequest, s *stream) error {
	if in.Process == nil || in.Process.Cmd == "" {
		return invalidf("process.cmd is required")
	}
	if in.Pty != nil {
		return e.startPTY(ctx, token, in, s)
	}
	req := &api.ProcessStart{Cmd: append([]string{in.Process.Cmd}, in.Process.Args...), Env: in.Process.Envs,
		Stdin: in.Stdin == nil || *in.Stdin} // envd's default, for older SDKs, is an open stdin
	if in.Process.Cwd != nil {
		req.Cwd = e.abs(*in.Process.Cwd)
	}
	if in.Tag != nil {
		req.Tag = *in.Tag
	}
	p, err := e.c.StartProcess(ctx, e.id, req)
	if err != nil {
		return err
	}
	if err := s.send(processEvent("start", map[string]int{"pid": p.Pid})); err != nil {
		return err
	}
	// Replay: what it printed before the output stream attached.
	return e.follow(ctx, tartarus.ProcessSelector{Pid: p.Pid}, true, s)
}

// follow streams a background process's output and its end.
func (e *envdCall) follow(ctx context.Context, sel tartarus.ProcessSelector, replay bool, s *stream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go e.h.keepalive(ctx, cancel, s)
	res, err := e.c.AttachProcess(ctx, e.id, sel, replay, streamWriter{s, "stdout"}, streamWriter{s, "stderr"}, nil)
	if err != nil {
		return err
	}
	end := map[string]any{"exitCode": res.ExitCode, "exited": true, "status": "exit status " + strconv.Itoa(res.ExitCode)}
	if res.Signal != "" {
		end["exited"] = false
		end["status"] = "signal: " + res.Signal
		end["error"] = "signal: " + res.Signal
		if res.ExitCode == 0 {
			end["exitCode"] = -1
		}
	}
	return s.send(processEvent("end", end))
}

// keepalive sends a keepalive event every keepaliveEvery until ctx ends,
// cancelling when the client is gone.
func (h *Handler) keepalive(ctx context.Context, cancel context.CancelFunc, s *stream) {
	h.keepaliveWith(ctx, cancel, s, processEvent("keepalive", struct{}{}))
}

// keepaliveWith sends msg every keepaliveEvery until ctx ends.
func (h *Handler) keepaliveWith(ctx context.Context, cancel context.CancelFunc, s *stream, msg any) {
	t := h.cfg.Clock.NewTicker(keepaliveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			if s.send(msg) != nil {
				cancel()
				return
			}
		}
	}
}

func (e *envdCall) connectProcess(ctx context.Context, token string, in *connectRequest, s *stream) error {
	sel, err := nativeSelector(in.Process)
	if err != nil {
		return err
	}
	if sess, err := e.h.ptys.find(ctx, e, token, sel); sess != nil || err != nil {
		if err != nil {
			return err
		}
		return sess.follow(ctx, e.h, s)
	}
	if sel.Tag != "" {
		// The start event needs the pid.
		p, err := e.findProcess(ctx, sel)
		if err != nil {
			return err
		}
		sel = tartarus.ProcessSelector{Pid: p.Pid}
	}
	if err := s.send(processEvent("start", map[string]int{"pid": sel.Pid})); err != nil {
		return err
	}
	return e.follow(ctx, sel, false, s)
}

func (e *envdCall) findProcess(ctx context.Context, sel tartarus.ProcessSelector) (*tartarus.Process, error) {
	list, err := e.c.ListProcesses(ctx, e.id)
	if err != nil {
		return nil, err
	}
	for i := range list {
		p := &list[i]
		if (sel.Pid > 0 && p.Pid == sel.Pid) || (sel.Tag != "" && p.Tag == sel.Tag) {
			return p, nil
		}
	}
	return nil, &rpcError{Code: "not_found", Message: "process " + client.ProcessRef(sel) + " not found"}
}

type processInfo struct {
	Config processConfig `json:"config"`
	Pid    uint32        `json:"pid"`
	Tag    string        `json:"tag,omitempty"`
}

func (e *envdCall) listProcesses(ctx context.Context, _ *struct{}) (any, error) {
	list, err := e.c.ListProcesses(ctx, e.id)
	if err != nil {
		return nil, err
	}
	out := struct {
		Processes []processInfo `json:"processes"`
	}{Processes: []processInfo{}}
	for _, p := range list {
		if p.Exited || len(p.Cmd) == 0 {
			continue
		}
		info := processInfo{Pid: uint32(p.Pid), Tag: p.Tag, Config: processConfig{Cmd: p.Cmd[0], Args: p.Cmd[1:]}}
		if p.Cwd != "" {
			info.Config.Cwd = &p.Cwd
		}
		out.Processes = append(out.Processes, info)
	}
	out.Processes = append(out.Processes, e.h.ptys.list(e.id)...)
	return out, nil
}

func (e *envdCall) sendInput(ctx context.Context, token string, in *sendInputRequest) (any, error) {
	sel, err := nativeSelector(in.Process)
	if err != nil {
		return nil, err
	}
	if in.Input == nil {
		return nil, invalidf("input is required")
	}
	sess, err := e.h.ptys.find(ctx, e, token, sel)
	if err != nil {
		return nil, err
	}
	if sess != nil {
		data := in.Input.Pty
		if data == nil {
			data = in.Input.Stdin
		}
		if _, err := sess.pty.Write(data); err != nil {
			return nil, &rpcError{Code: "failed_precondition", Message: "terminal " + strconv.Itoa(int(sess.pid)) + ": " + err.Error()}
		}
		return struct{}{}, nil
	}
	if in.Input.Pty != nil {
		return nil, &rpcError{Code: "failed_precondition", Message: "process " + client.ProcessRef(sel) + " has no terminal"}
	}
	if err := e.c.ProcessInput(ctx, e.id, sel, in.Input.Stdin, false); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (e *envdCall) closeStdin(ctx context.Context, in *connectRequest) (any, error) {
	sel, err := nativeSelector(in.Process)
	if err != nil {
		return nil, err
	}
	if err := e.c.ProcessInput(ctx, e.id, sel, nil, true); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// signalNames maps envd's Signal enum (by name or number) onto signal
// names the native API takes.
var signalNames = map[pbEnum]string{
	"SIGNAL_SIGKILL": "KILL", "9": "KILL",
	"SIGNAL_SIGTERM": "TERM", "15": "TERM",
}

func (e *envdCall) sendSignal(ctx context.Context, token string, in *sendSignalRequest) (any, error) {
	sel, err := nativeSelector(in.Process)
	if err != nil {
		return nil, err
	}
	sig, ok := signalNames[in.Signal]
	if !ok {
		return nil, invalidf("signal " + strconv.Quote(string(in.Signal)) + ": want SIGNAL_SIGTERM or SIGNAL_SIGKILL")
	}
	sess, err := e.h.ptys.find(ctx, e, token, sel)
	if err != nil {
		return nil, err
	}
	if sess != nil {
		sess.hangup() // the terminal's shell and its children get SIGHUP
		return struct{}{}, nil
	}
	// The native API keeps exited processes listed (and signals them
	// without effect); envd knows only running ones.
	p, err := e.findProcess(ctx, sel)
	if err != nil {
		return nil, err
	}
	if p.Exited {
		return nil, &rpcError{Code: "not_found", Message: "process " + client.ProcessRef(sel) + " has exited"}
	}
	if err := e.c.SignalProcess(ctx, e.id, sel, sig); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (e *envdCall) update(ctx context.Context, token string, in *updateRequest) (any, error) {
	sel, err := nativeSelector(in.Process)
	if err != nil {
		return nil, err
	}
	if in.Pty == nil || in.Pty.Size == nil {
		return struct{}{}, nil
	}
	sess, err := e.h.ptys.find(ctx, e, token, sel)
	if err != nil {
		return nil, err
	}
	if sess == nil {
		return nil, &rpcError{Code: "not_found", Message: "no terminal " + client.ProcessRef(sel)}
	}
	if err := sess.pty.Resize(int(in.Pty.Size.Cols), int(in.Pty.Size.Rows)); err != nil {
		return nil, &rpcError{Code: "failed_precondition", Message: err.Error()}
	}
	return struct{}{}, nil
}
