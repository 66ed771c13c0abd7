package microvm

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"os/exec"
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

// TestQEMULogCapped: a process given startQEMULog's pipe as stdout and
// stderr (as QEMU is) that writes 8 MiB leaves at most two files of the cap
// on the host, the newest bytes kept, and done closes when it exits.
func TestQEMULogCapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qemu.log")
	const capBytes = 64 << 10
	w, done, err := startQEMULog(path, capBytes, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "head -c 8388608 /dev/zero | tr '\\0' x; echo last-words >&2")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	<-done
	for _, f := range []string{path, path + ".1"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatalf("%s: %v (8 MiB should have rotated it)", f, err)
		}
		if fi.Size() > capBytes {
			t.Errorf("%s: %d bytes, more than the cap %d", f, fi.Size(), capBytes)
		}
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, []byte("last-words\n")) {
		t.Errorf("qemu.log does not end with the last message: %q", b[max(0, len(b)-40):])
	}
}
