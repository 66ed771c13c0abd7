package olympus

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TimeoutSetter is the optional side interface of a Backend that changes a
// live sandbox's expiry (the single-node agent).
type TimeoutSetter interface {
	SetTimeout(ctx context.Context, id string, d time.Duration) (*tartarus.Sandbox, error)
}

// MetricsSource keeps sandboxes' resource use over time
// (hecatoncheir.Sampler).
type MetricsSource interface {
	SandboxMetrics(ctx context.Context, id string, since time.Time) ([]tartarus.MetricSample, error)
}

// Bounds of the interactive routes.
const (
	maxProcessInput = 1 << 20
	maxPTYMessage   = 64 << 10
	maxTimeoutS     = 30 * 24 * 3600
)

// interactiveRoutes mounts the terminal, process, file-management, watch,
// timeout and metrics routes.
func (s *Server) interactiveRoutes(v1 func(string, http.HandlerFunc)) {
	v1("GET /v1/sandboxes/{id}/pty", s.pty)
	v1("POST /v1/sandboxes/{id}/pty", s.pty)
	v1("POST /v1/sandboxes/{id}/processes", s.startProcess)
	v1("GET /v1/sandboxes/{id}/processes", s.listProcesses)
	v1("GET /v1/sandboxes/{id}/processes/{ref}/output", s.processOutput)
	v1("POST /v1/sandboxes/{id}/processes/{ref}/stdin", s.processInput)
	v1("POST /v1/sandboxes/{id}/processes/{ref}/signal", s.signalProcess)
	v1("GET /v1/sandboxes/{id}/files/stat", s.statFile)
	v1("POST /v1/sandboxes/{id}/files/mkdir", s.mkdir)
	v1("POST /v1/sandboxes/{id}/files/move", s.moveFile)
	v1("DELETE /v1/sandboxes/{id}/files", s.removeFile)
	v1("GET /v1/sandboxes/{id}/files/watch", s.watch)
	v1("POST /v1/sandboxes/{id}/timeout", s.setTimeout)
	v1("GET /v1/sandboxes/{id}/metrics", s.sandboxMetrics)
}

// ready finds the caller's sandbox for action and checks it can run
// commands or serve files.
func (s *Server) ready(r *http.Request, action cerberus.Action) (*tartarus.Sandbox, error) {
	sb, err := s.sandboxFor(r, action)
	if err != nil {
		return nil, err
	}
	return sb, s.usable(r, sb)
}

func checkCmd(cmd []string, env map[string]string) error {
	switch {
	case len(cmd) == 0 || cmd[0] == "":
		return tartarus.Errorf(tartarus.ErrInvalid, "cmd: must name a command")
	case len(cmd) > maxArgs:
		return tartarus.Errorf(tartarus.ErrInvalid, "cmd: at most %d arguments", maxArgs)
	case len(env) > tartarus.MaxEnvEntries:
		return tartarus.Errorf(tartarus.ErrInvalid, "env: at most %d entries", tartarus.MaxEnvEntries)
	}
	for _, a := range cmd {
		if strings.IndexByte(a, 0) >= 0 {
			return tartarus.Errorf(tartarus.ErrInvalid, "cmd: arguments must not contain NUL")
		}
	}
	return tartarus.ValidEnv(env)
}

func optionalPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return sandboxPath(p)
}

// pty serves a terminal over a WebSocket (see api.PTYMessage).
func (s *Server) pty(w http.ResponseWriter, r *http.Request) {
	terminals := func(s *Server) (tartarus.PTYStarter, error) { return backendAs[tartarus.PTYStarter](s, "terminals") }
	serve(s, w, r, s.ready, cerberus.ActionExecute, terminals, func(ctx context.Context, ps tartarus.PTYStarter, sb *tartarus.Sandbox) (int, any, error) {
		s.servePTY(ctx, w, r, ps, sb)
		return 0, nil, nil
	})
}

