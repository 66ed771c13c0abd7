// Package qmp is a small client for QEMU's machine protocol (QMP): it reads
// the greeting, negotiates capabilities, runs commands matched to their
// answers by id, and delivers asynchronous events.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrClosed is returned for commands on a closed connection or one whose
// QEMU went away.
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error answer from QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is an asynchronous QEMU event ("STOP", "RESUME", "SHUTDOWN", …).
type Event struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Time is when QEMU emitted the event.
func (e Event) Time() time.Time {
	return time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)
}

// Greeting is what QEMU says first.
type Greeting struct {
	QMP struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
}

// message is any line QEMU sends.
type message struct {
	QMP    json.RawMessage `json:"QMP,omitempty"`
	ID     string          `json:"id,omitempty"`
	Return json.RawMessage `json:"return,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	Event  string          `json:"event,omitempty"`
}

type answer struct {
	ret json.RawMessage
	err error
}

// Client is one QMP connection. It is safe for concurrent use.
type Client struct {
	conn     net.Conn
	greeting Greeting
	events   chan Event

	writeMu sync.Mutex
	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan answer
	closed  bool
	done    chan struct{}
	err     error
}

// Dial connects to a QMP unix socket and negotiates capabilities. Events
// arrive on Events; when nobody reads them, the oldest beyond 64 are dropped.
func Dial(ctx context.Context, socket string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", socket, err)
	}
	c, err := New(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// New runs the QMP handshake on an open connection.
func New(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		events:  make(chan Event, 64),
		pending: map[string]chan answer{},
		done:    make(chan struct{}),
	}
	r := bufio.NewReader(conn)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("qmp: read greeting: %w", err)
	}
	if err := json.Unmarshal(line, &c.greeting); err != nil || c.greeting.QMP.Version.QEMU.Major == 0 {
		return nil, fmt.Errorf("qmp: bad greeting %q", line)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.read(r)
	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Greeting returns QEMU's greeting (its version).
func (c *Client) Greeting() Greeting { return c.greeting }

// Events delivers QEMU's asynchronous events; it is closed with the connection.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the connection ends.
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) read(r *bufio.Reader) {
	var err error
	defer func() {
		c.mu.Lock()
		c.closed = true
		if c.err == nil {
			c.err = fmt.Errorf("%w: %v", ErrClosed, err)
		}
		for id, ch := range c.pending {
			ch <- answer{err: c.err}
			delete(c.pending, id)
		}
		c.mu.Unlock()
		close(c.events)
		close(c.done)
	}()
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			return
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue // QEMU only sends JSON; skip what we cannot read
		}
		switch {
		case m.Event != "":
			var ev Event
			if json.Unmarshal(line, &ev) == nil {
				c.deliver(ev)
			}
		case m.ID != "":
			c.mu.Lock()
			ch := c.pending[m.ID]
			delete(c.pending, m.ID)
			c.mu.Unlock()
			if ch == nil {
				continue
			}
			if m.Error != nil {
				ch <- answer{err: m.Error}
			} else {
				ch <- answer{ret: m.Return}
			}
		}
	}
}

func (c *Client) deliver(ev Event) {
	for {
		select {
		case c.events <- ev:
			return
		default:
		}
		select { // full: drop the oldest
		case <-c.events:
		default:
		}
	}
}

// Execute runs a command and returns its "return" value. args may be nil.
// A cancelled ctx abandons the wait, not the command.
func (c *Client) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return c.execute(ctx, command, args, nil)
}

// SendFile hands f to QEMU under name (QMP getfd, the descriptor passed
// with SCM_RIGHTS), for commands that take "fd:name" such as migrate.
func (c *Client) SendFile(ctx context.Context, name string, f *os.File) error {
	if _, ok := c.conn.(*net.UnixConn); !ok {
		return errors.New("qmp: getfd: not a unix socket")
	}
	_, err := c.execute(ctx, "getfd", map[string]any{"fdname": name}, f)
	return err
}

func (c *Client) execute(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	ch := make(chan answer, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp: %s: %w", command, err)
	}
	c.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	if f != nil {
		_, _, err = c.conn.(*net.UnixConn).WriteMsgUnix(append(b, '\n'), syscall.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = c.conn.Write(append(b, '\n'))
	}
	_ = c.conn.SetWriteDeadline(time.Time{})
	c.writeMu.Unlock()
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp: %s: %w", command, err)
	}
	select {
	case a := <-ch:
		if a.err != nil {
			return nil, fmt.Errorf("qmp: %s: %w", command, a.err)
		}
		return a.ret, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Close ends the connection; QEMU keeps running.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	return c.conn.Close()
}
