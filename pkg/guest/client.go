// Package guest is the host's client of the Tartarus guest agent: it speaks
// the protocol of pkg/guest/proto over one byte stream to a VM (its
// virtio-serial port, a unix socket on the host) and offers exec with
// streamed stdio, file transfer, signals, stats and clock/entropy sync.
//
// One Client is one session; many calls may run on it at once, each on its
// own yamux stream, each costing one round trip to start. When the session
// dies every call fails with an error wrapping tartarus.ErrUnavailable and
// Done is closed; the caller dials again (the guest serves a fresh session
// on reconnect).
package guest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Info describes the guest, as its agent reported at the last sync.
type Info struct {
	AgentVersion string
	Kernel       string
	Hostname     string
	BootedAt     time.Time
	// BootError is why the guest's boot did not complete; empty when it did.
	BootError string
}

// Client is one session with a guest agent.
type Client struct {
	sess   *yamux.Session
	log    *slog.Logger
	mu     sync.Mutex
	info   Info
	execID atomic.Uint64
}

// Bounds on what the guest, which runs untrusted code, can make the host
// hold or print.
const (
	maxInfoLen     = 256
	maxMessageLen  = 1024
	MaxListEntries = 200_000
	// MaxListBytes bounds a listing's names in total, and MaxNameLen each
	// one (Linux's NAME_MAX is 255 bytes; a longer name is a lie).
	MaxListBytes = 32 << 20
	MaxNameLen   = 1024
)

// clip shortens s to at most n bytes.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// cancelTimeout bounds the cancel RPC an abandoned Exec sends.
const cancelTimeout = 5 * time.Second

// stdinChunk and uploadChunk are the payload sizes the client sends.
const (
	stdinChunk  = 64 << 10
	uploadChunk = 256 << 10
)

type rwc struct {
	io.Reader
	io.WriteCloser
}

// Dial starts a session on conn: it handshakes with the agent, sends it the
// host's clock and 64 random bytes, and records its Info. It fails, closing
// conn, if ctx ends first. Dial owns conn from then on; Close closes it.
func Dial(ctx context.Context, conn io.ReadWriteCloser, log *slog.Logger) (*Client, error) {
	return DialSync(ctx, conn, log, time.Now(), "")
}

// DialSync is Dial whose first sync sets the guest's clock to now and, if
// hostname is not empty, its hostname (see SyncHostname): after a restore,
// one round trip instead of two.
func DialSync(ctx context.Context, conn io.ReadWriteCloser, log *slog.Logger, now time.Time, hostname string) (*Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(step string, err error) (*Client, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("guest %s: %w (%w)", step, tartarus.ErrUnavailable, ctx.Err())
		}
		if errors.Is(err, tartarus.ErrUnavailable) {
			return nil, fmt.Errorf("guest %s: %w", step, err)
		}
		return nil, fmt.Errorf("guest %s: %w: %w", step, tartarus.ErrUnavailable, err)
	}
	r, err := proto.ClientHandshake(conn)
	if err != nil {
		return fail("handshake", err)
	}
	sess, err := yamux.Client(rwc{r, conn}, proto.YamuxConfig(log, proto.HostWindow))
	if err != nil {
		return fail("session", err)
	}
	c := &Client{sess: sess, log: log}
	go c.refuseStreams()
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		sess.Close()
		return fail("sync", err)
	}
	if err := c.SyncHostname(ctx, now, entropy, hostname); err != nil {
		sess.Close()
		return fail("sync", err)
	}
	if !stop() {
		sess.Close()
		return fail("sync", ctx.Err())
	}
	return c, nil
}

// refuseStreams ends the session if the guest opens a stream: the guest
// runs untrusted code, and streams nobody reads would pin host memory.
func (c *Client) refuseStreams() {
	st, err := c.sess.AcceptStream()
	if err != nil {
		return // session over
	}
	c.log.Warn("guest opened a stream; closing the session", "stream", st.StreamID())
	c.sess.Close()
}

// Info returns what the guest reported at the last sync.
func (c *Client) Info() Info {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// Close ends the session and closes its connection.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the session is dead.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, &proto.Request{Op: proto.OpPing}, nil)
}

