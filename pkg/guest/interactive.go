package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// maxProcesses bounds a process listing the host accepts (the guest keeps
// far fewer).
const maxProcesses = 1024

// StartPTY runs req.Cmd on a new terminal in the guest. ctx bounds the
// whole session: when it ends, the terminal hangs up.
func (c *Client) StartPTY(ctx context.Context, req *tartarus.PTYRequest) (tartarus.PTY, error) {
	r, err := c.open(ctx, &proto.Request{Op: proto.OpPTY,
		Exec: &proto.ExecRequest{Cmd: req.Cmd, Env: req.Env, Cwd: req.Cwd, User: req.User},
		PTY:  &proto.PTYRequest{Cols: req.Cols, Rows: req.Rows}})
	if err != nil {
		return nil, err
	}
	return &pty{ctx: ctx, r: r}, nil
}

// pty is a terminal session on one stream.
type pty struct {
	ctx     context.Context
	r       *rpc
	pending []byte
	mu      sync.Mutex
	res     *tartarus.ExecResult
	err     error // sticky: io.EOF after the result
}

func (p *pty) Read(b []byte) (int, error) {
	for len(p.pending) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		t, payload, err := p.r.fr.Next()
		if err != nil {
			p.setErr(p.r.c.wrap(p.ctx, proto.OpPTY, err))
			continue
		}
		switch t {
		case proto.FrameStdout, proto.FrameStderr:
			p.pending = payload
		default:
			var res proto.ExecResult
			if err := p.r.final(p.ctx, t, payload, &res); err != nil {
				p.setErr(err)
				continue
			}
			p.mu.Lock()
			p.res = &tartarus.ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, Duration: time.Duration(res.DurationNS)}
			p.mu.Unlock()
			p.setErr(io.EOF)
		}
	}
	n := copy(b, p.pending)
	p.pending = p.pending[n:]
	return n, nil
}

func (p *pty) setErr(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

func (p *pty) Write(b []byte) (int, error) {
	for off := 0; off < len(b); off += stdinChunk {
		if err := p.r.fw.Write(proto.FrameStdin, b[off:min(off+stdinChunk, len(b))]); err != nil {
			return off, p.r.c.wrap(p.ctx, proto.OpPTY, err)
		}
	}
	return len(b), nil
}

func (p *pty) Resize(cols, rows int) error {
	size := &proto.PTYRequest{Cols: cols, Rows: rows}
	if err := size.Validate(); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "resize: %v", err)
	}
	if err := p.r.fw.WriteJSON(proto.FrameControl, &proto.Control{Resize: size}); err != nil {
		return p.r.c.wrap(p.ctx, proto.OpPTY, err)
	}
	return nil
}

func (p *pty) Wait() (*tartarus.ExecResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.res != nil {
		return p.res, nil
	}
	if p.err == nil {
		return nil, errors.New("guest pty: Wait before the output ended")
	}
	return nil, p.err
}

func (p *pty) Close() error {
	p.r.close()
	return nil
}

func procReq(sel tartarus.ProcessSelector) *proto.ProcRequest {
	return &proto.ProcRequest{Pid: sel.Pid, Tag: sel.Tag}
}

func processFrom(in *proto.ProcInfo) tartarus.Process {
	cmd := in.Cmd
	if len(cmd) > proto.MaxArgs {
		cmd = cmd[:proto.MaxArgs]
	}
	out := make([]string, len(cmd))
	for i, a := range cmd {
		out[i] = clip(a, maxInfoLen)
	}
	return tartarus.Process{Pid: in.Pid, Tag: clip(in.Tag, proto.MaxTagLen), Cmd: out,
		Cwd: clip(in.Cwd, proto.MaxPathLen), StartedAt: in.StartedAt, Exited: in.Exited, ExitCode: in.ExitCode}
}