// servePTY runs the terminal once the caller is checked; from here on
// errors go to the client as messages on the socket.
func (s *Server) servePTY(ctx context.Context, w http.ResponseWriter, r *http.Request, ps tartarus.PTYStarter, sb *tartarus.Sandbox) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the client
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxPTYMessage)
	sendErr := func(err error) {
		_, body := errorBody(err, requestID(ctx))
		_ = writeWS(ctx, conn, &api.PTYMessage{Type: api.PTYError, Error: &body.Error})
		conn.Close(websocket.StatusNormalClosure, "")
	}
	var start api.PTYMessage
	if err := readWS(ctx, conn, &start); err != nil {
		sendErr(err)
		return
	}
	if start.Type != api.PTYStart {
		sendErr(tartarus.Errorf(tartarus.ErrInvalid, "first message is %q, want start", start.Type))
		return
	}
	if start.Cols == 0 && start.Rows == 0 {
		start.Cols, start.Rows = 80, 24
	}
	if len(start.Cmd) == 0 {
		start.Cmd = []string{"/bin/sh", "-l"}
	}
	cwd, err := optionalPath(start.Cwd)
	if err == nil {
		err = checkCmd(start.Cmd, start.Env)
	}
	if err == nil {
		err = tartarus.ValidUser(start.User)
	}
	if err != nil {
		sendErr(err)
		return
	}
	p, err := ps.StartPTY(ctx, sb.ID, &tartarus.PTYRequest{Cmd: start.Cmd, Env: start.Env, Cwd: cwd, User: start.User, Cols: start.Cols, Rows: start.Rows})
	if err != nil {
		sendErr(err)
		return
	}
	defer p.Close()
	if err := writeWS(ctx, conn, &api.PTYMessage{Type: api.PTYStarted}); err != nil {
		return
	}
	// Client → terminal.
	go func() {
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				p.Close() // the client left: hang up
				return
			}
			if typ == websocket.MessageBinary {
				if _, err := p.Write(data); err != nil {
					return
				}
				continue
			}
			var m api.PTYMessage
			if json.Unmarshal(data, &m) != nil || m.Type != api.PTYResize {
				continue // unknown control messages are ignored, for newer clients
			}
			_ = p.Resize(m.Cols, m.Rows) // a bad size is dropped; the terminal keeps its own
		}
	}()
	// Terminal → client.
	buf := make([]byte, 32<<10)
	for {
		n, err := p.Read(buf)
		if n > 0 {
			if werr := conn.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			sendErr(err)
			return
		}
	}
	res, err := p.Wait()
	if err != nil {
		sendErr(err)
		return
	}
	code := res.ExitCode
	_ = writeWS(ctx, conn, &api.PTYMessage{Type: api.PTYExit, ExitCode: &code, Signal: res.Signal})
	conn.Close(websocket.StatusNormalClosure, "")
}

func writeWS(ctx context.Context, conn *websocket.Conn, m *api.PTYMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return conn.Write(ctx, websocket.MessageText, b)
}

func readWS(ctx context.Context, conn *websocket.Conn, m *api.PTYMessage) error {
	typ, data, err := conn.Read(ctx)
	if err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "read start message: %v", err)
	}
	if typ != websocket.MessageText {
		return tartarus.Errorf(tartarus.ErrInvalid, "first message must be JSON text")
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "malformed message: %v", err)
	}
	return nil
}

// processRef reads {ref}: digits name a pid, anything else a tag.
func processRef(r *http.Request) (tartarus.ProcessSelector, error) {
	ref := r.PathValue("ref")
	if n, err := strconv.Atoi(ref); err == nil {
		if n <= 0 {
			return tartarus.ProcessSelector{}, tartarus.Errorf(tartarus.ErrInvalid, "pid %d: must be positive", n)
		}
		return tartarus.ProcessSelector{Pid: n}, nil
	}
	if ref == "" || len(ref) > 128 {
		return tartarus.ProcessSelector{}, tartarus.Errorf(tartarus.ErrInvalid, "process: a pid or a tag of 1-128 bytes")
	}
	return tartarus.ProcessSelector{Tag: ref}, nil
}