// Sync sets the guest's clock to now (when the guest allows it, as PID 1 in
// a VM does) and mixes entropy into its kernel RNG, then refreshes Info.
// Send it again after a snapshot restore.
func (c *Client) Sync(ctx context.Context, now time.Time, entropy []byte) error {
	return c.SyncHostname(ctx, now, entropy, "")
}

// SyncHostname is Sync that also sets the guest's hostname (when the guest
// allows it) in the same round trip; an empty hostname leaves it alone.
// Info().Hostname tells whether the guest took it: an older agent ignores it.
func (c *Client) SyncHostname(ctx context.Context, now time.Time, entropy []byte, hostname string) error {
	var in proto.Info
	req := &proto.Request{Op: proto.OpSync, Sync: &proto.SyncRequest{UnixNano: now.UnixNano(), Entropy: entropy, Hostname: hostname}}
	if err := c.call(ctx, req, &in); err != nil {
		return err
	}
	c.mu.Lock()
	c.info = Info{
		AgentVersion: clip(in.AgentVersion, maxInfoLen),
		Kernel:       clip(in.Kernel, maxInfoLen),
		Hostname:     clip(in.Hostname, maxInfoLen),
		BootedAt:     in.BootedAt,
		BootError:    clip(in.BootError, maxMessageLen),
	}
	c.mu.Unlock()
	return nil
}

// SignalAll sends sig to every process group started by Exec.
func (c *Client) SignalAll(ctx context.Context, sig syscall.Signal) error {
	return c.call(ctx, &proto.Request{Op: proto.OpSignal, Signal: int(sig)}, nil)
}

// SignalProcesses sends sig to every process in the guest but the agent
// (every process descended from it) and returns how many it reached. A
// program that traps the signal sees it, wherever its process group.
func (c *Client) SignalProcesses(ctx context.Context, sig syscall.Signal) (int, error) {
	var res proto.SignalResult
	if err := c.call(ctx, &proto.Request{Op: proto.OpSignalProcesses, Signal: int(sig)}, &res); err != nil {
		return 0, err
	}
	return res.Processes, nil
}

// Stats reports the guest's resource use and last activity.
func (c *Client) Stats(ctx context.Context) (*tartarus.Stats, error) {
	var st tartarus.Stats
	if err := c.call(ctx, &proto.Request{Op: proto.OpStats}, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// rpc is one open stream.
type rpc struct {
	c    *Client
	op   proto.Op
	st   *yamux.Stream
	fr   *proto.FrameReader
	fw   *proto.FrameWriter
	stop func() bool
}

// open validates req, opens a stream, sends req and arranges for ctx's end
// to fail the stream's pending reads and writes.
func (c *Client) open(ctx context.Context, req *proto.Request) (*rpc, error) {
	if err := req.Validate(); err != nil {
		return nil, c.wrap(ctx, req.Op, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("guest %s: %w", req.Op, err)
	}
	st, err := c.sess.OpenStream()
	if err != nil {
		return nil, c.wrap(ctx, req.Op, err)
	}
	r := &rpc{c: c, op: req.Op, st: st, fr: proto.NewFrameReader(st), fw: proto.NewFrameWriter(st)}
	r.stop = context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Unix(1, 0)) })
	if err := r.fw.WriteJSON(proto.FrameRequest, req); err != nil {
		r.close()
		return nil, c.wrap(ctx, req.Op, err)
	}
	return r, nil
}

func (r *rpc) close() {
	r.stop()
	_ = r.st.Close()
}

// final interprets a result or error frame; other frames are a protocol
// error.
func (r *rpc) final(ctx context.Context, t proto.FrameType, p []byte, out any) error {
	switch t {
	case proto.FrameResult:
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(p, out); err != nil {
			return fmt.Errorf("guest %s: decode result: %w", r.op, err)
		}
		return nil
	case proto.FrameError:
		var e proto.Error
		if err := json.Unmarshal(p, &e); err != nil {
			return fmt.Errorf("guest %s: decode error: %w", r.op, err)
		}
		return r.c.wrap(ctx, r.op, &e)
	}
	return fmt.Errorf("guest %s: unexpected %s frame", r.op, t)
}

