package microvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// DefaultConsoleMaxBytes caps each of console.log and console.log.1.
const DefaultConsoleMaxBytes = 1 << 20

// The guest's serial console reaches the host through a socket chardev
// (console.sock), never a QEMU-written file: QEMU's file chardev cannot be
// capped, so a guest could fill the host's disk. The host reads it all the
// time and writes console.log, rotating to console.log.1 at the cap. A
// flood faster than the disk is dropped and counted, not queued, so the
// guest's UART never waits on the host for long. With no reader (a
// restarting server), QEMU discards the output.

// consoleBacklog is how many reads may wait for the disk before the rest
// are dropped.
const consoleBacklog = 64

// consolePace is the least time between two reads of a console. The guest's
// UART sends a byte at a time; read as it comes, a flood (~200 KB/s) cost
// the server a wakeup per byte in its own process and tripled another
// tenant's exec round trip. Paced, the bytes gather in the socket's buffer
// and one read takes them all: at most 100 reads a second per sandbox. The
// buffer holds a few hundred one-byte writes, so a flooding guest's UART
// then waits on it: the console carries about 25 KB/s (128 KiB in 5 s
// measured), plenty for a console, and the flood slows only its own guest.
const consolePace = 10 * time.Millisecond

// rotatingLog is a file capped at max bytes that rotates once to path.1.
type rotatingLog struct {
	path string
	max  int64

	f    *os.File
	size int64
}

func openRotatingLog(path string, max int64) (*rotatingLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rotatingLog{path: path, max: max, f: f, size: fi.Size()}, nil
}

// Write writes p, rotating first when p would pass the cap; a p larger than
// the cap keeps only its tail.
func (l *rotatingLog) Write(p []byte) (int, error) {
	n := len(p)
	if int64(len(p)) > l.max {
		p = p[int64(len(p))-l.max:]
	}
	if l.size+int64(len(p)) > l.max {
		if err := l.rotate(); err != nil {
			return 0, err
		}
	}
	w, err := l.f.Write(p)
	l.size += int64(w)
	if err != nil {
		return 0, err
	}
	return n, nil
}

func (l *rotatingLog) rotate() error {
	if err := l.f.Close(); err != nil {
		return err
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	l.f, l.size = f, 0
	return nil
}

func (l *rotatingLog) Close() error { return l.f.Close() }

// consoleReader copies the console socket into a rotating log.
type consoleReader struct {
	conn    net.Conn
	done    chan struct{}
	mu      sync.Mutex
	dropped int64
}

// startConsole connects to QEMU's console socket and copies it to the
// sandbox's console.log until the connection ends.
func startConsole(ctx context.Context, v *vm, exited <-chan struct{}, max int64) (*consoleReader, error) {
	var nd net.Dialer
	conn, err := dialWhenReady(ctx, v.path("console.sock"), exited, func(ctx context.Context, path string) (net.Conn, error) {
		return nd.DialContext(ctx, "unix", path)
	})
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	out, err := openRotatingLog(v.path("console.log"), max)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &consoleReader{conn: conn, done: make(chan struct{})}
	go c.run(out, v.log)
	return c, nil
}

func (c *consoleReader) run(out *rotatingLog, log *slog.Logger) {
	queue := make(chan []byte, consoleBacklog)
	go func() {
		defer close(c.done)
		defer out.Close()
		var reported int64
		for b := range queue {
			if d := c.droppedBytes(); d > reported {
				fmt.Fprintf(out, "\n[tartarus: %d bytes of console output dropped]\n", d-reported)
				reported = d
			}
			if _, err := out.Write(b); err != nil {
				log.Warn("console log", "err", err)
			}
		}
		if d := c.droppedBytes(); d > 0 {
			log.Warn("console flood: output dropped", "bytes", d)
		}
	}()
	defer close(queue)
	buf := make([]byte, 64<<10)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			select {
			case queue <- bytes.Clone(buf[:n]):
			default:
				c.mu.Lock()
				c.dropped += int64(n)
				c.mu.Unlock()
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Debug("console read", "err", err)
			}
			return
		}
		time.Sleep(consolePace)
	}
}

func (c *consoleReader) droppedBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// close stops reading and waits until the log is written.
func (c *consoleReader) close() {
	if c == nil {
		return
	}
	_ = c.conn.Close()
	<-c.done
}

// startQEMULog returns the write end of a pipe to give QEMU as stdout and
// stderr, and copies what it writes into a log at path capped like the
// console (rotating once to path.1), so a QEMU a guest provokes into
// printing cannot fill the host's disk. done closes when every write end is
// closed (QEMU exited). QEMU ignores SIGPIPE: with no reader (this process
// gone, the sandbox adopted by a new one), its messages are lost, not fatal.
func startQEMULog(path string, max int64, log *slog.Logger) (w *os.File, done <-chan struct{}, err error) {
	out, err := openRotatingLog(path, max)
	if err != nil {
		return nil, nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		out.Close()
		return nil, nil, err
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer r.Close()
		defer out.Close()
		if _, err := io.Copy(out, r); err != nil {
			log.Warn("qemu log", "err", err)
		}
	}()
	return w, ch, nil
}
