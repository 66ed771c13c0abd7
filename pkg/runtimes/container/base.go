// Package container holds what the container drivers (docker, containerd
// and gvisor) share, written once: the Base each of them embeds (logger,
// clock, activity, the fingerprint once found, CPU accounting, and Exec,
// Signal and the file methods over the driver's own exec), file transfer
// through small shell scripts in the sandbox (Files), the exec helpers
// (CheckExec, Wait, ExitResult), template root filesystems unpacked and
// written as tar streams, and host process helpers.
//
// It imports no driver and no registry, so every driver and the registry
// in package runtimes can import it.
package container

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// OpenFunc returns the exec of sandbox id while it runs; a sandbox that does
// not exist is ErrNotFound, one that does not run ErrFailedPrecondition.
// The exec runs one command, below state checks and activity tracking.
type OpenFunc func(ctx context.Context, id string) (ExecFunc, error)

// ProbeFunc finds what the host offers. keep says the answer holds for the
// driver's life; a daemon that does not answer yet may come up later, so
// that answer is not kept.
type ProbeFunc func(ctx context.Context) (fp *tartarus.Fingerprint, keep bool)

// BaseConfig is what a driver hands NewBase.
type BaseConfig struct {
	// Name is the runtime's name ("docker").
	Name string
	// Log defaults to a logger that discards; Base narrows it to the runtime.
	Log *slog.Logger
	// Clock is the time source for activity and CPU accounting; nil means
	// clock.System{}.
	Clock clock.Clock
	// Open and Probe are the driver's own (required).
	Open  OpenFunc
	Probe ProbeFunc
}

// Base is the part of a container driver that does not depend on its
// backend: logger, clock, activity, the fingerprint once found, and the CPU
// samples behind Stats. A driver embeds the *Base that NewBase returns; its
// promoted Fingerprint, Exec, Signal, ReadFile, WriteFile and ListFiles
// implement those tartarus.Runtime methods over the driver's Probe and Open,
// so every container driver answers them the same way.
type Base struct {
	// Log is the driver's logger, with runtime=<name>.
	Log *slog.Logger
	// Clock is the driver's time source.
	Clock clock.Clock
	// Activity records when each sandbox was last busy.
	Activity *Activity

	name  string
	open  OpenFunc
	probe ProbeFunc

	mu  sync.Mutex
	fp  *tartarus.Fingerprint
	cpu map[string]cpuSample
}

type cpuSample struct {
	at    time.Time
	total uint64 // CPU time used, nanoseconds
}

// NewBase returns the shared part of driver cfg.Name.
func NewBase(cfg BaseConfig) *Base {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	return &Base{Log: cfg.Log.With("runtime", cfg.Name), Clock: cfg.Clock, Activity: NewActivity(cfg.Clock),
		name: cfg.Name, open: cfg.Open, probe: cfg.Probe, cpu: map[string]cpuSample{}}
}

// Fingerprint implements tartarus.Runtime: the driver's probe, kept once it
// says so.
func (b *Base) Fingerprint(ctx context.Context) (*tartarus.Fingerprint, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fp == nil {
		fp, keep := b.probe(ctx)
		if !keep {
			return fp, nil
		}
		b.fp = fp
	}
	fp := *b.fp
	fp.Details = maps.Clone(b.fp.Details)
	return &fp, nil
}

// CheckCreate fails unless the runtime is available and cfg fits what its
// fingerprint allows (CheckLimits).
func (b *Base) CheckCreate(ctx context.Context, cfg *tartarus.VMConfig) error {
	fp, err := b.Fingerprint(ctx)
	if err != nil {
		return err
	}
	if !fp.Available {
		return tartarus.Errorf(tartarus.ErrUnavailable, "%s: %s", b.name, fp.Reason)
	}
	return CheckLimits(fp, cfg)
}

// Exec implements tartarus.Runtime: the driver's exec, with the sandbox
// marked busy meanwhile.
func (b *Base) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	exec, err := b.open(ctx, id)
	if err != nil {
		return nil, err
	}
	end := b.Activity.Begin(id)
	defer end()
	return exec(ctx, req)
}

// KillAllScript sends the signal named $1 to every process of the sandbox
// but its init and the sender: kill(-1) from inside the container.
const KillAllScript = `kill -s "$1" -1 2>/dev/null; exit 0`

// Signal implements tartarus.Runtime by running KillAllScript in the
// sandbox.
func (b *Base) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	return Signal(ctx, id, sig, KillAllScript, b.open)
}

