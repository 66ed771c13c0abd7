package microvm

import (
	"context"
	"fmt"
	"io"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The guest agent's interactive abilities, offered as the runtime's side
// interfaces.
var (
	_ tartarus.PTYStarter     = (*Driver)(nil)
	_ tartarus.ProcessManager = (*Driver)(nil)
	_ tartarus.FileManager    = (*Driver)(nil)
	_ interactiveGuest        = (*guest.Client)(nil)
)

// interactiveGuest is what a guest session offers beyond guestConn.
type interactiveGuest interface {
	StartPTY(ctx context.Context, req *tartarus.PTYRequest) (tartarus.PTY, error)
	StartProcess(ctx context.Context, req *tartarus.ProcessRequest) (*tartarus.Process, error)
	ListProcesses(ctx context.Context) ([]tartarus.Process, error)
	AttachProcess(ctx context.Context, sel tartarus.ProcessSelector, replay bool, stdout, stderr io.Writer) (*tartarus.ExecResult, error)
	ProcessInput(ctx context.Context, sel tartarus.ProcessSelector, data []byte, closeStdin bool) error
	SignalProcess(ctx context.Context, sel tartarus.ProcessSelector, sig syscall.Signal) error
	StatFile(ctx context.Context, path string) (*tartarus.FileInfo, error)
	MakeDir(ctx context.Context, path string, parents bool) (bool, error)
	MoveFile(ctx context.Context, from, to string) (*tartarus.FileInfo, error)
	RemoveFile(ctx context.Context, path string, recursive bool) error
	ListFilesDepth(ctx context.Context, path string, depth int) ([]tartarus.FileInfo, error)
	WatchDir(ctx context.Context, path string, recursive bool) (tartarus.FileWatch, error)
}

// interactive is begin for the interactive calls.
func (d *Driver) interactive(id string) (*vm, interactiveGuest, func(), error) {
	v, g, done, err := d.begin(id)
	if err != nil {
		return nil, nil, nil, err
	}
	ig, ok := g.(interactiveGuest)
	if !ok {
		done()
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrNotImplemented, "sandbox %s: the guest session has no terminals, processes or watches", id)
	}
	return v, ig, done, nil
}

// withEnv lays req's environment over the sandbox's.
func withEnv(base, env map[string]string) map[string]string {
	if len(base) == 0 {
		return env
	}
	out := make(map[string]string, len(base)+len(env))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// StartPTY runs a command on a terminal in the guest.
func (d *Driver) StartPTY(ctx context.Context, id string, req *tartarus.PTYRequest) (tartarus.PTY, error) {
	v, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	defer done()
	r := *req
	r.Env = withEnv(v.conf.Env, req.Env)
	p, err := g.StartPTY(ctx, &r)
	if err != nil {
		return nil, fmt.Errorf("pty in sandbox %s: %w", id, err)
	}
	return p, nil
}

// StartProcess starts a background process in the guest.
func (d *Driver) StartProcess(ctx context.Context, id string, req *tartarus.ProcessRequest) (*tartarus.Process, error) {
	v, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	defer done()
	r := *req
	r.Env = withEnv(v.conf.Env, req.Env)
	p, err := g.StartProcess(ctx, &r)
	if err != nil {
		return nil, fmt.Errorf("start process in sandbox %s: %w", id, err)
	}
	return p, nil
}

// ListProcesses lists the guest's background processes.
func (d *Driver) ListProcesses(ctx context.Context, id string) ([]tartarus.Process, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	defer done()
	ps, err := g.ListProcesses(ctx)
	if err != nil {
		return nil, fmt.Errorf("list processes of sandbox %s: %w", id, err)
	}
	return ps, nil
}

// AttachProcess follows a background process's output until it exits.
func (d *Driver) AttachProcess(ctx context.Context, id string, sel tartarus.ProcessSelector, replay bool, stdout, stderr io.Writer) (*tartarus.ExecResult, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	// Following output is not activity: an attached sandbox may still
	// hibernate when nothing happens in it.
	done()
	res, err := g.AttachProcess(ctx, sel, replay, stdout, stderr)
	if err != nil {
		return nil, fmt.Errorf("attach to process in sandbox %s: %w", id, err)
	}
	return res, nil
}

// ProcessInput writes to a background process's stdin.
func (d *Driver) ProcessInput(ctx context.Context, id string, sel tartarus.ProcessSelector, data []byte, closeStdin bool) error {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return err
	}
	defer done()
	if err := g.ProcessInput(ctx, sel, data, closeStdin); err != nil {
		return fmt.Errorf("input to process in sandbox %s: %w", id, err)
	}
	return nil
}

