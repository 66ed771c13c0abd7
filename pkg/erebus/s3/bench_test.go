package s3_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
)

const benchSize = 64 << 20

// BenchmarkStores streams a 64 MiB object into and out of the local store
// (fsynced files) and the S3 store on a real SeaweedFS on loopback, in one
// run so the figures compare. Get includes checksum verification on both.
func BenchmarkStores(b *testing.B) {
	srv := erebustest.StartSeaweedFS(b)
	local, err := erebus.NewLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	stores := []struct {
		name string
		st   erebus.Store
	}{
		{"local", local},
		{"seaweedfs", newStore(b, config(srv, "bench", ""))},
	}
	data := make([]byte, benchSize)
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < len(data); i += 8 {
		binary.LittleEndian.PutUint64(data[i:], r.Uint64())
	}
	ctx := context.Background()
	for _, s := range stores {
		b.Run("put/"+s.name, func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				if _, err := s.st.Put(ctx, "bench/object", bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	for _, s := range stores {
		b.Run("get/"+s.name, func(b *testing.B) {
			if _, err := s.st.Put(ctx, "bench/object", bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(benchSize)
			for b.Loop() {
				rc, _, err := s.st.Get(ctx, "bench/object")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, rc, buf); err != nil {
					b.Fatal(err)
				}
				rc.Close()
			}
		})
	}
}
