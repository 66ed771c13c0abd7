// Package runtimes opens Kampe's runtimes by name — "gvisor", "docker",
// "containerd" — for a server's --runtimes flag. A backend this host cannot
// run still opens, as an Unavailable runtime whose fingerprint says why, so
// the node can show what it lacks.
package runtimes

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/containerd"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/gvisor"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Names are the runtimes this package opens.
var Names = []string{gvisor.Name, docker.Name, containerd.Name}

// Config is what the runtimes need from the server.
type Config struct {
	// DataDir is the server's data directory; each runtime keeps its state
	// under DataDir/<name>.
	DataDir string
	// Runsc is the runsc binary (default: on PATH, else scripts/runsc.sh's).
	Runsc string
	// DockerHost is the Docker daemon (default: $DOCKER_HOST or its socket).
	DockerHost string
	// ContainerdAddress is containerd's socket (default /run/containerd/containerd.sock).
	ContainerdAddress string
	Log               *slog.Logger
}

// Known reports whether name is a runtime this package opens.
func Known(name string) bool {
	for _, n := range Names {
		if n == name {
			return true
		}
	}
	return false
}

// Open returns the runtime called name. An unknown name is ErrInvalid; a
// known one the host cannot run is an Unavailable runtime, not an error.
func Open(ctx context.Context, name string, cfg Config) (tartarus.Runtime, error) {
	if cfg.DataDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtimes: no data directory")
	}
	dir := filepath.Join(cfg.DataDir, name)
	switch name {
	case gvisor.Name:
		rt, err := gvisor.New(gvisor.Options{StateDir: dir, Runsc: cfg.Runsc, Log: cfg.Log})
		if err != nil {
			return &Unavailable{RuntimeName: name, Reason: err.Error()}, nil
		}
		return rt, nil
	case docker.Name:
		rt, err := docker.New(docker.Options{Host: cfg.DockerHost, CacheDir: dir, Log: cfg.Log})
		if err != nil {
			return &Unavailable{RuntimeName: name, Reason: err.Error()}, nil
		}
		return rt, nil
	case containerd.Name:
		rt, err := containerd.New(containerd.Options{Address: cfg.ContainerdAddress, CacheDir: dir, Log: cfg.Log})
		if err != nil {
			return &Unavailable{RuntimeName: name, Reason: err.Error()}, nil
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		return rt, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtime %q (this package offers %v)", name, Names)
}

// Unavailable is a runtime the host cannot run. Its fingerprint says why;
// every call that would need the backend fails with ErrUnavailable.
type Unavailable struct {
	RuntimeName string
	Reason      string
}

var _ tartarus.Runtime = (*Unavailable)(nil)

func (u *Unavailable) err() error {
	return tartarus.Errorf(tartarus.ErrUnavailable, "runtime %s: %s", u.RuntimeName, u.Reason)
}

// Name implements tartarus.Runtime.
func (u *Unavailable) Name() string { return u.RuntimeName }

// Fingerprint implements tartarus.Runtime: not available, with the reason.
func (u *Unavailable) Fingerprint(context.Context) (*tartarus.Fingerprint, error) {
	return &tartarus.Fingerprint{Runtime: u.RuntimeName, Available: false, Reason: u.Reason}, nil
}

// Create implements tartarus.Runtime.
func (u *Unavailable) Create(context.Context, *tartarus.VMConfig) (string, error) {
	return "", u.err()
}

// Start implements tartarus.Runtime.
func (u *Unavailable) Start(context.Context, string) error { return u.err() }

// Exec implements tartarus.Runtime.
func (u *Unavailable) Exec(context.Context, string, *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	return nil, u.err()
}

// Signal implements tartarus.Runtime.
func (u *Unavailable) Signal(context.Context, string, syscall.Signal) error { return u.err() }

// Pause implements tartarus.Runtime.
func (u *Unavailable) Pause(context.Context, string) error { return u.err() }

// Resume implements tartarus.Runtime.
func (u *Unavailable) Resume(context.Context, string) error { return u.err() }

// Destroy implements tartarus.Runtime: it holds nothing, so nothing to do.
func (u *Unavailable) Destroy(context.Context, string) error { return nil }

// List implements tartarus.Runtime: it holds no sandboxes.
func (u *Unavailable) List(context.Context) ([]*tartarus.Instance, error) { return nil, nil }

// Recover implements tartarus.Runtime: nothing to adopt.
func (u *Unavailable) Recover(context.Context) ([]*tartarus.Instance, error) { return nil, nil }

// ReadFile implements tartarus.Runtime.
func (u *Unavailable) ReadFile(context.Context, string, string) (io.ReadCloser, error) {
	return nil, u.err()
}

// WriteFile implements tartarus.Runtime.
func (u *Unavailable) WriteFile(context.Context, string, string, os.FileMode, io.Reader) error {
	return u.err()
}

// ListFiles implements tartarus.Runtime.
func (u *Unavailable) ListFiles(context.Context, string, string) ([]tartarus.FileInfo, error) {
	return nil, u.err()
}

// Stats implements tartarus.Runtime.
func (u *Unavailable) Stats(context.Context, string) (*tartarus.Stats, error) { return nil, u.err() }
