package containertest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// HostFiles is a fingerprint of host trees: path → content hash (files),
// "link:" + target (symbolic links) or "dir" (directories).
type HostFiles map[string]string

// HashHost fingerprints the trees under dirs; unreadable entries are
// recorded as such, so a later change to them still shows.
func HashHost(t testing.TB, dirs ...string) HostFiles {
	t.Helper()
	h := HostFiles{}
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				h[p] = "error: " + err.Error()
				return nil
			}
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				l, _ := os.Readlink(p)
				h[p] = "link:" + l
			case d.IsDir():
				h[p] = "dir"
			case d.Type().IsRegular():
				f, err := os.Open(p)
				if err != nil {
					h[p] = "error: " + err.Error()
					return nil
				}
				sum := sha256.New()
				_, _ = io.Copy(sum, f)
				f.Close()
				h[p] = hex.EncodeToString(sum.Sum(nil))
			default:
				h[p] = d.Type().String()
			}
			return nil
		})
	}
	return h
}

// Untouched fails the test for every entry of before that changed or went
// away, and every new entry not under one of the allowed prefixes.
func (before HostFiles) Untouched(t testing.TB, after HostFiles, allowed ...string) {
	t.Helper()
	for p, v := range before {
		if w, ok := after[p]; !ok {
			t.Errorf("host file %s was removed", p)
		} else if w != v {
			t.Errorf("host file %s changed (%s → %s)", p, v, w)
		}
	}
next:
	for p := range after {
		if _, ok := before[p]; ok {
			continue
		}
		for _, a := range allowed {
			if p == a || strings.HasPrefix(p, a+"/") {
				continue next
			}
		}
		t.Errorf("host file %s appeared", p)
	}
}