func (s *Server) startProcess(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionExecute, processManager, func(ctx context.Context, pm tartarus.ProcessManager, sb *tartarus.Sandbox) (int, any, error) {
		var req api.ProcessStart
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		cwd, err := optionalPath(req.Cwd)
		if err == nil {
			err = checkCmd(req.Cmd, req.Env)
		}
		if err == nil {
			err = tartarus.ValidUser(req.User)
		}
		if err == nil && (len(req.Tag) > 128 || strings.ContainsFunc(req.Tag, func(c rune) bool { return c < 0x20 || c == 0x7f })) {
			err = tartarus.Errorf(tartarus.ErrInvalid, "tag: at most 128 printable bytes")
		}
		if err == nil && req.Tag != "" {
			if _, perr := strconv.Atoi(req.Tag); perr == nil {
				err = tartarus.Errorf(tartarus.ErrInvalid, "tag %q: a tag must not be a number (numbers name pids)", req.Tag)
			}
		}
		if err != nil {
			return 0, nil, err
		}
		p, err := pm.StartProcess(ctx, sb.ID, &tartarus.ProcessRequest{Cmd: req.Cmd, Env: req.Env, Cwd: cwd, User: req.User, Tag: req.Tag, Stdin: req.Stdin})
		return http.StatusCreated, p, err
	})
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionRead, processManager, func(ctx context.Context, pm tartarus.ProcessManager, sb *tartarus.Sandbox) (int, any, error) {
		ps, err := pm.ListProcesses(ctx, sb.ID)
		if ps == nil {
			ps = []tartarus.Process{}
		}
		return http.StatusOK, api.ProcessList{Processes: ps}, err
	})
}

// processOutput streams a background process's output as NDJSON exec
// events (?replay=1 starts with its recent output) until it exits.
func (s *Server) processOutput(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionExecute, processManager, func(ctx context.Context, pm tartarus.ProcessManager, sb *tartarus.Sandbox) (int, any, error) {
		sel, err := processRef(r)
		if err != nil {
			return 0, nil, err
		}
		replay, _ := strconv.ParseBool(r.URL.Query().Get("replay"))
		st := &stream{w: w, rc: http.NewResponseController(w)}
		out := &eventWriter{s: st, typ: api.EventStdout}
		errOut := &eventWriter{s: st, typ: api.EventStderr}
		// Say at once that the attach took, so a client may act on the
		// process knowing it sees what follows.
		if err := st.send(&api.ExecEvent{Type: "attached"}); err != nil {
			return 0, nil, nil
		}
		res, err := pm.AttachProcess(ctx, sb.ID, sel, replay, out, errOut)
		out.flushTail()
		errOut.flushTail()
		if err != nil {
			_, body := errorBody(err, requestID(ctx))
			st.send(&api.ExecEvent{Type: api.EventError, Error: &body.Error})
			return 0, nil, nil
		}
		code := res.ExitCode
		st.send(&api.ExecEvent{Type: api.EventExit, ExitCode: &code, Signal: res.Signal, DurationMS: res.Duration.Milliseconds()})
		return 0, nil, nil
	})
}

// processInput writes the raw body to a process's stdin (?close=1 closes
// it after).
func (s *Server) processInput(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionExecute, processManager, func(ctx context.Context, pm tartarus.ProcessManager, sb *tartarus.Sandbox) (int, any, error) {
		sel, err := processRef(r)
		if err != nil {
			return 0, nil, err
		}
		data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxProcessInput))
		if err != nil {
			return 0, nil, tartarus.Errorf(tartarus.ErrTooLarge, "stdin is limited to %d bytes a call", maxProcessInput)
		}
		closeIn, _ := strconv.ParseBool(r.URL.Query().Get("close"))
		return http.StatusNoContent, nil, pm.ProcessInput(ctx, sb.ID, sel, data, closeIn)
	})
}

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT,
	"STOP": syscall.SIGSTOP, "TSTP": syscall.SIGTSTP, "WINCH": syscall.SIGWINCH,
}