// call runs an RPC that sends only its request and answers one final frame.
func (c *Client) call(ctx context.Context, req *proto.Request, out any) error {
	r, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer r.close()
	t, p, err := r.fr.Next()
	if err != nil {
		return c.wrap(ctx, req.Op, err)
	}
	return r.final(ctx, t, p, out)
}

// wrap gives err its tartarus class: the guest's own code, ctx's end, or
// ErrUnavailable for a dead session or stream.
func (c *Client) wrap(ctx context.Context, op proto.Op, err error) error {
	var pe *proto.Error
	switch {
	case errors.As(err, &pe):
		msg := clip(pe.Message, maxMessageLen)
		if class := pe.Class(); class != nil {
			return fmt.Errorf("guest %s: %s: %w", op, msg, class)
		}
		return fmt.Errorf("guest %s: %s", op, msg)
	case ctx.Err() != nil:
		return fmt.Errorf("guest %s: %w", op, ctx.Err())
	case c.sess.IsClosed(), errors.Is(err, yamux.ErrSessionShutdown), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, yamux.ErrConnectionReset),
		errors.Is(err, yamux.ErrStreamClosed), errors.Is(err, yamux.ErrRemoteGoAway):
		return fmt.Errorf("guest %s: session closed: %w: %w", op, tartarus.ErrUnavailable, err)
	}
	return fmt.Errorf("guest %s: %w", op, err)
}

// Exec runs req.Cmd in the guest, streaming stdin in and stdout/stderr out
// as chunks arrive, and returns how it ended. A command that is not found
// ends with exit code 127 and the shell's message on stderr (126 when it is
// not executable). When ctx ends the guest kills the command's process
// group before Exec returns ctx's error.
//
// If req.Stdin blocks, a goroutine may stay in its Read after Exec returns;
// it sends nothing more.
func (c *Client) Exec(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	id := strconv.FormatUint(c.execID.Add(1), 10)
	preq := &proto.Request{Op: proto.OpExec, Exec: &proto.ExecRequest{
		ID:        id,
		Cmd:       req.Cmd,
		Env:       req.Env,
		Cwd:       req.Cwd,
		User:      req.User,
		Stdin:     req.Stdin != nil,
		TimeoutMS: req.Timeout.Milliseconds(),
	}}
	if req.Timeout > 0 && preq.Exec.TimeoutMS == 0 {
		preq.Exec.TimeoutMS = 1
	}
	r, err := c.open(ctx, preq)
	if err != nil {
		return nil, err
	}
	defer r.close()
	if req.Stdin != nil {
		go feedStdin(r.fw, req.Stdin)
	}
	stdout, stderr := req.Stdout, req.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		t, p, err := r.fr.Next()
		if err != nil {
			err = c.wrap(ctx, proto.OpExec, err)
			if ctx.Err() != nil {
				c.cancelExec(id)
			}
			return nil, err
		}
		var werr error
		switch t {
		case proto.FrameStdout:
			_, werr = stdout.Write(p)
		case proto.FrameStderr:
			_, werr = stderr.Write(p)
		default:
			var res proto.ExecResult
			if err := r.final(ctx, t, p, &res); err != nil {
				return nil, err
			}
			return &tartarus.ExecResult{
				ExitCode: res.ExitCode,
				Signal:   res.Signal,
				TimedOut: res.TimedOut,
				Duration: time.Duration(res.DurationNS),
			}, nil
		}
		if werr != nil {
			// Nobody takes the output any more: stop the command.
			c.cancelExec(id)
			return nil, fmt.Errorf("guest exec: write output: %w", werr)
		}
	}
}

// cancelExec asks the guest, on a stream of its own, to kill exec id's
// process group; the exec's stream may be stalled behind unread stdin.
func (c *Client) cancelExec(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	if err := c.call(ctx, &proto.Request{Op: proto.OpCancel, ExecID: id}, nil); err != nil {
		c.log.Debug("cancel exec", "id", id, "err", err)
	}
}

func feedStdin(fw *proto.FrameWriter, in io.Reader) {
	buf := make([]byte, stdinChunk)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if fw.Write(proto.FrameStdin, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			_ = fw.Write(proto.FrameEOF, nil)
			return
		}
	}
}