// StartProcess starts a command in the background and returns at once.
func (c *Client) StartProcess(ctx context.Context, req *tartarus.ProcessRequest) (*tartarus.Process, error) {
	var info proto.ProcInfo
	err := c.call(ctx, &proto.Request{Op: proto.OpProcStart,
		Exec: &proto.ExecRequest{Cmd: req.Cmd, Env: req.Env, Cwd: req.Cwd, User: req.User},
		Proc: &proto.ProcRequest{Tag: req.Tag, Stdin: req.Stdin}}, &info)
	if err != nil {
		return nil, err
	}
	p := processFrom(&info)
	return &p, nil
}

// ListProcesses lists the guest's background processes.
func (c *Client) ListProcesses(ctx context.Context) ([]tartarus.Process, error) {
	var list proto.ProcList
	if err := c.call(ctx, &proto.Request{Op: proto.OpProcList}, &list); err != nil {
		return nil, err
	}
	if len(list.Processes) > maxProcesses {
		return nil, fmt.Errorf("guest proc_list: %d processes, more than %d", len(list.Processes), maxProcesses)
	}
	out := make([]tartarus.Process, 0, len(list.Processes))
	for i := range list.Processes {
		out = append(out, processFrom(&list.Processes[i]))
	}
	return out, nil
}

// AttachProcess copies a background process's output until it exits;
// cancelling ctx detaches.
func (c *Client) AttachProcess(ctx context.Context, sel tartarus.ProcessSelector, replay bool, stdout, stderr io.Writer) (*tartarus.ExecResult, error) {
	pr := procReq(sel)
	pr.Replay = replay
	r, err := c.open(ctx, &proto.Request{Op: proto.OpProcAttach, Proc: pr})
	if err != nil {
		return nil, err
	}
	defer r.close()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		t, p, err := r.fr.Next()
		if err != nil {
			return nil, c.wrap(ctx, proto.OpProcAttach, err)
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
			return &tartarus.ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, Duration: time.Duration(res.DurationNS)}, nil
		}
		if werr != nil {
			return nil, fmt.Errorf("guest proc_attach: write output: %w", werr)
		}
	}
}

// ProcessInput writes to a background process's stdin.
func (c *Client) ProcessInput(ctx context.Context, sel tartarus.ProcessSelector, data []byte, closeStdin bool) error {
	for len(data) > proto.MaxProcInput {
		pr := procReq(sel)
		pr.Data = data[:proto.MaxProcInput]
		if err := c.call(ctx, &proto.Request{Op: proto.OpProcInput, Proc: pr}, nil); err != nil {
			return err
		}
		data = data[proto.MaxProcInput:]
	}
	pr := procReq(sel)
	pr.Data, pr.CloseStdin = data, closeStdin
	return c.call(ctx, &proto.Request{Op: proto.OpProcInput, Proc: pr}, nil)
}

// SignalProcess signals a background process's process group.
func (c *Client) SignalProcess(ctx context.Context, sel tartarus.ProcessSelector, sig syscall.Signal) error {
	return c.call(ctx, &proto.Request{Op: proto.OpProcSignal, Proc: procReq(sel), Signal: int(sig)}, nil)
}

// checkInfo bounds what the guest says about a file.
func checkInfo(op proto.Op, fi *tartarus.FileInfo) error {
	if len(fi.Name) > proto.MaxPathLen || len(fi.Path) > proto.MaxPathLen || len(fi.SymlinkTarget) > proto.MaxPathLen {
		return fmt.Errorf("guest %s: entry name longer than %d bytes", op, proto.MaxPathLen)
	}
	return nil
}

// StatFile describes a path in the guest.
func (c *Client) StatFile(ctx context.Context, path string) (*tartarus.FileInfo, error) {
	var fi tartarus.FileInfo
	if err := c.call(ctx, &proto.Request{Op: proto.OpStat, Path: path}, &fi); err != nil {
		return nil, err
	}
	return &fi, checkInfo(proto.OpStat, &fi)
}

// MakeDir makes a directory in the guest and says whether it was made.
func (c *Client) MakeDir(ctx context.Context, path string, parents bool) (bool, error) {
	var res proto.MkdirResult
	err := c.call(ctx, &proto.Request{Op: proto.OpMkdir, Path: path, File: &proto.FileRequest{Parents: parents}}, &res)
	return res.Created, err
}