// parseSignal reads a signal name ("SIGTERM", "term") or number (1-64).
func parseSignal(v any) (syscall.Signal, error) {
	switch v := v.(type) {
	case nil:
		return syscall.SIGTERM, nil
	case float64:
		if v >= 1 && v <= 64 && v == float64(int(v)) {
			return syscall.Signal(int(v)), nil
		}
	case string:
		if sig, ok := signalNames[strings.TrimPrefix(strings.ToUpper(v), "SIG")]; ok {
			return sig, nil
		}
	}
	return 0, tartarus.Errorf(tartarus.ErrInvalid, "signal %v: want a name like SIGTERM or a number 1-64", v)
}

func (s *Server) signalProcess(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionExecute, processManager, func(ctx context.Context, pm tartarus.ProcessManager, sb *tartarus.Sandbox) (int, any, error) {
		sel, err := processRef(r)
		if err != nil {
			return 0, nil, err
		}
		var req api.SignalRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		sig, err := parseSignal(req.Signal)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusNoContent, nil, pm.SignalProcess(ctx, sb.ID, sel, sig)
	})
}

func (s *Server) statFile(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionReadFiles, fileManager, func(ctx context.Context, fm tartarus.FileManager, sb *tartarus.Sandbox) (int, any, error) {
		p, err := sandboxPath(r.URL.Query().Get("path"))
		if err != nil {
			return 0, nil, err
		}
		fi, err := fm.StatFile(ctx, sb.ID, p)
		return http.StatusOK, fi, err
	})
}

func (s *Server) mkdir(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionWriteFiles, fileManager, func(ctx context.Context, fm tartarus.FileManager, sb *tartarus.Sandbox) (int, any, error) {
		var req api.MkdirRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		p, err := sandboxPath(req.Path)
		if err != nil {
			return 0, nil, err
		}
		made, err := fm.MakeDir(ctx, sb.ID, p, req.Parents)
		status := http.StatusOK
		if made {
			status = http.StatusCreated
		}
		return status, api.MkdirResponse{Created: made}, err
	})
}

func (s *Server) moveFile(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionWriteFiles, fileManager, func(ctx context.Context, fm tartarus.FileManager, sb *tartarus.Sandbox) (int, any, error) {
		var req api.MoveRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		from, err := sandboxPath(req.From)
		if err != nil {
			return 0, nil, err
		}
		to, err := sandboxPath(req.To)
		if err != nil {
			return 0, nil, err
		}
		fi, err := fm.MoveFile(ctx, sb.ID, from, to)
		return http.StatusOK, fi, err
	})
}

func (s *Server) removeFile(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionWriteFiles, fileManager, func(ctx context.Context, fm tartarus.FileManager, sb *tartarus.Sandbox) (int, any, error) {
		p, err := sandboxPath(r.URL.Query().Get("path"))
		if err != nil {
			return 0, nil, err
		}
		recursive, _ := strconv.ParseBool(r.URL.Query().Get("recursive"))
		return http.StatusNoContent, nil, fm.RemoveFile(ctx, sb.ID, p, recursive)
	})
}

// listDepth answers a listing with ?depth=N above 1; ok is false when the
// request is a plain listing.
func (s *Server) listDepth(w http.ResponseWriter, r *http.Request, sb *tartarus.Sandbox, p string) (ok bool) {
	d := r.URL.Query().Get("depth")
	if d == "" || d == "1" {
		return false
	}
	depth, err := strconv.Atoi(d)
	if err != nil || depth < 1 || depth > 16 {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "depth %q: want 1-16", d))
		return true
	}
	fm, err := fileManager(s)
	if err != nil {
		s.writeError(w, r, err)
		return true
	}
	files, err := fm.ListFilesDepth(r.Context(), sb.ID, p, depth)
	if err != nil {
		s.writeError(w, r, err)
		return true
	}
	writeJSON(w, http.StatusOK, api.FileList{Path: p, Files: files})
	return true
}

