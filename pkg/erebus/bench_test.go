package erebus_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
)

const benchObjectSize = 64 << 20

func benchData() []byte {
	r := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, benchObjectSize)
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// BenchmarkLocalPut measures streaming a 64 MiB object in: hash, write,
// fsync, rename, directory fsync.
func BenchmarkLocalPut(b *testing.B) {
	s, err := erebus.NewLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	data := benchData()
	b.SetBytes(benchObjectSize)
	for b.Loop() {
		if _, err := s.Put(context.Background(), "bench/object", bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLocalGet measures streaming a 64 MiB object out with checksum
// verification (from the page cache: the object was just written).
func BenchmarkLocalGet(b *testing.B) {
	s, err := erebus.NewLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Put(context.Background(), "bench/object", bytes.NewReader(benchData())); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(benchObjectSize)
	for b.Loop() {
		rc, _, err := s.Get(context.Background(), "bench/object")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, rc, buf); err != nil {
			b.Fatal(err)
		}
		rc.Close()
	}
}
