package hecatoncheir

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUntarFiles: a shared snapshot archive unpacks plain files, sparse
// where they are zeros, and refuses anything else another node could
// send: a path, a climb out, a link, a device, too many files.
func TestUntarFiles(t *testing.T) {
	type entry struct {
		name string
		typ  byte
		body []byte
	}
	pack := func(es ...entry) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, e := range es {
			tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o600, Size: int64(len(e.body)), Linkname: "/etc/passwd"})
			tw.Write(e.body)
		}
		tw.Close()
		return b.Bytes()
	}
	memory := append(make([]byte, 256<<10), []byte("end")...)

	dir := t.TempDir()
	if err := untarFiles(bytes.NewReader(pack(entry{"memory", tar.TypeReg, memory}, entry{"config.json", tar.TypeReg, []byte("{}")})), dir); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "memory"))
	if err != nil || !bytes.Equal(got, memory) {
		t.Fatalf("memory: %d bytes, %v", len(got), err)
	}

	many := make([]entry, maxSnapshotFiles+1)
	for i := range many {
		many[i] = entry{strings.Repeat("f", i+1), tar.TypeReg, nil}
	}
	for name, archive := range map[string][]byte{
		"path":     pack(entry{"sub/memory", tar.TypeReg, nil}),
		"climb":    pack(entry{"../memory", tar.TypeReg, nil}),
		"absolute": pack(entry{"/tmp/memory", tar.TypeReg, nil}),
		"symlink":  pack(entry{"memory", tar.TypeSymlink, nil}),
		"device":   pack(entry{"memory", tar.TypeChar, nil}),
		"hidden":   pack(entry{".complete", tar.TypeReg, nil}),
		"too many": pack(many...),
	} {
		into := t.TempDir()
		if err := untarFiles(bytes.NewReader(archive), into); err == nil {
			t.Errorf("%s: unpacked", name)
		}
	}
}
