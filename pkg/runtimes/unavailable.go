package runtimes

import (
	"context"
	"io"
	"os"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

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
