package typhon

import (
	"context"
	"io"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
)

// ErebusBlobs keeps evidence in an Erebus store, which checksums every
// object and checks the checksum on every read.
type ErebusBlobs struct{ Store erebus.Store }

var _ BlobStore = ErebusBlobs{}

// Put implements BlobStore.
func (b ErebusBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, string, error) {
	o, err := b.Store.Put(ctx, key, r)
	if err != nil {
		return 0, "", err
	}
	return o.Size, o.Checksum, nil
}

// Get implements BlobStore.
func (b ErebusBlobs) Get(ctx context.Context, key string) (io.ReadCloser, string, error) {
	rc, o, err := b.Store.Get(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return rc, o.Checksum, nil
}
