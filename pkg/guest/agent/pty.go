package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// openPTY allocates a pseudo-terminal pair of the given size. The master
// is non-blocking, so reads honour deadlines and Close ends them.
func openPTY(size *proto.PTYRequest) (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	fail := func(step string, err error) (*os.File, *os.File, error) {
		master.Close()
		return nil, nil, fmt.Errorf("pty %s: %w", step, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return fail("unlock", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		return fail("number", err)
	}
	name := "/dev/pts/" + strconv.Itoa(n)
	slave, err = os.OpenFile(name, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return fail("open "+name, err)
	}
	if err := resizePTY(master, size); err != nil {
		slave.Close()
		return fail("size", err)
	}
	return master, slave, nil
}

func resizePTY(master *os.File, size *proto.PTYRequest) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(size.Rows), Col: uint16(size.Cols)})
	})
	return errors.Join(err, ierr)
}

// pty runs a command as a session leader with a new terminal as its
// controlling terminal and relays the terminal over the stream.
func (s *session) pty(ctx context.Context, st *yamux.Stream, fr *proto.FrameReader, fw *proto.FrameWriter, req *proto.Request) {
	a := s.a
	started := a.clock.Now()
	a.activity.touch(started)
	defer func() { a.activity.touch(a.clock.Now()) }()
	fail := func(err error) { _ = fw.WriteJSON(proto.FrameError, proto.ErrorFrom(err)) }

	cmd, code, msg, err := command(req.Exec)
	if err != nil {
		fail(err)
		return
	}
	if cmd == nil {
		_ = fw.Write(proto.FrameStdout, []byte(msg))
		_ = fw.WriteJSON(proto.FrameResult, &proto.ExecResult{ExitCode: code})
		return
	}
	master, slave, err := openPTY(req.PTY)
	if err != nil {
		fail(err)
		return
	}
	defer master.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// Setsid makes the command a session leader, Setctty gives it the
	// terminal (its fd 0) as controlling terminal: job control and ^C work.
	cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
	hasTERM := false
	for k := range req.Exec.Env {
		hasTERM = hasTERM || k == "TERM"
	}
	if !hasTERM {
		cmd.Env = append(cmd.Env, "TERM=xterm-256color")
	}
	wait, err := a.procs.start(cmd)
	slave.Close() // the child holds its own copy; EIO on read once it is gone
	if err != nil {
		fail(err)
		return
	}
	pid := cmd.Process.Pid
	a.groups.add(pid)
	e := &execState{pgid: pid}
	a.log.Debug("pty started", "pid", pid, "cmd", req.Exec.Cmd[0])

	out := make(chan struct{})
	go func() {
		defer close(out)
		buf := make([]byte, outputChunk)
		for {
			n, err := master.Read(buf)
			if n > 0 {
				if fw.Write(proto.FrameStdout, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				return // EIO: every holder of the terminal is gone; or deadline
			}
		}
	}()
	finished := make(chan struct{})
	go func() {
		for {
			t, p, err := fr.Next()
			if err != nil {
				select {
				case <-finished:
				default:
					// The host hung up: so does the terminal.
					_ = unix.Kill(-pid, unix.SIGHUP)
					e.kill()
					_ = st.SetWriteDeadline(time.Unix(1, 0))
				}
				return
			}
			switch t {
			case proto.FrameStdin:
				_, _ = master.Write(p)
			case proto.FrameEOF:
				_, _ = master.Write([]byte{4}) // ^D, as a terminal's EOF
			case proto.FrameControl:
				var c proto.Control
				if json.Unmarshal(p, &c) == nil && c.Resize != nil && c.Resize.Validate() == nil {
					_ = resizePTY(master, c.Resize)
				}
			case proto.FrameCancel:
				e.kill()
			}
		}
	}()
	ws := wait()
	ended := a.clock.Now()
	// Output the command wrote before it exited is in the terminal's
	// buffer; background processes may hold the terminal open for ever.
	linger := a.clock.AfterFunc(a.opts.ExecLinger, func() { _ = master.SetReadDeadline(time.Unix(1, 0)) })
	<-out
	linger.Stop()
	close(finished)
	res := &proto.ExecResult{DurationNS: int64(ended.Sub(started))}
	switch {
	case ws.Exited():
		res.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		res.ExitCode = 128 + int(ws.Signal())
		res.Signal = unix.SignalName(ws.Signal())
	}
	_ = fw.WriteJSON(proto.FrameResult, res)
}
