package erebus_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestLocalConformance(t *testing.T) {
	dir := t.TempDir()
	s, err := erebus.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	erebustest.Run(t, s, erebustest.Options{Corrupt: func(t *testing.T, key string, how erebustest.Damage) {
		p := filepath.Join(dir, "objects", filepath.FromSlash(key))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		switch how {
		case erebustest.FlipByte:
			b[len(b)/2] ^= 0x40
		case erebustest.Truncate:
			b = b[:len(b)-1]
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}})
}

func TestValidKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"a", true},
		{"sleep/sb-1/2026-11-25T21:41:28Z", true},
		{"snapshots/abc/data.tar.zst", true},
		{".hidden/x", true},
		{"a+b=c@d,e~f", true},
		{"", false},
		{"/a", false},
		{"a/", false},
		{"a//b", false},
		{"..", false},
		{"a/../../etc/passwd", false},
		{"./a", false},
		{`a\b`, false},
		{"a b", false},
		{"a\x00b", false},
		{"é", false},
		{"a\nb", false},
		{strings.Repeat("a", 201), false},
		{strings.Repeat("a/", 512) + "a", false},
		{strings.Repeat("abc/", 200) + "x", true},
	} {
		err := erebus.ValidKey(tc.key)
		if (err == nil) != tc.ok {
			t.Errorf("ValidKey(%.40q) = %v, want ok=%v", tc.key, err, tc.ok)
		}
		if err != nil && !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("ValidKey(%.40q) error %v does not wrap ErrInvalid", tc.key, err)
		}
	}
}