// ReadFile opens a file in the guest for streaming; a missing file fails
// here with ErrNotFound. The caller must Close the reader; ctx bounds the
// whole transfer.
func (c *Client) ReadFile(ctx context.Context, path string) (io.ReadCloser, error) {
	r, err := c.open(ctx, &proto.Request{Op: proto.OpReadFile, Path: path})
	if err != nil {
		return nil, err
	}
	fr := &fileReader{ctx: ctx, r: r}
	// The first frame says whether the file opened.
	if err := fr.next(); err != nil && err != io.EOF {
		r.close()
		return nil, err
	}
	return fr, nil
}

// fileReader reads a file's data frames.
type fileReader struct {
	ctx     context.Context
	r       *rpc
	pending []byte
	err     error // sticky: io.EOF after the result
}

func (f *fileReader) next() error {
	t, p, err := f.r.fr.Next()
	if err != nil {
		f.err = f.r.c.wrap(f.ctx, proto.OpReadFile, err)
		return f.err
	}
	if t == proto.FrameData {
		f.pending = p
		return nil
	}
	if err := f.r.final(f.ctx, t, p, nil); err != nil {
		f.err = err
		return err
	}
	f.err = io.EOF
	return io.EOF
}

func (f *fileReader) Read(p []byte) (int, error) {
	for len(f.pending) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

func (f *fileReader) Close() error {
	f.r.close()
	if f.err == nil {
		f.err = os.ErrClosed
	}
	return nil
}

// WriteFile streams r into path in the guest, which writes a temporary
// file beside it and renames it into place, creating parent directories.
// mode 0 means 0644. If r fails, nothing is written.
func (c *Client) WriteFile(ctx context.Context, path string, mode os.FileMode, r io.Reader) error {
	rq, err := c.open(ctx, &proto.Request{Op: proto.OpWriteFile, Path: path, Mode: proto.ModeToWire(mode)})
	if err != nil {
		return err
	}
	defer rq.close()
	answer := make(chan error, 1)
	go func() {
		t, p, err := rq.fr.Next()
		if err != nil {
			answer <- c.wrap(ctx, proto.OpWriteFile, err)
		} else {
			answer <- rq.final(ctx, t, p, nil)
		}
		// An early answer is an error: stop our writes.
		_ = rq.st.SetWriteDeadline(time.Unix(1, 0))
	}()
	buf := make([]byte, uploadChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := rq.fw.Write(proto.FrameData, buf[:n]); err != nil {
				break // the answer says why
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			if err := rq.fw.Write(proto.FrameEOF, nil); err != nil {
				break
			}
			break
		}
		if rerr != nil {
			// Close without FrameEOF: the guest discards the upload.
			rq.close()
			<-answer
			return fmt.Errorf("guest write_file %s: read input: %w", path, rerr)
		}
	}
	return <-answer
}

// ListFiles lists a directory in the guest.
func (c *Client) ListFiles(ctx context.Context, path string) ([]tartarus.FileInfo, error) {
	r, err := c.open(ctx, &proto.Request{Op: proto.OpListFiles, Path: path})
	if err != nil {
		return nil, err
	}
	defer r.close()
	var out []tartarus.FileInfo
	total := 0 // bytes of names held
	for {
		t, p, err := r.fr.Next()
		if err != nil {
			return nil, c.wrap(ctx, proto.OpListFiles, err)
		}
		if t != proto.FrameData {
			if err := r.final(ctx, t, p, nil); err != nil {
				return nil, err
			}
			if out == nil {
				out = []tartarus.FileInfo{}
			}
			return out, nil
		}
		var batch []tartarus.FileInfo
		if err := json.Unmarshal(p, &batch); err != nil {
			return nil, fmt.Errorf("guest list_files: decode entries: %w", err)
		}
		if len(out)+len(batch) > MaxListEntries {
			return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "guest list_files %s: more than %d entries", path, MaxListEntries)
		}
		for _, fi := range batch {
			if len(fi.Name) > MaxNameLen {
				return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "guest list_files %s: a name of %d bytes (at most %d)", path, len(fi.Name), MaxNameLen)
			}
			total += len(fi.Name)
		}
		if total > MaxListBytes {
			return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "guest list_files %s: names of more than %d bytes in all", path, MaxListBytes)
		}
		out = append(out, batch...)
	}
}
