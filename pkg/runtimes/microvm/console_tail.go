package microvm

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var _ tartarus.ConsoleReader = (*Driver)(nil)

// Console implements tartarus.ConsoleReader: the last n bytes of the
// sandbox's serial console, as QEMU wrote it on the host.
func (d *Driver) Console(_ context.Context, id string, n int) ([]byte, error) {
	v, err := d.get(id)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(v.path("console.log"))
	if err != nil {
		return nil, fmt.Errorf("console of sandbox %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("console of sandbox %s: %w", id, err)
	}
	off := fi.Size() - int64(n)
	if off < 0 {
		off = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, fmt.Errorf("console of sandbox %s: %w", id, err)
	}
	return b, nil
}