// Signal sends sig to sandbox id by running script (sh, with the signal's
// name as $1) through the exec open returns.
func Signal(ctx context.Context, id string, sig syscall.Signal, script string, open OpenFunc) error {
	name, err := SignalName(sig)
	if err != nil {
		return err
	}
	exec, err := open(ctx, id)
	if err != nil {
		return err
	}
	res, err := exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", script, "sh", name}})
	if err != nil {
		return fmt.Errorf("signal %s: %w", id, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("signal %s: exit code %d", id, res.ExitCode)
	}
	return nil
}

// files returns the Files of a running sandbox and the func that ends the
// transfer (the sandbox is busy until then).
func (b *Base) files(ctx context.Context, id string) (Files, func(), error) {
	exec, err := b.open(ctx, id)
	if err != nil {
		return Files{}, nil, err
	}
	return Files{Exec: exec}, b.Activity.Begin(id), nil
}

// ReadFile implements tartarus.Runtime through Files.
func (b *Base) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	f, end, err := b.files(ctx, id)
	if err != nil {
		return nil, err
	}
	rc, err := f.ReadFile(ctx, path)
	if err != nil {
		end()
		return nil, err
	}
	return &endReader{ReadCloser: rc, end: end}, nil
}

type endReader struct {
	io.ReadCloser
	end func()
}

func (e *endReader) Close() error {
	defer e.end()
	return e.ReadCloser.Close()
}

// WriteFile implements tartarus.Runtime through Files.
func (b *Base) WriteFile(ctx context.Context, id, path string, mode os.FileMode, src io.Reader) error {
	f, end, err := b.files(ctx, id)
	if err != nil {
		return err
	}
	defer end()
	return f.WriteFile(ctx, path, mode, src)
}

// ListFiles implements tartarus.Runtime through Files.
func (b *Base) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	f, end, err := b.files(ctx, id)
	if err != nil {
		return nil, err
	}
	defer end()
	return f.ListFiles(ctx, path)
}

// FillStats completes st for sandbox id: LastActivityAt (now while a
// command runs) and CPUPercent from cpuTotal, the nanoseconds of CPU the
// sandbox has used, since the previous call (0 on the first).
func (b *Base) FillStats(id string, st *tartarus.Stats, cpuTotal uint64) {
	now := b.Clock.Now()
	if t := b.Activity.IdleSince(id); t != nil {
		st.LastActivityAt = *t
	} else {
		st.LastActivityAt = now
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if prev, ok := b.cpu[id]; ok && now.After(prev.at) && cpuTotal >= prev.total {
		st.CPUPercent = float64(cpuTotal-prev.total) / float64(now.Sub(prev.at).Nanoseconds()) * 100
	}
	b.cpu[id] = cpuSample{at: now, total: cpuTotal}
}

// Forget drops what Base keeps about a destroyed sandbox.
func (b *Base) Forget(id string) {
	b.Activity.Forget(id)
	b.mu.Lock()
	delete(b.cpu, id)
	b.mu.Unlock()
}

// PauseResume pauses (pause) or resumes sandbox id, whose backend reports
// state ("running", "paused", "" when it never started): nothing to do when
// it is there already, ErrFailedPrecondition unless it is in the other one,
// else do, after which the sandbox counts as active.
func (b *Base) PauseResume(id string, pause bool, state string, do func() error) error {
	verb, target, from := "resume", "running", "paused"
	if pause {
		verb, target, from = "pause", "paused", "running"
	}
	switch state {
	case target:
		return nil
	case from:
	default:
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "%s %s: sandbox is %s", verb, id, StateName(state))
	}
	if err := do(); err != nil {
		return fmt.Errorf("%s %s: %w", verb, id, err)
	}
	b.Activity.Touch(id)
	return nil
}

// Adopt is Recover for a driver whose list shows all its sandboxes: it
// returns the running and paused ones and destroys the others, which
// stopped while no agent watched them and are of no use.
func (b *Base) Adopt(ctx context.Context, list func(context.Context) ([]*tartarus.Instance, error),
	destroy func(ctx context.Context, id string) error) ([]*tartarus.Instance, error) {
	all, err := list(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	var adopted []*tartarus.Instance
	for _, in := range all {
		if in.State == tartarus.InstanceRunning || in.State == tartarus.InstancePaused {
			adopted = append(adopted, in)
			continue
		}
		b.Log.Info("recover: removing sandbox that no longer runs", "sandbox", in.ID, "state", in.State)
		if err := destroy(ctx, in.ID); err != nil {
			b.Log.Warn("recover: cleanup failed", "sandbox", in.ID, "err", err)
		}
	}
	return adopted, nil
}
