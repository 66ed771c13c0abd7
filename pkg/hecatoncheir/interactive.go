package hecatoncheir

import (
	"context"
	"fmt"
	"io"
	"maps"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The node agent passes its runtimes' interactive abilities on, waking a
// hibernated sandbox first and recording the activity, as it does for
// exec and files.
var (
	_ tartarus.PTYStarter     = (*Agent)(nil)
	_ tartarus.ProcessManager = (*Agent)(nil)
	_ tartarus.FileManager    = (*Agent)(nil)
)

// awakeAs returns a running sandbox and its runtime as the side interface
// T, or ErrNotImplemented naming what the runtime lacks.
func awakeAs[T any](ctx context.Context, a *Agent, id, what string) (*tartarus.Sandbox, T, error) {
	var zero T
	sb, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, zero, err
	}
	t, ok := rt.(T)
	if !ok {
		return nil, zero, tartarus.Errorf(tartarus.ErrNotImplemented, "runtime %s has no %s", sb.Runtime, what)
	}
	return sb, t, nil
}

func withSandboxEnv(sb *tartarus.Sandbox, env map[string]string) map[string]string {
	if len(sb.Env) == 0 {
		return env
	}
	out := maps.Clone(sb.Env)
	maps.Copy(out, env)
	return out
}

// StartPTY runs a command on a terminal in a sandbox.
func (a *Agent) StartPTY(ctx context.Context, id string, req *tartarus.PTYRequest) (tartarus.PTY, error) {
	sb, rt, err := awakeAs[tartarus.PTYStarter](ctx, a, id, "terminals")
	if err != nil {
		return nil, err
	}
	r := *req
	r.Env = withSandboxEnv(sb, req.Env)
	r.Cwd, r.User = a.withTemplateDefaults(ctx, sb, req.Cwd, req.User)
	return rt.StartPTY(ctx, id, &r)
}

// StartProcess starts a background process in a sandbox.
func (a *Agent) StartProcess(ctx context.Context, id string, req *tartarus.ProcessRequest) (*tartarus.Process, error) {
	sb, rt, err := awakeAs[tartarus.ProcessManager](ctx, a, id, "background processes")
	if err != nil {
		return nil, err
	}
	defer a.touch(ctx, id)
	r := *req
	r.Env = withSandboxEnv(sb, req.Env)
	r.Cwd, r.User = a.withTemplateDefaults(ctx, sb, req.Cwd, req.User)
	return rt.StartProcess(ctx, id, &r)
}

// ListProcesses lists a sandbox's background processes.
func (a *Agent) ListProcesses(ctx context.Context, id string) ([]tartarus.Process, error) {
	_, rt, err := awakeAs[tartarus.ProcessManager](ctx, a, id, "background processes")
	if err != nil {
		return nil, err
	}
	return rt.ListProcesses(ctx, id)
}

// AttachProcess follows a background process's output.
func (a *Agent) AttachProcess(ctx context.Context, id string, sel tartarus.ProcessSelector, replay bool, stdout, stderr io.Writer) (*tartarus.ExecResult, error) {
	_, rt, err := awakeAs[tartarus.ProcessManager](ctx, a, id, "background processes")
	if err != nil {
		return nil, err
	}
	return rt.AttachProcess(ctx, id, sel, replay, stdout, stderr)
}

// ProcessInput writes to a background process's stdin.
func (a *Agent) ProcessInput(ctx context.Context, id string, sel tartarus.ProcessSelector, data []byte, closeStdin bool) error {
	_, rt, err := awakeAs[tartarus.ProcessManager](ctx, a, id, "background processes")
	if err != nil {
		return err
	}
	defer a.touch(ctx, id)
	return rt.ProcessInput(ctx, id, sel, data, closeStdin)
}

// SignalProcess signals a background process.
func (a *Agent) SignalProcess(ctx context.Context, id string, sel tartarus.ProcessSelector, sig syscall.Signal) error {
	_, rt, err := awakeAs[tartarus.ProcessManager](ctx, a, id, "background processes")
	if err != nil {
		return err
	}
	defer a.touch(ctx, id)
	return rt.SignalProcess(ctx, id, sel, sig)
}

// StatFile describes a path in a sandbox.
func (a *Agent) StatFile(ctx context.Context, id, path string) (*tartarus.FileInfo, error) {
	_, rt, err := awakeAs[tartarus.FileManager](ctx, a, id, "file management")
	if err != nil {
		return nil, err
	}
	return rt.StatFile(ctx, id, path)
}

// MakeDir makes a directory in a sandbox.
func (a *Agent) MakeDir(ctx context.Context, id, path string, parents bool) (bool, error) {
	_, rt, err := awakeAs[tartarus.FileManager](ctx, a, id, "file management")
	if err != nil {
		return false, err
	}
	defer a.touch(ctx, id)
	return rt.MakeDir(ctx, id, path, parents)
}

// MoveFile renames a path in a sandbox.
func (a *Agent) MoveFile(ctx context.Context, id, from, to string) (*tartarus.FileInfo, error) {
	_, rt, err := awakeAs[tartarus.FileManager](ctx, a, id, "file management")
	if err != nil {
		return nil, err
	}
	defer a.touch(ctx, id)
	return rt.MoveFile(ctx, id, from, to)
}

// RemoveFile removes a path in a sandbox.
func (a *Agent) RemoveFile(ctx context.Context, id, path string, recursive bool) error {
	_, rt, err := awakeAs[tartarus.FileManager](ctx, a, id, "file management")
	if err != nil {
		return err
	}
	defer a.touch(ctx, id)
	return rt.RemoveFile(ctx, id, path, recursive)
}

// ListFilesDepth lists a directory tree in a sandbox.
func (a *Agent) ListFilesDepth(ctx context.Context, id, path string, depth int) ([]tartarus.FileInfo, error) {
	_, rt, err := awakeAs[tartarus.FileManager](ctx, a, id, "file management")
	if err != nil {
		return nil, err
	}
	return rt.ListFilesDepth(ctx, id, path, depth)
}

// WatchDir watches a directory in a sandbox.
func (a *Agent) WatchDir(ctx context.Context, id, path string, recursive bool) (tartarus.FileWatch, error) {
	_, rt, err := awakeAs[tartarus.FileManager](ctx, a, id, "file management")
	if err != nil {
		return nil, err
	}
	return rt.WatchDir(ctx, id, path, recursive)
}

// MaxTimeout is the longest timeout SetTimeout accepts.
const MaxTimeout = 30 * 24 * time.Hour

// SetTimeout makes a live sandbox expire d from now (never when d is 0);
// the expiry loop honours the new time at its next pass.
func (a *Agent) SetTimeout(ctx context.Context, id string, d time.Duration) (*tartarus.Sandbox, error) {
	if d < 0 || d > MaxTimeout {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "timeout %v: want 0 to %v", d, MaxTimeout)
	}
	es, ok := a.cfg.Store.(store.ExpirySetter)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "the store cannot change a sandbox's expiry")
	}
	var at time.Time
	if d > 0 {
		at = a.cfg.Clock.Now().Add(d).UTC()
	}
	sb, err := es.SetExpiry(ctx, id, at)
	if err != nil {
		return nil, fmt.Errorf("set timeout of sandbox %s: %w", id, err)
	}
	return sb, nil
}
