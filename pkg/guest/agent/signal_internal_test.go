package agent

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseStatPPID(t *testing.T) {
	tests := []struct {
		in   string
		ppid int
		ok   bool
	}{
		{"42 (sh) S 7 42 42 0 -1", 7, true},
		{"42 (a) b) (c) R 9 1 1", 9, true}, // comm with spaces and parens
		{"2 (kthreadd) S 0 0 0", 0, true},
		{"42 (sh", 0, false},
		{"42 (sh) S", 0, false},
		{"42 (sh) S x", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		pp, ok := parseStatPPID([]byte(tc.in))
		if pp != tc.ppid || ok != tc.ok {
			t.Errorf("parseStatPPID(%q) = %d, %v; want %d, %v", tc.in, pp, ok, tc.ppid, tc.ok)
		}
	}
}

func TestDescends(t *testing.T) {
	// 1 → 10 → 11 → 12; 2 (kthreadd) → 3; 20 ↔ 21 a cycle.
	parents := map[int]int{1: 0, 10: 1, 11: 10, 12: 11, 2: 0, 3: 2, 20: 21, 21: 20}
	tests := []struct {
		pid, ancestor int
		want          bool
	}{
		{12, 1, true}, {12, 10, true}, {10, 1, true},
		{1, 1, false}, {3, 1, false}, {12, 2, false},
		{20, 1, false}, {99, 1, false},
	}
	for _, tc := range tests {
		if got := descends(parents, tc.pid, tc.ancestor); got != tc.want {
			t.Errorf("descends(%d, %d) = %v, want %v", tc.pid, tc.ancestor, got, tc.want)
		}
	}
}

func TestReadParentsOfAFakeProc(t *testing.T) {
	dir := t.TempDir()
	for pid, stat := range map[string]string{"1": "1 (init) S 0", "5": "5 (x y) S 1", "self": "junk", "7": "broken"} {
		os.MkdirAll(filepath.Join(dir, pid), 0o755)
		os.WriteFile(filepath.Join(dir, pid, "stat"), []byte(stat), 0o644)
	}
	got, err := readParents(dir)
	if err != nil || len(got) != 2 || got[1] != 0 || got[5] != 1 {
		t.Errorf("readParents = %v, %v", got, err)
	}
}
