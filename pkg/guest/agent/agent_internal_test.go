package agent

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

func TestParseCPUTimes(t *testing.T) {
	tests := []struct {
		in      string
		busy    uint64
		total   uint64
		wantErr bool
	}{
		{"cpu  10 2 3 100 5 1 1 0 7 0\ncpu0 1 1 1 1\n", 10 + 2 + 3 + 1 + 1, 10 + 2 + 3 + 100 + 5 + 1 + 1, false},
		{"cpu 1 2 3 4\n", 6, 10, false},
		{"cpu0 1 2 3 4\n", 0, 0, true},
		{"cpu 1 x 3 4\n", 0, 0, true},
		{"", 0, 0, true},
	}
	for _, tc := range tests {
		got, err := parseCPUTimes([]byte(tc.in))
		if (err != nil) != tc.wantErr || got.busy != tc.busy || got.total != tc.total {
			t.Errorf("parseCPUTimes(%q) = %+v, %v", tc.in, got, err)
		}
	}
	if p, ok := percent(cpuTimes{10, 100}, cpuTimes{15, 200}); !ok || p != 5 {
		t.Errorf("percent = %v %v", p, ok)
	}
	if _, ok := percent(cpuTimes{10, 100}, cpuTimes{10, 100}); ok {
		t.Error("percent of an empty window")
	}
}

func TestParseMeminfo(t *testing.T) {
	in := "MemTotal:        2048000 kB\nMemFree:          100 kB\nMemAvailable:    1024000 kB\n"
	total, avail, err := parseMeminfo([]byte(in))
	if err != nil || total != 2048000 || avail != 1024000 {
		t.Fatalf("%d %d %v", total, avail, err)
	}
	if _, _, err := parseMeminfo([]byte("MemTotal: 1 kB\n")); err == nil {
		t.Fatal("no MemAvailable accepted")
	}
}

func TestStatFlags(t *testing.T) {
	tests := []struct {
		in    string
		flags uint64
		ok    bool
	}{
		{"1 (init) S 0 1 1 0 -1 4194560 100 0", 4194560, true},
		{"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0", 2129984, true},
		{"42 (a) b) c) R 1 42 42 0 -1 4194304 0", 4194304, true},
		{"42 (broken", 0, false},
		{"42 (x) S 1", 0, false},
	}
	for _, tc := range tests {
		f, ok := statFlags([]byte(tc.in))
		if f != tc.flags || ok != tc.ok {
			t.Errorf("statFlags(%q) = %d %v", tc.in, f, ok)
		}
	}
	if 2129984&pfKthread == 0 || 4194560&pfKthread != 0 {
		t.Error("kernel thread flag misread")
	}
}

func TestBuildEnv(t *testing.T) {
	got := buildEnv(map[string]string{"HOME": "/home/u", "X": "1"})
	want := []string{"HOME=/home/u", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "X=1"}
	if !slices.Equal(got, want) {
		t.Fatalf("env = %q", got)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	plain := filepath.Join(dir, "plain")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(plain, []byte("x"), 0o644)
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "plain"), []byte("#!/bin/sh\n"), 0o755)
	tests := []struct {
		name, path string
		want       string
		code       int
	}{
		{"tool", dir, exe, 0},
		{"missing", dir, "", exitNotFound},
		{"plain", dir, "", exitNotExecutable},
		{"plain", dir + ":" + other, filepath.Join(other, "plain"), 0}, // a shell keeps looking
		{exe, "", exe, 0},
		{filepath.Join(dir, "nope"), dir, "", exitNotFound},
		{plain, "", "", exitNotExecutable},
		{dir, "", "", exitNotExecutable},
	}
	for _, tc := range tests {
		got, code, err := lookPath(tc.name, tc.path)
		if code != tc.code || (tc.code == 0 && (err != nil || got != tc.want)) || (tc.code != 0 && err == nil) {
			t.Errorf("lookPath(%q, %q) = %q %d %v", tc.name, tc.path, got, code, err)
		}
	}
	if msg := shellMessage("foo", fs.ErrNotExist); msg != "foo: command not found" {
		t.Error(msg)
	}
}

func TestActivity(t *testing.T) {
	var a activity
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a.touch(t0)
	a.touch(t0.Add(-time.Hour)) // late reports never move it back
	if !a.get().Equal(t0) {
		t.Fatal(a.get())
	}
}

// TestCPUActivity: a sampling window with user CPU counts as activity.
func TestCPUActivity(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	a := New(Options{Clock: clk, SampleInterval: time.Hour})
	defer a.Close()
	start := a.activity.get()
	a.sampleOnce()
	// Burn CPU for a moment, then sample as the loop does.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	clk.Advance(2 * time.Second)
	now := clk.Now()
	a.sampleOnce()
	a.cpu.mu.Lock()
	pct := a.cpu.pct
	a.cpu.mu.Unlock()
	if pct <= activeCPUPercent {
		t.Skipf("busy loop showed only %.1f%% CPU", pct)
	}
	if !a.activity.get().Equal(now) {
		t.Fatalf("activity %v, want %v (before %v)", a.activity.get(), now, start)
	}
}

func TestSeedRNG(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("RNDADDENTROPY needs CAP_SYS_ADMIN")
	}
	// Adding fresh random bytes to the pool is harmless on any machine.
	b := make([]byte, 64)
	rand.Read(b)
	if err := SeedRNG(b); err != nil {
		if errors.Is(err, fs.ErrPermission) || strings.Contains(err.Error(), "operation not permitted") {
			t.Skipf("not allowed here: %v", err)
		}
		t.Fatal(err)
	}
}
