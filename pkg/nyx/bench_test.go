package nyx

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// memoryImage builds a deterministic stand-in for a guest's memory: 4 KiB
// pages of which 70% are zero (never touched), 10% random (compressed or
// encrypted data, entropy pools), 15% text (words, as in page cache of
// scripts and logs), and 5% pointer-like binary (8-byte values sharing their
// high bits, as in heaps and page tables).
func memoryImage(size int) []byte {
	const page = 4096
	r := rand.New(rand.NewPCG(1, 2))
	words := []string{"the", "sandbox", "import", "def", "return", "self", "print", "error", "value",
		"for", "in", "range", "if", "else", "json", "request", "data", "file", "python3", "usr", "lib",
		"/", "=", "(", ")", ":", "\n", "    ", "0", "1", "None", "True", "class", "with", "open"}
	b := make([]byte, size)
	for off := 0; off+page <= size; off += page {
		p := b[off : off+page]
		switch x := r.IntN(100); {
		case x < 70:
		case x < 80:
			for i := range p {
				p[i] = byte(r.Uint32())
			}
		case x < 95:
			for i := 0; i < page; {
				w := words[r.IntN(len(words))]
				i += copy(p[i:], w)
				if i < page {
					p[i] = ' '
					i++
				}
			}
		default:
			base := uint64(0xffff888000000000) + uint64(r.IntN(1<<20))<<12
			for i := 0; i+8 <= page; i += 8 {
				v := base + uint64(r.IntN(1<<16))*8
				for j := range 8 {
					p[i+j] = byte(v >> (8 * j))
				}
			}
		}
	}
	return b
}

// fileSnapshotter "snapshots" by copying one prepared memory file into the
// snapshot directory, as QEMU's migrate-to-file would write it.
type fileSnapshotter struct{ src string }

func (f fileSnapshotter) Snapshot(ctx context.Context, id, dir string) (*tartarus.SnapshotInfo, error) {
	in, err := os.Open(f.src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	out, err := os.Create(filepath.Join(dir, "memory.img"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	n, err := io.Copy(out, in)
	return &tartarus.SnapshotInfo{Template: "base", MemoryBytes: n, Files: []string{"memory.img"}}, err
}

func (f fileSnapshotter) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	_, err := os.Stat(filepath.Join(dir, "memory.img"))
	return err
}

const benchImageSize = 256 << 20

func writeImage(b *testing.B) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), "memory.src")
	if err := os.WriteFile(p, memoryImage(benchImageSize), 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

var levels = []struct {
	name        string
	compression string
	level       zstd.EncoderLevel
}{
	{"none", CompressionNone, zstd.SpeedFastest},
	{"zstd-fastest", CompressionZstd, zstd.SpeedFastest},
	{"zstd-default", CompressionZstd, zstd.SpeedDefault},
	{"zstd-better", CompressionZstd, zstd.SpeedBetterCompression},
}

// nonZeroPages keeps only the pages of img that are not all zero, as
// QEMU's migration stream does (it sends a zero page as a flag).
func nonZeroPages(img []byte) []byte {
	var out []byte
	for off := 0; off+4096 <= len(img); off += 4096 {
		if !allZero(img[off : off+4096]) {
			out = append(out, img[off:off+4096]...)
		}
	}
	return out
}

// BenchmarkPack packs (tar + zstd) to nowhere, per level: the 256 MiB
// memory image, and its non-zero pages alone (what a migration stream
// holds). MB/s are of the input; %stored is output over input.
func BenchmarkPack(b *testing.B) {
	img := memoryImage(benchImageSize)
	dir := b.TempDir()
	inputs := []struct {
		name string
		data []byte
	}{{"guest-256MiB", img}, {"nonzero-pages", nonZeroPages(img)}}
	for _, in := range inputs {
		if err := os.WriteFile(filepath.Join(dir, in.name), in.data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	for _, in := range inputs {
		for _, lv := range levels {
			b.Run(in.name+"/"+lv.name, func(b *testing.B) {
				m := New(nil, nil, Options{Level: lv.level})
				var cw countingWriter
				cw.w = io.Discard
				b.SetBytes(int64(len(in.data)))
				for b.Loop() {
					cw.n = 0
					if _, err := m.pack(lv.compression, &cw, func(tw *tar.Writer) error { return addFiles(tw, dir, []string{in.name}) }); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(100*float64(cw.n)/float64(len(in.data)), "%stored")
			})
		}
	}
}

// BenchmarkCreateRestore runs the whole storage path on a 256 MiB image:
// snapshot files → tar+zstd → local Erebus (fsynced), then fetch → verify →
// decompress → unpack, per level.
func BenchmarkCreateRestore(b *testing.B) {
	src := writeImage(b)
	for _, lv := range levels {
		b.Run(lv.name, func(b *testing.B) {
			dir := b.TempDir()
			store, err := erebus.NewLocal(filepath.Join(dir, "store"))
			if err != nil {
				b.Fatal(err)
			}
			m := New(fileSnapshotter{src}, store, Options{Level: lv.level, TempDir: dir})
			ctx := context.Background()
			var create, restore time.Duration
			var stored int64
			for i := 0; b.Loop(); i++ {
				t := time.Now()
				s, err := m.CreateFromRunning(ctx, "sb", &CreateOptions{ID: fmt.Sprint("s", i), Compression: lv.compression})
				if err != nil {
					b.Fatal(err)
				}
				create += time.Since(t)
				t = time.Now()
				if _, err := m.Restore(ctx, s.ID, &tartarus.VMConfig{ID: "sb2"}); err != nil {
					b.Fatal(err)
				}
				restore += time.Since(t)
				stored = s.CompressedSize
				m.Delete(ctx, s.ID)
			}
			b.ReportMetric(float64(create.Milliseconds())/float64(b.N), "create-ms")
			b.ReportMetric(float64(restore.Milliseconds())/float64(b.N), "restore-ms")
			b.ReportMetric(float64(stored)/(1<<20), "stored-MiB")
		})
	}
}

// BenchmarkRestore restores one stored snapshot of the 256 MiB image
// (SpeedFastest) over and over: fetch, verify, decode, unpack.
func BenchmarkRestore(b *testing.B) {
	src := writeImage(b)
	dir := b.TempDir()
	store, err := erebus.NewLocal(filepath.Join(dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	m := New(fileSnapshotter{src}, store, Options{TempDir: dir})
	ctx := context.Background()
	s, err := m.CreateFromRunning(ctx, "sb", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(benchImageSize)
	for b.Loop() {
		if _, err := m.Restore(ctx, s.ID, &tartarus.VMConfig{ID: "sb2"}); err != nil {
			b.Fatal(err)
		}
	}
}