// SignalProcess signals a background process.
func (d *Driver) SignalProcess(ctx context.Context, id string, sel tartarus.ProcessSelector, sig syscall.Signal) error {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return err
	}
	defer done()
	if err := g.SignalProcess(ctx, sel, sig); err != nil {
		return fmt.Errorf("signal process in sandbox %s: %w", id, err)
	}
	return nil
}

// StatFile describes a path in the guest.
func (d *Driver) StatFile(ctx context.Context, id, path string) (*tartarus.FileInfo, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	defer done()
	fi, err := g.StatFile(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("stat %s in sandbox %s: %w", path, id, err)
	}
	return fi, nil
}

// MakeDir makes a directory in the guest.
func (d *Driver) MakeDir(ctx context.Context, id, path string, parents bool) (bool, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return false, err
	}
	defer done()
	made, err := g.MakeDir(ctx, path, parents)
	if err != nil {
		return false, fmt.Errorf("mkdir %s in sandbox %s: %w", path, id, err)
	}
	return made, nil
}

// MoveFile renames a path in the guest.
func (d *Driver) MoveFile(ctx context.Context, id, from, to string) (*tartarus.FileInfo, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	defer done()
	fi, err := g.MoveFile(ctx, from, to)
	if err != nil {
		return nil, fmt.Errorf("move %s in sandbox %s: %w", from, id, err)
	}
	return fi, nil
}

// RemoveFile removes a path in the guest.
func (d *Driver) RemoveFile(ctx context.Context, id, path string, recursive bool) error {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return err
	}
	defer done()
	if err := g.RemoveFile(ctx, path, recursive); err != nil {
		return fmt.Errorf("remove %s in sandbox %s: %w", path, id, err)
	}
	return nil
}

// ListFilesDepth lists a directory tree in the guest.
func (d *Driver) ListFilesDepth(ctx context.Context, id, path string, depth int) ([]tartarus.FileInfo, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	defer done()
	fi, err := g.ListFilesDepth(ctx, path, depth)
	if err != nil {
		return nil, fmt.Errorf("list %s in sandbox %s: %w", path, id, err)
	}
	return fi, nil
}

// WatchDir watches a directory in the guest.
func (d *Driver) WatchDir(ctx context.Context, id, path string, recursive bool) (tartarus.FileWatch, error) {
	_, g, done, err := d.interactive(id)
	if err != nil {
		return nil, err
	}
	done() // a watch that waits is not activity
	w, err := g.WatchDir(ctx, path, recursive)
	if err != nil {
		return nil, fmt.Errorf("watch %s in sandbox %s: %w", path, id, err)
	}
	return w, nil
}

var _ tartarus.StatsSampler = (*Driver)(nil)

// SampleStats asks the guest for its resource use without marking the
// sandbox busy, so periodic sampling never keeps it from idling.
func (d *Driver) SampleStats(ctx context.Context, id string) (*tartarus.Stats, error) {
	v, err := d.get(id)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	g, running := v.guest, v.state == tartarus.InstanceRunning
	v.mu.Unlock()
	if !running || g == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is not running", id)
	}
	st, err := d.guestStats(ctx, v, g, 0)
	if err != nil {
		return nil, fmt.Errorf("stats of sandbox %s: %w", id, err)
	}
	return st, nil
}
