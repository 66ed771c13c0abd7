// Package terminal is the Go SDK's client of a sandbox's terminal: a
// command on a pseudo-terminal, reached over the API's WebSocket
// (GET /v1/sandboxes/{id}/pty). It is apart from package client, which
// links only the standard library, because it needs a WebSocket library.
package terminal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/coder/websocket"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// PTYOptions start a terminal session.
type PTYOptions struct {
	Cmd  []string // default: a login shell
	Env  map[string]string
	Cwd  string
	User string // default: the template's user
	Cols int
	Rows int
}

// PTY is a terminal session in a sandbox: Read returns the terminal's
// output until io.EOF, when the command has exited; ExitCode then says how.
type PTY struct {
	ctx    context.Context
	conn   *websocket.Conn
	mu     sync.Mutex
	exit   *api.PTYMessage
	reader io.Reader
	err    error
}

// Open opens a terminal in sandbox id over a WebSocket.
func Open(ctx context.Context, c *client.Client, id string, opts *PTYOptions) (*PTY, error) {
	raw, h := c.Endpoint(client.SandboxPath(id, "/pty"))
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.HTTPClient(), HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusSwitchingProtocols {
			// The server refused before upgrading: its JSON error says why.
			var eb api.ErrorBody
			if resp.Body != nil {
				data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				_ = json.Unmarshal(data, &eb)
			}
			if eb.Error.Code != "" {
				return nil, &client.Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, RequestID: eb.Error.RequestID}
			}
		}
		return nil, fmt.Errorf("pty %s: %w", id, err)
	}
	conn.SetReadLimit(1 << 20)
	p := &PTY{ctx: ctx, conn: conn}
	start := api.PTYMessage{Type: api.PTYStart, Cmd: opts.Cmd, Env: opts.Env, Cwd: opts.Cwd, User: opts.User, Cols: opts.Cols, Rows: opts.Rows}
	if err := p.send(&start); err != nil {
		conn.CloseNow()
		return nil, err
	}
	m, err := p.control()
	if err != nil {
		conn.CloseNow()
		return nil, err
	}
	if m == nil || m.Type != api.PTYStarted {
		conn.CloseNow()
		return nil, fmt.Errorf("pty %s: unexpected first message", id)
	}
	return p, nil
}

func (p *PTY) send(m *api.PTYMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return p.conn.Write(p.ctx, websocket.MessageText, b)
}

// control reads the next message, which must be a text message; an error
// message becomes an *Error.
func (p *PTY) control() (*api.PTYMessage, error) {
	typ, data, err := p.conn.Read(p.ctx)
	if err != nil {
		return nil, fmt.Errorf("pty: %w", err)
	}
	if typ != websocket.MessageText {
		return nil, errors.New("pty: binary message before start")
	}
	return decodePTYMessage(data)
}

func decodePTYMessage(data []byte) (*api.PTYMessage, error) {
	var m api.PTYMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("pty: bad message: %w", err)
	}
	if m.Type == api.PTYError && m.Error != nil {
		return nil, &client.Error{Status: http.StatusOK, Code: m.Error.Code, Message: m.Error.Message, RequestID: m.Error.RequestID}
	}
	return &m, nil
}

// Read returns terminal output; io.EOF once the command exited.
func (p *PTY) Read(b []byte) (int, error) {
	for {
		if p.err != nil {
			return 0, p.err
		}
		if p.reader != nil {
			n, err := p.reader.Read(b)
			if err == io.EOF {
				p.reader = nil
				if n > 0 {
					return n, nil
				}
				continue
			}
			return n, err
		}
		typ, r, err := p.conn.Reader(p.ctx)
		if err != nil {
			p.err = fmt.Errorf("pty: connection ended before the command exited: %w", err)
			continue
		}
		if typ == websocket.MessageBinary {
			p.reader = r
			continue
		}
		data, err := io.ReadAll(io.LimitReader(r, 1<<20))
		if err != nil {
			p.err = err
			continue
		}
		m, err := decodePTYMessage(data)
		if err != nil {
			p.err = err
			continue
		}
		if m.Type == api.PTYExit {
			p.mu.Lock()
			p.exit = m
			p.mu.Unlock()
			p.err = io.EOF
		}
	}
}

// Write sends keystrokes.
func (p *PTY) Write(b []byte) (int, error) {
	if err := p.conn.Write(p.ctx, websocket.MessageBinary, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Resize changes the terminal's size.
func (p *PTY) Resize(cols, rows int) error {
	return p.send(&api.PTYMessage{Type: api.PTYResize, Cols: cols, Rows: rows})
}

// ExitCode is the command's exit code once Read returned io.EOF; ok is
// false before.
func (p *PTY) ExitCode() (code int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit == nil || p.exit.ExitCode == nil {
		return 0, false
	}
	return *p.exit.ExitCode, true
}

// Close hangs the terminal up.
func (p *PTY) Close() error { return p.conn.Close(websocket.StatusNormalClosure, "") }
