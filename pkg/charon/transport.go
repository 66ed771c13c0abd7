package charon

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// h1Transport carries plain-HTTP/1.1 attempts on connections it pools
// itself, reading and writing in the caller's goroutine. net/http's
// Transport hands every request to two goroutines per connection (a writer
// and a reader) and back; on a loaded two-core host those switches were a
// third of the ferry's CPU time. Everything h1Transport does not handle —
// https shores, protocol upgrades (WebSocket), Expect: 100-continue, and
// request bodies over 1 MiB or of unknown length — goes to the standard
// Transport (fallback).
type h1Transport struct {
	fallback       *http.Transport
	dialer         *net.Dialer
	headerTimeout  time.Duration
	idleTimeout    time.Duration
	maxIdlePerHost int
	mu             sync.Mutex
	idle           map[string][]*h1Conn
}

type h1Conn struct {
	net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
}

func newH1Transport(fallback *http.Transport, cfg FerryConfig) *h1Transport {
	return &h1Transport{
		fallback:       fallback,
		dialer:         &net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second},
		headerTimeout:  cfg.Retry.AttemptTimeout,
		idleTimeout:    90 * time.Second,
		maxIdlePerHost: 1024,
		idle:           map[string][]*h1Conn{},
	}
}

var errConnReused = errors.New("charon: pooled connection closed by the shore")

// RoundTrip implements http.RoundTripper.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	// Large or unknown-length bodies also go to net/http: it reads the
	// answer while it is still writing the body, so a shore that refuses
	// an upload early (413) is heard instead of a broken pipe. Small
	// bodies fit in the socket buffers and cannot block that way.
	bigBody := req.Body != nil && req.Body != http.NoBody && (req.ContentLength < 0 || req.ContentLength > maxReplayBody)
	if req.URL.Scheme != "http" || bigBody || req.Header.Get("Upgrade") != "" || req.Header.Get("Expect") != "" {
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	// A pooled connection may have been closed by the shore while idle. If
	// it fails before any answer and the request can be sent again, send
	// it on a new connection, as net/http does.
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	for try := 0; ; try++ {
		c, reused, err := t.get(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(ctx, c, req)
		if err == nil {
			return resp, nil
		}
		if reused && errors.Is(err, errConnReused) && replayable && try < 2 && ctx.Err() == nil {
			if req.GetBody != nil {
				body, gerr := req.GetBody()
				if gerr != nil {
					return nil, gerr
				}
				req = req.WithContext(ctx)
				req.Body = body
			}
			continue
		}
		return nil, err
	}
}

// exchange writes req on c and reads the answer headers. The answer's body
// reads from c and gives c back to the pool at its end.
func (t *h1Transport) exchange(ctx context.Context, c *h1Conn, req *http.Request) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		c.Close()
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	if err := req.Write(c.bw); err != nil {
		return fail(noAnswer(err))
	}
	if err := c.bw.Flush(); err != nil {
		return fail(noAnswer(err))
	}
	if t.headerTimeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(t.headerTimeout))
	}
	var resp *http.Response
	for {
		if _, err := c.br.Peek(1); err != nil {
			return fail(noAnswer(err))
		}
		var err error
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close() // 1xx information: the answer follows
	}
	if t.headerTimeout > 0 {
		_ = c.SetReadDeadline(time.Time{})
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return fail(errors.New("charon: unexpected 101 answer to a request without Upgrade"))
	}
	reuse := !resp.Close && !req.Close
	if resp.Body == http.NoBody || resp.ContentLength == 0 {
		if !stop() {
			reuse = false
		}
		resp.Body = http.NoBody
		t.put(c, req.URL.Host, reuse)
		return resp, nil
	}
	resp.Body = &h1Body{rc: resp.Body, t: t, c: c, host: req.URL.Host, reuse: reuse, stop: stop}
	return resp, nil
}

// noAnswer marks a failure before the shore sent a byte of its answer.
func noAnswer(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err // a slow shore, not a stale connection
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err) {
		return errors.Join(errConnReused, err)
	}
	return err
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op != "dial"
}

// h1Body is an answer's body; at EOF its connection goes back to the pool,
// and closed before EOF the connection is dropped.
type h1Body struct {
	rc    io.ReadCloser
	t     *h1Transport
	c     *h1Conn
	host  string
	reuse bool
	stop  func() bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *h1Body) finish(complete bool) {
	b.done = true
	reuse := complete && b.reuse
	if !b.stop() {
		reuse = false // the context ended: the connection has a deadline in the past
	}
	b.t.put(b.c, b.host, reuse)
}

func (t *h1Transport) get(ctx context.Context, host string) (*h1Conn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for {
		l := t.idle[host]
		if len(l) == 0 {
			break
		}
		c := l[len(l)-1]
		l[len(l)-1] = nil
		t.idle[host] = l[:len(l)-1]
		if now.Sub(c.lastUsed) > t.idleTimeout || !c.alive() {
			t.mu.Unlock()
			c.Close()
			t.mu.Lock()
			continue
		}
		t.mu.Unlock()
		return c, true, nil
	}
	t.mu.Unlock()
	nc, err := t.dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{Conn: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 8<<10)}, false, nil
}

func (t *h1Transport) put(c *h1Conn, host string, reuse bool) {
	if reuse && c.br.Buffered() == 0 {
		c.lastUsed = time.Now()
		t.mu.Lock()
		l := t.idle[host]
		// The pool is a stack, so its bottom can sit idle for long after a
		// burst: drop the oldest once it is past the idle timeout.
		var stale *h1Conn
		if len(l) > 0 && c.lastUsed.Sub(l[0].lastUsed) > t.idleTimeout {
			stale = l[0]
			l = append(l[:0], l[1:]...)
		}
		if len(l) < t.maxIdlePerHost {
			t.idle[host] = append(l, c)
			c = nil
		} else {
			t.idle[host] = l
		}
		t.mu.Unlock()
		if stale != nil {
			stale.Close()
		}
		if c == nil {
			return
		}
	}
	c.Close()
}

// CloseIdleConnections closes pooled connections, here and in the fallback.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*h1Conn{}
	t.mu.Unlock()
	for _, l := range idle {
		for _, c := range l {
			c.Close()
		}
	}
	t.fallback.CloseIdleConnections()
}

// alive says whether the shore has kept an idle connection open: one
// non-blocking peek, which sees the FIN (or stray bytes) of a connection the
// shore closed while it sat in the pool, so the request goes on a new one.
func (c *h1Conn) alive() bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var buf [1]byte
	live := true
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		live = n < 0 && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
		return true // never wait
	})
	return err == nil && live
}
