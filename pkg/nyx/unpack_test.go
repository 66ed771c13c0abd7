package nyx

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"testing/iotest"
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
			err := unpack(&buf, dir, tc.want, "")
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
	if err := unpack(&buf, dir, []string{"memory"}, ""); err != nil {
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

func TestStreamPartsRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, partSize - 1, partSize, 2 * partSize, 2*partSize + 12345} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			data := make([]byte, size)
			for i := 0; i < size; i += 4096 {
				copy(data[i:], "page "+strconv.Itoa(i))
			}
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			pw := newPartWriter(tw)
			// Odd write sizes, as a pipe hands them over, then the rest
			// read from a reader.
			rest := data
			for range 3 {
				n := min(len(rest), 65536+17)
				if _, err := pw.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if n, err := pw.ReadFrom(iotest.HalfReader(bytes.NewReader(rest))); err != nil || n != int64(len(rest)) {
				t.Fatalf("ReadFrom: %d, %v; want %d", n, err, len(rest))
			}
			if err := pw.Close(); err != nil {
				t.Fatal(err)
			}
			if pw.size != int64(size) || pw.parts != max(1, (size+partSize-1)/partSize) {
				t.Errorf("wrote %d bytes in %d parts", pw.size, pw.parts)
			}
			tw.WriteHeader(&tar.Header{Name: "vm.json", Typeflag: tar.TypeReg, Size: 2, Mode: 0o600})
			tw.Write([]byte("{}"))
			tw.Close()
			dir := t.TempDir()
			if err := unpack(&buf, dir, []string{"memory", "vm.json"}, "memory"); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, "memory"))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("unpacked stream: %d bytes, want %d byte-exact (%v)", len(got), len(data), err)
			}
		})
	}
}

func TestUnpackRefusesHostileStreams(t *testing.T) {
	type entry struct {
		name string
		size int
	}
	full := partSize
	for _, tc := range []struct {
		name    string
		entries []entry
		stream  string
		want    []string
		ok      bool
	}{
		{"two parts", []entry{{"stream.part-000000", full}, {"stream.part-000001", 5}, {"vm.json", 2}}, "memory", []string{"memory", "vm.json"}, true},
		{"at the limit", []entry{{"stream.part-000000", full}, {"stream.part-000001", full}, {"stream.part-000002", full}}, "memory", []string{"memory"}, true},
		{"too many parts", []entry{{"stream.part-000000", full}, {"stream.part-000001", full}, {"stream.part-000002", full}, {"stream.part-000003", 1}}, "memory", []string{"memory"}, false},
		{"parts without a stream in the metadata", []entry{{"stream.part-000000", 5}}, "", []string{"stream.part-000000"}, false},
		{"gap", []entry{{"stream.part-000000", full}, {"stream.part-000002", 5}}, "memory", []string{"memory"}, false},
		{"out of order", []entry{{"stream.part-000001", full}, {"stream.part-000000", 5}}, "memory", []string{"memory"}, false},
		{"repeated", []entry{{"stream.part-000000", full}, {"stream.part-000000", full}}, "memory", []string{"memory"}, false},
		{"oversize part", []entry{{"stream.part-000000", full + 1}}, "memory", []string{"memory"}, false},
		{"part after a short part", []entry{{"stream.part-000000", 5}, {"stream.part-000001", 5}}, "memory", []string{"memory"}, false},
		{"part after another entry", []entry{{"stream.part-000000", full}, {"vm.json", 2}, {"stream.part-000001", 5}}, "memory", []string{"memory", "vm.json"}, false},
		{"bad part name", []entry{{"stream.part-00000x", 5}}, "memory", []string{"memory"}, false},
		{"stream also as a file, after", []entry{{"stream.part-000000", 5}, {"memory", 5}}, "memory", []string{"memory"}, false},
		{"stream also as a file, before", []entry{{"memory", 5}, {"stream.part-000000", 5}}, "memory", []string{"memory"}, false},
		{"no parts", []entry{{"vm.json", 2}}, "memory", []string{"memory", "vm.json"}, false},
		{"old format: one plain entry", []entry{{"memory", 5}, {"vm.json", 2}}, "", []string{"memory", "vm.json"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range tc.entries {
				tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Size: int64(e.size), Mode: 0o600})
				tw.Write(bytes.Repeat([]byte{'m'}, e.size))
			}
			tw.Close()
			err := unpackLimited(&buf, t.TempDir(), tc.want, tc.stream, 3)
			if (err == nil) != tc.ok {
				t.Fatalf("unpack: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