// watch streams a directory's changes as NDJSON until the client leaves.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.ready, cerberus.ActionReadFiles, fileManager, func(ctx context.Context, fm tartarus.FileManager, sb *tartarus.Sandbox) (int, any, error) {
		p, err := sandboxPath(r.URL.Query().Get("path"))
		if err != nil {
			return 0, nil, err
		}
		recursive, _ := strconv.ParseBool(r.URL.Query().Get("recursive"))
		fw, err := fm.WatchDir(ctx, sb.ID, p, recursive)
		if err != nil {
			return 0, nil, err
		}
		defer fw.Close()
		streamWatch(ctx, w, fw, p)
		return 0, nil, nil
	})
}

// streamWatch writes a watch's events as NDJSON until it ends or the
// client leaves.
func streamWatch(ctx context.Context, w http.ResponseWriter, fw tartarus.FileWatch, p string) {
	st := &lineStream{w: w, rc: http.NewResponseController(w)}
	if st.send(&api.WatchLine{Type: api.WatchWatching, Name: p}) != nil {
		return
	}
	for {
		evs, err := fw.Next()
		if err != nil {
			if ctx.Err() == nil {
				_, body := errorBody(err, requestID(ctx))
				st.send(&api.WatchLine{Type: api.EventError, Error: &body.Error})
			}
			return
		}
		for _, ev := range evs {
			if st.send(&api.WatchLine{Type: ev.Type, Name: ev.Name, IsDir: ev.IsDir}) != nil {
				return
			}
		}
	}
}

// lineStream writes NDJSON lines, flushed one by one.
type lineStream struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	begun bool
}

func (l *lineStream) send(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if !l.begun {
		l.begun = true
		l.w.Header().Set("Content-Type", api.NDJSON)
		l.w.Header().Set("X-Content-Type-Options", "nosniff")
		l.w.WriteHeader(http.StatusOK)
	}
	if _, err := l.w.Write(append(line, '\n')); err != nil {
		return err
	}
	if err := l.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.reach, cerberus.ActionUpdate, timeoutSetter, func(ctx context.Context, ts TimeoutSetter, sb *tartarus.Sandbox) (int, any, error) {
		var req api.TimeoutRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		if req.TimeoutS < 0 || req.TimeoutS > maxTimeoutS {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "timeout_s %d: want 0 (never) to %d", req.TimeoutS, maxTimeoutS)
		}
		out, err := ts.SetTimeout(ctx, sb.ID, time.Duration(req.TimeoutS)*time.Second)
		return http.StatusOK, out, err
	})
}

func (s *Server) sandboxMetrics(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionRead, metricsSource, func(ctx context.Context, m MetricsSource, sb *tartarus.Sandbox) (int, any, error) {
		var since time.Time
		if v := r.URL.Query().Get("since"); v != "" {
			var err error
			if since, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "since %q: want an RFC 3339 time", v)
			}
		}
		ms, err := m.SandboxMetrics(ctx, sb.ID, since)
		return http.StatusOK, api.MetricsResponse{Metrics: ms}, err
	})
}

// matchMetadata parses ?metadata=k=v filters (repeatable; all must match).
func matchMetadata(r *http.Request) (func(*tartarus.Sandbox) bool, error) {
	want := map[string]string{}
	for _, kv := range r.URL.Query()["metadata"] {
		// E2B's SDKs send several pairs in one value, URL-encoded and
		// joined with "&"; accept both forms.
		for _, pair := range strings.Split(kv, "&") {
			k, v, ok := strings.Cut(pair, "=")
			if !ok || k == "" || len(k) > 256 || len(v) > 4096 {
				return nil, tartarus.Errorf(tartarus.ErrInvalid, "metadata filter %q: want key=value", pair)
			}
			want[k] = v
		}
	}
	if len(want) > tartarus.MaxMetadata {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "metadata filter: at most %d pairs", tartarus.MaxMetadata)
	}
	return func(sb *tartarus.Sandbox) bool {
		for k, v := range want {
			if got, ok := sb.Metadata[k]; !ok || got != v {
				return false
			}
		}
		return true
	}, nil
}
