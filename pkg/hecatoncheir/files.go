package hecatoncheir

import (
	"context"
	"io"
	"os"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ReadFile streams a file out of a running sandbox, waking it if hibernated.
func (a *Agent) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	return rt.ReadFile(ctx, id, path)
}

// WriteFile streams r into a file of a running sandbox, waking it if hibernated.
func (a *Agent) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return err
	}
	defer a.touch(ctx, id)
	return rt.WriteFile(ctx, id, path, mode, r)
}

// ListFiles lists a directory of a running sandbox, waking it if hibernated.
func (a *Agent) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	return rt.ListFiles(ctx, id, path)
}