// FuzzValidKey checks that every key ValidKey accepts is a clean, local,
// relative path, and that the store keeps its object inside its directory.
func FuzzValidKey(f *testing.F) {
	for _, k := range []string{"a", "a/b", "../x", "a/./b", "/etc/passwd", "a\\..\\b", "a/b/", ".", "..a/b..", "x:y"} {
		f.Add(k)
	}
	dir := f.TempDir()
	s, err := erebus.NewLocal(dir)
	if err != nil {
		f.Fatal(err)
	}
	objects := filepath.Join(dir, "objects") + string(filepath.Separator)
	f.Fuzz(func(t *testing.T, key string) {
		if erebus.ValidKey(key) != nil {
			if _, err := s.Put(t.Context(), key, strings.NewReader("x")); !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("Put(%q) accepted an invalid key: %v", key, err)
			}
			return
		}
		if !filepath.IsLocal(key) || filepath.Clean(key) != key || strings.Contains(key, `\`) {
			t.Fatalf("ValidKey accepted %q, which is not a clean local path", key)
		}
		p := filepath.Join(dir, "objects", key)
		if !strings.HasPrefix(p, objects) {
			t.Fatalf("key %q maps outside the store: %s", key, p)
		}
		// A valid key may still clash with an object that is its prefix;
		// anything else must round-trip.
		if _, err := s.Put(t.Context(), key, strings.NewReader(key)); err != nil {
			if errors.Is(err, tartarus.ErrFailedPrecondition) {
				return
			}
			t.Fatalf("Put(%q): %v", key, err)
		}
		rc, _, err := s.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(got) != key {
			t.Fatalf("Get(%q) = %q, %v", key, got, err)
		}
	})
}

func TestLocalKeyConflicts(t *testing.T) {
	s, err := erebus.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := s.Put(ctx, "a", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "a/b", strings.NewReader("y")); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Put under an object: %v, want ErrFailedPrecondition", err)
	}
	if _, err := s.Put(ctx, "c/d", strings.NewReader("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "c", strings.NewReader("x")); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Put over a prefix: %v, want ErrFailedPrecondition", err)
	}
	if _, _, err := s.Get(ctx, "c"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Get of a prefix: %v, want ErrNotFound", err)
	}
	if _, _, err := s.Get(ctx, "a/b"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Get under an object: %v, want ErrNotFound", err)
	}
}

func TestLocalDamagedHeader(t *testing.T) {
	dir := t.TempDir()
	s, err := erebus.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "objects", "x")
	for name, damage := range map[string]func([]byte) []byte{
		"magic":    func(b []byte) []byte { b[0] = 'E'; return b },
		"checksum": func(b []byte) []byte { b[30] = 'z'; return b },
		"size":     func(b []byte) []byte { return append(b, 'x') },
		"short":    func(b []byte) []byte { return b[:50] },
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := s.Put(t.Context(), "x", strings.NewReader("hello")); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.Get(t.Context(), "x"); !errors.Is(err, erebus.ErrCorrupt) {
				t.Errorf("Get: %v, want ErrCorrupt", err)
			}
			if _, err := s.Stat(t.Context(), "x"); !errors.Is(err, erebus.ErrCorrupt) {
				t.Errorf("Stat: %v, want ErrCorrupt", err)
			}
			objs, err := s.List(t.Context(), "")
			if err != nil || len(objs) != 1 || objs[0].Checksum != "" {
				t.Errorf("List = %+v, %v; want the damaged object listed without checksum", objs, err)
			}
		})
	}
}

func TestLocalRemovesLeftovers(t *testing.T) {
	dir := t.TempDir()
	if _, err := erebus.NewLocal(dir); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(dir, "tmp", "put-123")
	if err := os.WriteFile(left, []byte("half a write"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := erebus.NewLocal(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover temp file still there: %v", err)
	}
}

// TestLocalDiskFull mounts a 4 MiB tmpfs and fills it: Put must fail with
// ErrResourceExhausted (and ENOSPC), keep the previous object intact and
// leave no temp file behind. It needs root to mount.
func TestLocalDiskFull(t *testing.T) {
	dir := mountTmpfs(t, "4m")
	s, err := erebus.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := s.Put(ctx, "keep", strings.NewReader("precious")); err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "big", bytes.NewReader(make([]byte, 8<<20)))
	if !errors.Is(err, tartarus.ErrResourceExhausted) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put beyond the disk: %v, want ErrResourceExhausted and ENOSPC", err)
	}
	if _, err := s.Stat(ctx, "big"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("failed Put left an object: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("failed Put left %d temp files", len(ents))
	}
	rc, _, err := s.Get(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, err := io.ReadAll(rc); err != nil || string(b) != "precious" {
		t.Fatalf("older object after disk full: %q, %v", b, err)
	}
	// Space freed: writes work again.
	if _, err := s.Put(ctx, "small", strings.NewReader("ok")); err != nil {
		t.Fatalf("Put after the failure: %v", err)
	}
}

func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// patternReader yields n bytes of a repeating pattern without allocating.
type patternReader struct {
	n       int64
	pattern [4099]byte // a length that does not divide the buffer sizes
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	for i := 0; i < len(b); {
		i += copy(b[i:], p.pattern[:])
	}
	p.n -= int64(len(b))
	return len(b), nil
}

// TestLocalStreams checks that objects stream: moving 64 MiB in and out
// allocates a small, fixed amount, not the object's size.
func TestLocalStreams(t *testing.T) {
	s, err := erebus.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	put := allocated(func() {
		r := &patternReader{n: size}
		for i := range r.pattern {
			r.pattern[i] = byte(i * 7)
		}
		if _, err := s.Put(t.Context(), "big", r); err != nil {
			t.Fatal(err)
		}
	})
	get := allocated(func() {
		rc, _, err := s.Get(t.Context(), "big")
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if n, err := io.CopyBuffer(io.Discard, rc, make([]byte, 64<<10)); err != nil || n != size {
			t.Fatalf("read %d bytes: %v", n, err)
		}
	})
	t.Logf("Put allocated %d KiB, Get %d KiB for a %d MiB object", put>>10, get>>10, size>>20)
	if put > 8<<20 || get > 8<<20 {
		t.Errorf("Put allocated %d bytes, Get %d, for %d bytes: not streaming", put, get, size)
	}
}
