package olympus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionExecute, backend, func(ctx context.Context, be Backend, sb *tartarus.Sandbox) (int, any, error) {
		req, err := decodeExec(http.MaxBytesReader(w, r.Body, maxExecBody))
		if err != nil {
			return 0, nil, err
		}
		if err := s.usable(r, sb); err != nil {
			return 0, nil, err
		}
		release, err := s.execSlot(sb)
		if err != nil {
			return 0, nil, err
		}
		defer release()
		if wantsNDJSON(r) {
			s.execStream(w, r, sb, req)
			return 0, nil, nil
		}
		out := &capped{limit: maxBufferedOutput}
		errOut := &capped{limit: maxBufferedOutput}
		req.Stdout, req.Stderr = out, errOut
		res, err := be.Exec(ctx, sb.ID, req)
		if err != nil {
			return 0, nil, err
		}
		s.metrics.exec.WithLabelValues(sb.Runtime).Observe(res.Duration.Seconds())
		return http.StatusOK, api.ExecResponse{
			ExitCode: res.ExitCode, Stdout: out.buf.String(), Stderr: errOut.buf.String(),
			DurationMS: res.Duration.Milliseconds(), TimedOut: res.TimedOut, Signal: res.Signal,
			Truncated: out.truncated || errOut.truncated,
		}, nil
	})
}

// usable refuses exec and file calls on a sandbox that is neither running
// nor hibernated (which the backend wakes first).
func usable(sb *tartarus.Sandbox) error {
	if sb.State != tartarus.StateRunning && sb.State != tartarus.StateHibernated {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not running", sb.ID, sb.State)
	}
	return nil
}

func wantsNDJSON(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == api.NDJSON {
			return true
		}
	}
	return false
}

// execStream answers with one JSON event a line, flushed as output comes.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request, sb *tartarus.Sandbox, req *tartarus.ExecRequest) {
	st := &stream{w: w, rc: http.NewResponseController(w)}
	req.Stdout = &eventWriter{s: st, typ: api.EventStdout}
	req.Stderr = &eventWriter{s: st, typ: api.EventStderr}
	res, err := s.be.Exec(r.Context(), sb.ID, req)
	req.Stdout.(*eventWriter).flushTail()
	req.Stderr.(*eventWriter).flushTail()
	if err != nil {
		if !st.started() {
			s.writeError(w, r, err)
			return
		}
		_, body := errorBody(err, requestID(r.Context()))
		s.log.Warn("exec stream ended with an error", "request_id", requestID(r.Context()), "sandbox", sb.ID, "err", err)
		st.send(&api.ExecEvent{Type: api.EventError, Error: &body.Error})
		return
	}
	s.metrics.exec.WithLabelValues(sb.Runtime).Observe(res.Duration.Seconds())
	code := res.ExitCode
	st.send(&api.ExecEvent{Type: api.EventExit, ExitCode: &code, DurationMS: res.Duration.Milliseconds(),
		TimedOut: res.TimedOut, Signal: res.Signal})
}

// stream writes NDJSON events; writes from stdout and stderr may race.
type stream struct {
	mu    sync.Mutex
	w     http.ResponseWriter
	rc    *http.ResponseController
	begun bool
	err   error
}

func (s *stream) started() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.begun
}

func (s *stream) send(ev *api.ExecEvent) error {
	line, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if !s.begun {
		s.begun = true
		s.w.Header().Set("Content-Type", api.NDJSON)
		s.w.Header().Set("X-Content-Type-Options", "nosniff")
		s.w.WriteHeader(http.StatusOK)
	}
	if _, err := s.w.Write(line); err != nil {
		s.err = err
		return err
	}
	if err := s.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		s.err = err
		return err
	}
	return nil
}

// eventWriter turns writes into events, holding back an incomplete UTF-8
// sequence at the end of a chunk so text split across chunks stays text.
type eventWriter struct {
	s    *stream
	typ  string
	tail []byte
}

func (e *eventWriter) Write(p []byte) (int, error) {
	data := append(e.tail, p...)
	cut := len(data) - incompleteTail(data)
	e.tail = append([]byte(nil), data[cut:]...)
	if cut == 0 {
		return len(p), nil
	}
	if err := e.s.send(chunkEvent(e.typ, data[:cut])); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (e *eventWriter) flushTail() {
	if len(e.tail) > 0 {
		_ = e.s.send(chunkEvent(e.typ, e.tail))
		e.tail = nil
	}
}

func chunkEvent(typ string, b []byte) *api.ExecEvent {
	if utf8.Valid(b) {
		return &api.ExecEvent{Type: typ, Data: string(b)}
	}
	return &api.ExecEvent{Type: typ, DataB64: bytes.Clone(b)}
}

// incompleteTail returns how many bytes at the end of b start a UTF-8
// sequence that is not complete yet (0 to 3).
func incompleteTail(b []byte) int {
	for i := 1; i <= 3 && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < 0x80 {
			return 0 // ASCII: nothing pending
		}
		if c >= 0xC0 { // a leading byte: is its sequence complete?
			need := 2
			switch {
			case c >= 0xF0:
				need = 4
			case c >= 0xE0:
				need = 3
			}
			if i < need {
				return i
			}
			return 0
		}
	}
	return 0
}

// capped buffers output up to limit bytes and drops the rest.
type capped struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	limit     int
	truncated bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.limit - c.buf.Len()
	if len(p) > room {
		c.truncated = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}
