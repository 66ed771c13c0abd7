package nyx

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestUnpackRefusesHostileArchives(t *testing.T) {
	type entry struct {
		name string
		typ  byte
		body string
	}
	for _, tc := range []struct {
		name    string
		entries []entry
		want    []string
		ok      bool
	}{
		{"plain", []entry{{"a", tar.TypeReg, "x"}, {"d/b", tar.TypeReg, "y"}}, []string{"a", "d/b"}, true},
		{"parent escape", []entry{{"../evil", tar.TypeReg, "x"}}, []string{"../evil"}, false},
		{"absolute", []entry{{"/tmp/evil", tar.TypeReg, "x"}}, []string{"/tmp/evil"}, false},
		{"unclean", []entry{{"d/../a", tar.TypeReg, "x"}}, []string{"d/../a"}, false},
		{"symlink", []entry{{"l", tar.TypeSymlink, ""}}, []string{"l"}, false},
		{"duplicate", []entry{{"a", tar.TypeReg, "x"}, {"a", tar.TypeReg, "y"}}, []string{"a"}, false},
		{"file not in metadata", []entry{{"a", tar.TypeReg, "x"}, {"b", tar.TypeReg, "y"}}, []string{"a"}, false},
		{"file missing", []entry{{"a", tar.TypeReg, "x"}}, []string{"a", "b"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range tc.entries {
				hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Size: int64(len(e.body)), Mode: 0o600, Linkname: "/etc/passwd"}
				if e.typ != tar.TypeReg {
					hdr.Size = 0
				}
				tw.WriteHeader(hdr)
				tw.Write([]byte(e.body))
			}
			tw.Close()
			parent := t.TempDir()
			dir := filepath.Join(parent, "in")
			os.Mkdir(dir, 0o700)
			err := unpack(&buf, dir, tc.want)
			if (err == nil) != tc.ok {
				t.Fatalf("unpack: %v, want ok=%v", err, tc.ok)
			}
			if _, err := os.Lstat(filepath.Join(parent, "evil")); err == nil {
				t.Fatal("a file was written outside the directory")
			}
		})
	}
}

func TestUnpackWritesZeroBlocksAsHoles(t *testing.T) {
	data := make([]byte, 8<<20)
	copy(data[3<<20:], "not zero")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "memory", Typeflag: tar.TypeReg, Size: int64(len(data)), Mode: 0o600})
	tw.Write(data)
	tw.Close()
	dir := t.TempDir()
	if err := unpack(&buf, dir, []string{"memory"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "memory"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("unpacked content differs (%v)", err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "memory"))
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("8 MiB of mostly zeros uses %d bytes on disk; want holes", used)
	}
}
