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
	done := a.work.begin(id)
	rc, err := rt.ReadFile(ctx, id, path)
	if err != nil {
		done()
		return nil, err
	}
	return &countedReader{ReadCloser: rc, done: done}, nil
}

// WriteFile streams r into a file of a running sandbox, waking it if hibernated.
func (a *Agent) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	_, rt, err := a.awake(ctx, id)
	if err != nil {
		return err
	}
	defer a.work.begin(id)()
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

// countedReader ends its call's count in the work counter when closed.
type countedReader struct {
	io.ReadCloser
	done func()
}

func (r *countedReader) Close() error {
	defer r.done()
	return r.ReadCloser.Close()
}
