package microvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testRAM returns size bytes with a few non-zero pages and its digest.
func testRAM(size int) ([]byte, string) {
	b := make([]byte, size)
	copy(b[0:], "first page")
	copy(b[5*pageSize+100:], "middle")
	copy(b[size-3:], "end")
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func TestCopyRAMKeepsHoles(t *testing.T) {
	const size = 64 * pageSize
	ram, want := testRAM(size)
	src, err := newRAMFile("test", size)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.WriteAt(ram, 0); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), snapRAM)
	got, err := saveRAM(context.Background(), src, path, size)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("digest %s, want %s", got, want)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(ram) {
		t.Error("the saved memory differs from the sandbox's")
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	// Three non-zero pages written; file systems may round up a little.
	if st.Blocks*512 > 16*pageSize {
		t.Errorf("saved memory takes %d bytes on disk, want holes where it is zero", st.Blocks*512)
	}
}

func TestRAMCache(t *testing.T) {
	const size = 16 * pageSize
	ram, digest := testRAM(size)
	dir := t.TempDir()
	path := filepath.Join(dir, snapRAM)
	if err := os.WriteFile(path, ram, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := newRAMCache()
	f, err := c.get(ctx, digest, path, size)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil || string(got) != string(ram) {
		t.Fatalf("sealed memory differs (%v)", err)
	}
	// Sealed: nobody changes what other sandboxes map.
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Error("a write to the sealed memory succeeded")
	}
	if err := f.Truncate(2 * size); err == nil {
		t.Error("the sealed memory grew")
	}
	if _, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Error("a shared writable map of the sealed memory succeeded")
	}
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("a private map (what QEMU does): %v", err)
	}
	m[0] = 'X' // copy-on-write
	_ = unix.Munmap(m)
	if _, err := f.ReadAt(got[:1], 0); err != nil || got[0] != 'f' {
		t.Errorf("a private write reached the sealed memory: %q %v", got[:1], err)
	}
	// A second get is the same file, not read again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	f2, err := c.get(ctx, digest, path, size)
	if err != nil {
		t.Fatalf("second get: %v", err)
	}
	var st1, st2 unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(f2.Fd()), &st2); err != nil || st1.Ino != st2.Ino {
		t.Errorf("second get is another memory (%v)", err)
	}
	f.Close()
	f2.Close()

	for _, tt := range []struct {
		name   string
		data   []byte
		size   int64
		digest string
	}{
		{"changed byte", append([]byte("X"), ram[1:]...), size, digest},
		{"short file", ram[:size-pageSize], size, digest},
		{"other digest", ram, size, "00" + digest[2:]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), snapRAM)
			if err := os.WriteFile(p, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			c := newRAMCache()
			if _, err := c.get(ctx, tt.digest, p, tt.size); !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("get: %v, want ErrInvalid", err)
			}
			if len(c.entries) != 0 {
				t.Error("a refused memory stayed in the cache")
			}
		})
	}
}

func TestRAMCacheEvicts(t *testing.T) {
	const size = pageSize
	c := newRAMCache()
	var first string
	for i := range maxCachedRAM + 1 {
		ram := make([]byte, size)
		ram[0] = byte(i + 1)
		sum := sha256.Sum256(ram)
		p := filepath.Join(t.TempDir(), snapRAM)
		if err := os.WriteFile(p, ram, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := c.get(context.Background(), hex.EncodeToString(sum[:]), p, size)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if i == 0 {
			first = hex.EncodeToString(sum[:])
		}
	}
	if len(c.entries) != maxCachedRAM || len(c.order) != maxCachedRAM {
		t.Errorf("%d entries, %d in order, want %d", len(c.entries), len(c.order), maxCachedRAM)
	}
	if c.entries[first] != nil {
		t.Error("the least recently used memory is still cached")
	}
}

func TestValidDigest(t *testing.T) {
	sum := sha256.Sum256(nil)
	for _, tt := range []struct {
		d    string
		want bool
	}{
		{hex.EncodeToString(sum[:]), true},
		{"", false},
		{"abc", false},
		{"../../" + hex.EncodeToString(sum[:])[6:], false},
	} {
		if got := validDigest(tt.d); got != tt.want {
			t.Errorf("validDigest(%q) = %v", tt.d, got)
		}
	}
}
