package microvm

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRotatingLog(t *testing.T) {
	tests := []struct {
		name           string
		writes         []int
		wantCur, want1 int64
	}{
		{"under the cap", []int{10, 20}, 30, -1},
		{"rotates at the cap", []int{60, 60}, 60, 60},
		{"rotates again, keeping one old file", []int{60, 60, 60}, 60, 60},
		{"a write past the cap keeps its tail", []int{500}, 100, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			l, err := openRotatingLog(path, 100)
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range tt.writes {
				if w, err := l.Write(bytes.Repeat([]byte{'a' + byte(i)}, n)); err != nil || w != n {
					t.Fatalf("write %d: %d, %v", n, w, err)
				}
			}
			l.Close()
			size := func(p string) int64 {
				fi, err := os.Stat(p)
				if err != nil {
					return -1
				}
				return fi.Size()
			}
			if got := size(path); got != tt.wantCur {
				t.Errorf("console.log: %d bytes, want %d", got, tt.wantCur)
			}
			if got := size(path + ".1"); got != tt.want1 {
				t.Errorf("console.log.1: %d bytes, want %d", got, tt.want1)
			}
		})
	}
}

func TestReadTailRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "admin.key")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "console.log")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	if b, err := readTail(link, 100); err == nil {
		t.Fatalf("read %q through a symlink", b)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte("x"), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := readTail(filepath.Join(dir, "big"), 100); err != nil || len(b) != 100 {
		t.Fatalf("tail: %d bytes, %v; want 100", len(b), err)
	}
}