// MoveFile renames a path in the guest.
func (c *Client) MoveFile(ctx context.Context, from, to string) (*tartarus.FileInfo, error) {
	var fi tartarus.FileInfo
	if err := c.call(ctx, &proto.Request{Op: proto.OpMove, Path: from, File: &proto.FileRequest{Dest: to}}, &fi); err != nil {
		return nil, err
	}
	return &fi, checkInfo(proto.OpMove, &fi)
}

// RemoveFile removes a path in the guest.
func (c *Client) RemoveFile(ctx context.Context, path string, recursive bool) error {
	return c.call(ctx, &proto.Request{Op: proto.OpRemove, Path: path, File: &proto.FileRequest{Recursive: recursive}}, nil)
}

// ListFilesDepth lists a directory in the guest down to depth levels.
func (c *Client) ListFilesDepth(ctx context.Context, path string, depth int) ([]tartarus.FileInfo, error) {
	r, err := c.open(ctx, &proto.Request{Op: proto.OpListFiles, Path: path, File: &proto.FileRequest{Depth: depth}})
	if err != nil {
		return nil, err
	}
	defer r.close()
	out := []tartarus.FileInfo{}
	for {
		t, p, err := r.fr.Next()
		if err != nil {
			return nil, c.wrap(ctx, proto.OpListFiles, err)
		}
		if t != proto.FrameData {
			return out, r.final(ctx, t, p, nil)
		}
		var batch []tartarus.FileInfo
		if err := json.Unmarshal(p, &batch); err != nil {
			return nil, fmt.Errorf("guest list_files: decode entries: %w", err)
		}
		if len(out)+len(batch) > MaxListEntries {
			return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "guest list_files %s: more than %d entries", path, MaxListEntries)
		}
		for i := range batch {
			if err := checkInfo(proto.OpListFiles, &batch[i]); err != nil {
				return nil, err
			}
		}
		out = append(out, batch...)
	}
}

// WatchDir watches a directory in the guest; it returns once the watch is
// in place. ctx bounds the watch's whole life.
func (c *Client) WatchDir(ctx context.Context, path string, recursive bool) (tartarus.FileWatch, error) {
	r, err := c.open(ctx, &proto.Request{Op: proto.OpWatch, Path: path, Watch: &proto.WatchRequest{Recursive: recursive}})
	if err != nil {
		return nil, err
	}
	w := &watch{ctx: ctx, r: r}
	if _, err := w.Next(); err != nil { // the empty first batch: in place
		r.close()
		return nil, err
	}
	return w, nil
}

type watch struct {
	ctx context.Context
	r   *rpc
}

func (w *watch) Next() ([]tartarus.WatchEvent, error) {
	t, p, err := w.r.fr.Next()
	if err != nil {
		return nil, w.r.c.wrap(w.ctx, proto.OpWatch, err)
	}
	if t != proto.FrameData {
		if err := w.r.final(w.ctx, t, p, nil); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("guest watch: ended: %w", io.EOF)
	}
	var evs []proto.WatchEvent
	if err := json.Unmarshal(p, &evs); err != nil {
		return nil, fmt.Errorf("guest watch: decode events: %w", err)
	}
	if len(evs) > proto.MaxWatchEvents+1 {
		return nil, fmt.Errorf("guest watch: %d events in one frame, more than %d", len(evs), proto.MaxWatchEvents+1)
	}
	out := make([]tartarus.WatchEvent, 0, len(evs))
	for _, ev := range evs {
		switch ev.Type {
		case proto.WatchCreate, proto.WatchWrite, proto.WatchRemove, proto.WatchRename, proto.WatchChmod, proto.WatchOverflow:
		default:
			return nil, fmt.Errorf("guest watch: unknown event type %q", clip(ev.Type, 32))
		}
		if len(ev.Name) > proto.MaxPathLen {
			return nil, fmt.Errorf("guest watch: name longer than %d bytes", proto.MaxPathLen)
		}
		out = append(out, tartarus.WatchEvent{Type: ev.Type, Name: ev.Name, IsDir: ev.IsDir})
	}
	return out, nil
}

func (w *watch) Close() error {
	w.r.close()
	return nil
}
