// Package hypnostest is the end-to-end suite for a runtime that implements
// tartarus.Snapshotter: it hibernates and wakes a real sandbox through
// Hypnos, Nyx and a local Erebus store, forks one snapshot into two
// sandboxes, and checks that a damaged snapshot is refused. Call Run from
// the runtime's own tests (the microvm driver's, for instance).
//
// What it checks is what the hibernation issue says must hold: a file
// written and a background process started before hibernation are both
// there after wake, and the process continued rather than restarted; no
// process of the sandbox remains on the host while it sleeps; the guest's
// wall clock is right after a restore; two sandboxes restored from one
// snapshot have separate disks and produce different random bytes.
//
// The guest needs a POSIX shell with setsid, cat, date, head and od
// (busybox has them all).
package hypnostest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// callTimeout bounds each call; a microVM under software emulation is slow.
const callTimeout = 3 * time.Minute

// Run runs the suite. rt must implement tartarus.Snapshotter; img is the
// template to boot; memoryMB is the guest's memory (256 is a good size).
func Run(t *testing.T, rt tartarus.Runtime, img *tartarus.Image, memoryMB int) {
	snap, ok := rt.(tartarus.Snapshotter)
	if !ok {
		t.Fatalf("runtime %s does not implement tartarus.Snapshotter", rt.Name())
	}
	dir := t.TempDir()
	store, err := erebus.NewLocal(filepath.Join(dir, "erebus"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	snaps := nyx.New(snap, store, nyx.Options{TempDir: tmp})
	cfgs := map[string]*tartarus.VMConfig{}
	hyp, err := hypnos.NewHypnosManager(hypnos.Deps{
		Runtime: rt, Snapshots: snaps, Records: hypnos.NewStoreRecords(store, ""),
		Sandboxes: sourceFunc(func(id string) *tartarus.VMConfig { return cfgs[id] }),
	}, hypnos.HypnosConfig{})
	if err != nil {
		t.Fatal(err)
	}

	newCfg := func(name string) *tartarus.VMConfig {
		cfg := &tartarus.VMConfig{ID: fmt.Sprintf("hyp-%s-%d", name, time.Now().UnixNano()%1e6),
			Template: img.Name, Image: img, CPUs: 1, MemoryMB: memoryMB}
		cfgs[cfg.ID] = cfg
		t.Cleanup(func() { rt.Destroy(context.Background(), cfg.ID) })
		return cfg
	}
	a := newCfg("a")
	if _, err := rt.Create(ctxT(t), a); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := rt.Start(ctxT(t), a.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := rt.WriteFile(ctxT(t), a.ID, "/root/hypnos.txt", 0o644, strings.NewReader("written before sleep")); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	// A background process that counts, detached from the Exec that
	// started it; its counter shows whether it continued or restarted.
	sh(t, rt, a.ID, `setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/hypnos-counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &`)
	waitCounter(t, rt, a.ID, 3)

	t.Run("SleepWake", func(t *testing.T) {
		pid := 0
		if in := find(t, rt, a.ID); in != nil {
			pid = in.Pid
		}
		before := counter(t, rt, a.ID)
		start := time.Now()
		rec, err := hyp.Sleep(ctxT(t), a.ID, nil)
		if err != nil {
			t.Fatalf("Sleep: %v", err)
		}
		t.Logf("hibernated in %v: guest memory %d MiB, stored %.1f MiB (%.0f%%)", time.Since(start),
			rec.MemorySize>>20, float64(rec.CompressedSize)/(1<<20), 100*float64(rec.CompressedSize)/float64(rec.MemorySize))
		if in := find(t, rt, a.ID); in != nil {
			t.Errorf("the runtime still lists the sandbox while it sleeps: %+v", in)
		}
		if pid > 0 {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("process %d of the sleeping sandbox still exists (kill -0: %v)", pid, err)
			}
		}
		// Sleep long enough that a guest clock not set on restore shows it.
		time.Sleep(3 * time.Second)
		start = time.Now()
		if _, err := hyp.Wake(ctxT(t), a.ID); err != nil {
			t.Fatalf("Wake: %v", err)
		}
		t.Logf("woken in %v", time.Since(start))
		if got := sh(t, rt, a.ID, "cat /root/hypnos.txt"); got != "written before sleep" {
			t.Errorf("file after wake: %q", got)
		}
		after := counter(t, rt, a.ID)
		if after < before {
			t.Errorf("counter went from %d to %d: the process restarted", before, after)
		}
		waitCounter(t, rt, a.ID, after+3) // and it keeps counting
		checkClock(t, rt, a.ID)
	})

	t.Run("Fork", func(t *testing.T) {
		s, err := snaps.CreateFromRunning(ctxT(t), a.ID, nil)
		if err != nil {
			t.Fatalf("CreateFromRunning: %v", err)
		}
		if err := rt.Resume(ctxT(t), a.ID); err != nil {
			t.Fatalf("Resume after snapshot: %v", err)
		}
		b, c := newCfg("b"), newCfg("c")
		for _, cfg := range []*tartarus.VMConfig{b, c} {
			if _, err := snaps.Restore(ctxT(t), s.ID, cfg); err != nil {
				t.Fatalf("Restore %s: %v", cfg.ID, err)
			}
			if got := sh(t, rt, cfg.ID, "cat /root/hypnos.txt"); got != "written before sleep" {
				t.Errorf("%s: file %q", cfg.ID, got)
			}
			checkClock(t, rt, cfg.ID)
		}
		sh(t, rt, b.ID, "echo b > /root/only-b")
		for _, id := range []string{a.ID, c.ID} {
			if got := sh(t, rt, id, "cat /root/only-b 2>/dev/null || echo absent"); got != "absent" {
				t.Errorf("a file written in %s shows in %s: disks are shared", b.ID, id)
			}
		}
		rb := sh(t, rt, b.ID, "head -c 32 /dev/urandom | od -An -tx1")
		rc := sh(t, rt, c.ID, "head -c 32 /dev/urandom | od -An -tx1")
		if rb == rc {
			t.Errorf("two sandboxes restored from one snapshot produced the same random bytes: %s", rb)
		}
	})

	t.Run("DamagedSnapshotRefused", func(t *testing.T) {
		s, err := snaps.CreateFromRunning(ctxT(t), a.ID, nil)
		if err != nil {
			t.Fatalf("CreateFromRunning: %v", err)
		}
		if err := rt.Resume(ctxT(t), a.ID); err != nil {
			t.Fatalf("Resume after snapshot: %v", err)
		}
		p := filepath.Join(dir, "erebus", "objects", filepath.FromSlash(s.DataKey))
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0x55
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		d := newCfg("d")
		if _, err := snaps.Restore(ctxT(t), s.ID, d); !errors.Is(err, erebus.ErrCorrupt) {
			t.Errorf("Restore from a damaged snapshot: %v, want ErrCorrupt", err)
		}
		if in := find(t, rt, d.ID); in != nil {
			t.Errorf("a sandbox was created from a damaged snapshot: %+v", in)
		}
	})
}

type sourceFunc func(id string) *tartarus.VMConfig

func (f sourceFunc) SleepInfo(ctx context.Context, id string) (*tartarus.VMConfig, string, error) {
	return f(id), "", nil
}

// sh runs script in the sandbox and returns its trimmed stdout; a failure
// fails the test.
func sh(t *testing.T, rt tartarus.Runtime, id, script string) string {
	t.Helper()
	var out, errb bytes.Buffer
	res, err := rt.Exec(ctxT(t), id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", script}, Stdout: &out, Stderr: &errb, Timeout: time.Minute})
	if err != nil {
		t.Fatalf("exec %q in %s: %v", script, id, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q in %s: exit %d: %s", script, id, res.ExitCode, errb.String())
	}
	return strings.TrimSpace(out.String())
}

func counter(t *testing.T, rt tartarus.Runtime, id string) int {
	t.Helper()
	s := sh(t, rt, id, "cat /tmp/hypnos-counter 2>/dev/null || echo 0")
	n, err := strconv.Atoi(s)
	if err != nil {
		// Read while the writer truncated the file; try once more.
		n, err = strconv.Atoi(sh(t, rt, id, "sleep 0.05; cat /tmp/hypnos-counter"))
		if err != nil {
			t.Fatalf("counter %q: %v", s, err)
		}
	}
	return n
}

func waitCounter(t *testing.T, rt tartarus.Runtime, id string, atLeast int) {
	t.Helper()
	deadline := time.Now().Add(callTimeout)
	for counter(t, rt, id) < atLeast {
		if time.Now().After(deadline) {
			t.Fatalf("the background counter in %s did not reach %d", id, atLeast)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkClock compares the guest's wall clock with the host's.
func checkClock(t *testing.T, rt tartarus.Runtime, id string) {
	t.Helper()
	host := time.Now().Unix()
	guest, err := strconv.ParseInt(sh(t, rt, id, "date +%s"), 10, 64)
	if err != nil {
		t.Fatalf("guest date: %v", err)
	}
	if d := guest - host; d < -2 || d > 2 {
		t.Errorf("guest clock of %s is %ds off the host's after restore", id, d)
	}
}

func find(t *testing.T, rt tartarus.Runtime, id string) *tartarus.Instance {
	t.Helper()
	list, err := rt.List(ctxT(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	return nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}
