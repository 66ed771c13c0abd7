package hypnos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type env struct {
	t       *testing.T
	rt      *fakeRuntime
	dir     string
	tmp     string
	store   erebus.Store
	local   *erebus.Local
	records RecordStore
	clock   *clock.Fake
	m       *HypnosManager

	mu     sync.Mutex
	events []Event
}

// newEnv builds a manager over the fake runtime, a real local Erebus store
// in dir (a temp dir unless given), and durable records in that store.
func newEnv(t *testing.T, cfg HypnosConfig, dir string) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e := &env{t: t, rt: newFakeRuntime(), dir: dir, clock: clock.NewFake(t0)}
	e.open(cfg, nil)
	return e
}

// open (re)creates everything above the runtime, as a restarted agent does.
func (e *env) open(cfg HypnosConfig, wrap func(erebus.Store) erebus.Store) {
	e.t.Helper()
	local, err := erebus.NewLocal(filepath.Join(e.dir, "erebus"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.local, e.store = local, local
	if wrap != nil {
		e.store = wrap(local)
	}
	if e.tmp == "" {
		e.tmp = e.t.TempDir() // apart from dir, which a test may make small
	}
	tmp := e.tmp
	snaps := nyx.New(e.rt, e.store, nyx.Options{Prefix: "sleep", TempDir: tmp, Clock: e.clock})
	e.records = NewStoreRecords(e.store, "")
	m, err := NewHypnosManager(Deps{
		Runtime: e.rt, Snapshots: snaps, Records: e.records, Clock: e.clock,
		Observer: func(ev Event) {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
		},
	}, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.m = m
}

func (e *env) states(id string) []tartarus.State {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []tartarus.State
	for _, ev := range e.events {
		if ev.SandboxID == id {
			out = append(out, ev.State)
		}
	}
	return out
}

// objects lists what the store holds under the snapshot prefix.
func (e *env) snapshotObjects() []string {
	objs, err := e.local.List(context.Background(), "sleep/")
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key)
	}
	return keys
}

// prepare makes a running sandbox with a file on disk and a process that
// has done some work.
func (e *env) prepare(id string) {
	e.t.Helper()
	e.rt.add(id, t0)
	ctx := context.Background()
	if err := e.rt.WriteFile(ctx, id, "/work/notes.txt", 0o644, strings.NewReader("written before sleep")); err != nil {
		e.t.Fatal(err)
	}
	for range 3 {
		if _, err := e.rt.Exec(ctx, id, &tartarus.ExecRequest{}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// checkIntact verifies the sandbox has its file and its process state.
func (e *env) checkIntact(id string, state tartarus.InstanceState) {
	e.t.Helper()
	b := e.rt.box(id)
	if b == nil {
		e.t.Fatalf("sandbox %s does not exist", id)
	}
	if b.state != state {
		e.t.Errorf("sandbox %s is %s, want %s", id, b.state, state)
	}
	if b.Files["/work/notes.txt"] != "written before sleep" {
		e.t.Errorf("sandbox %s lost its file: %q", id, b.Files)
	}
	if b.Counter != 3 {
		e.t.Errorf("sandbox %s process counter is %d, want 3 (continued, not restarted)", id, b.Counter)
	}
}

func TestSleepAndWake(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	ctx := t.Context()
	e.prepare("sb-1")

	rec, err := e.m.Sleep(ctx, "sb-1", &SleepOptions{CompressMemory: true, WakePriority: 3, TenantID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if e.rt.box("sb-1") != nil {
		t.Fatal("the VM still exists after Sleep: host resources not freed")
	}
	if !e.m.IsSleeping("sb-1") || rec.Status != StatusSleeping || rec.TenantID != "acme" || rec.WakePriority != 3 {
		t.Fatalf("record %+v, sleeping=%v", rec, e.m.IsSleeping("sb-1"))
	}
	if rec.MemorySize != 256<<20 || rec.CompressedSize <= 0 || rec.CompressedSize > 64<<10 {
		t.Errorf("memory %d, compressed %d: want 256 MiB and a small compressed image", rec.MemorySize, rec.CompressedSize)
	}
	if !slices.Contains(e.snapshotObjects(), rec.SnapshotPath) {
		t.Errorf("snapshot %s not in the store: %v", rec.SnapshotPath, e.snapshotObjects())
	}
	again, err := e.m.Sleep(ctx, "sb-1", nil)
	if err != nil || again.SnapshotID != rec.SnapshotID {
		t.Fatalf("second Sleep = %+v, %v; want the same record", again, err)
	}

	e.clock.Advance(time.Hour)
	res, err := e.m.Wake(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != tartarus.StateRunning || res.SleepDuration != time.Hour {
		t.Errorf("wake result %+v", res)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)
	if _, err := e.rt.Exec(ctx, "sb-1", &tartarus.ExecRequest{}); err != nil || e.rt.box("sb-1").Counter != 4 {
		t.Errorf("process did not continue after wake: counter %d, %v", e.rt.box("sb-1").Counter, err)
	}
	if e.m.IsSleeping("sb-1") {
		t.Error("still sleeping after Wake")
	}
	if objs := e.snapshotObjects(); len(objs) != 0 {
		t.Errorf("snapshot objects left after wake: %v", objs)
	}
	if l, _ := e.m.ListSleeping(ctx, nil); len(l) != 0 {
		t.Errorf("ListSleeping after wake = %d records", len(l))
	}
	if _, err := e.m.Wake(ctx, "sb-1"); !errors.Is(err, ErrNotSleeping) || !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Wake of an awake sandbox: %v, want ErrNotSleeping", err)
	}
	if got := e.states("sb-1"); !slices.Equal(got, []tartarus.State{tartarus.StateHibernated, tartarus.StateRunning}) {
		t.Errorf("events %v", got)
	}
}

func TestSleepUncompressedAndPaused(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	ctx := t.Context()
	e.prepare("sb-1")
	e.rt.Pause(ctx, "sb-1")
	rec, err := e.m.Sleep(ctx, "sb-1", &SleepOptions{CompressMemory: false})
	if err != nil {
		t.Fatal(err)
	}
	if rec.CompressedSize < 1<<20 || !rec.WasPaused {
		t.Errorf("uncompressed snapshot of %d bytes, was paused %v", rec.CompressedSize, rec.WasPaused)
	}
	res, err := e.m.Wake(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != tartarus.StatePaused {
		t.Errorf("woken status %s, want paused (its user paused it)", res.Status)
	}
	e.checkIntact("sb-1", tartarus.InstancePaused)
}

// failingStore fails Puts of keys containing failOn like a full disk.
type failingStore struct {
	erebus.Store
	failOn string
}

func (s *failingStore) Put(ctx context.Context, key string, r io.Reader) (erebus.Object, error) {
	if strings.Contains(key, s.failOn) {
		io.CopyN(io.Discard, r, 64<<10)
		return erebus.Object{}, fmt.Errorf("put %s: %w: %w", key, tartarus.ErrResourceExhausted, syscall.ENOSPC)
	}
	return s.Store.Put(ctx, key, r)
}

func TestSleepFailureKeepsSandbox(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name   string
		paused bool
		setup  func(e *env)
		want   error
	}{
		{"snapshot fails", false, func(e *env) { e.rt.failSnapshot = boom }, boom},
		{"store full", false, func(e *env) {
			e.open(HypnosConfig{}, func(s erebus.Store) erebus.Store { return &failingStore{Store: s, failOn: "/data"} })
		}, syscall.ENOSPC},
		{"metadata store fails", false, func(e *env) {
			e.open(HypnosConfig{}, func(s erebus.Store) erebus.Store { return &failingStore{Store: s, failOn: "meta.json"} })
		}, tartarus.ErrResourceExhausted},
		{"record store fails", false, func(e *env) {
			e.open(HypnosConfig{}, func(s erebus.Store) erebus.Store { return &failingStore{Store: s, failOn: "hypnos/records"} })
		}, tartarus.ErrResourceExhausted},
		{"destroy fails", false, func(e *env) { e.rt.failDestroy = boom }, boom},
		{"destroy fails, was paused", true, func(e *env) { e.rt.failDestroy = boom }, boom},
		{"real disk full", false, func(e *env) {
			e.dir = mountTmpfs(e.t, "512k")
			e.open(HypnosConfig{CompressionAlgorithm: "none"}, nil)
		}, tartarus.ErrResourceExhausted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, HypnosConfig{}, "")
			e.prepare("sb-1")
			if tc.paused {
				e.rt.Pause(t.Context(), "sb-1")
			}
			tc.setup(e)
			_, err := e.m.Sleep(t.Context(), "sb-1", nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Sleep: %v, want %v", err, tc.want)
			}
			e.rt.failDestroy = nil
			want := tartarus.InstanceRunning
			if tc.paused {
				want = tartarus.InstancePaused
			}
			e.checkIntact("sb-1", want)
			if e.m.IsSleeping("sb-1") {
				t.Error("IsSleeping after a failed Sleep")
			}
			if objs := e.snapshotObjects(); len(objs) != 0 {
				t.Errorf("a failed Sleep left snapshot objects: %v", objs)
			}
			if recs, _ := e.records.ListRecords(t.Context()); len(recs) != 0 {
				t.Errorf("a failed Sleep left %d records", len(recs))
			}
			if len(e.states("sb-1")) != 0 {
				t.Errorf("events after a failed sleep: %v", e.states("sb-1"))
			}
			// Once the fault is gone, the same sandbox sleeps fine.
			e.rt.failSnapshot = nil
			if tc.name != "real disk full" {
				e.open(HypnosConfig{}, nil)
				if _, err := e.m.Sleep(t.Context(), "sb-1", nil); err != nil {
					t.Fatalf("Sleep after the fault cleared: %v", err)
				}
			}
		})
	}
}

func TestSleepCancelled(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	e.prepare("sb-1")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.m.Sleep(ctx, "sb-1", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep with a cancelled ctx: %v", err)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)
	if objs := e.snapshotObjects(); len(objs) != 0 {
		t.Errorf("objects left: %v", objs)
	}
}

// When destroy and then resume both fail, the stored snapshot is the
// sandbox: it stays hibernated, and waking it works.
func TestSleepResumeFailsKeepsSnapshot(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	e.prepare("sb-1")
	e.rt.failDestroy = errors.New("destroy failed")
	e.rt.failResume = errors.New("resume failed")
	if _, err := e.m.Sleep(t.Context(), "sb-1", nil); err == nil || !strings.Contains(err.Error(), "stays hibernated") {
		t.Fatalf("Sleep: %v", err)
	}
	if !e.m.IsSleeping("sb-1") {
		t.Fatal("not hibernated although its snapshot is stored")
	}
	e.rt.failDestroy, e.rt.failResume = nil, nil
	if _, err := e.m.Wake(t.Context(), "sb-1"); err != nil {
		t.Fatal(err)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)
}

func TestWakeRefusesCorruptSnapshot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(e *env, rec *SleepRecord)
	}{
		{"flipped byte", func(e *env, rec *SleepRecord) {
			p := filepath.Join(e.dir, "erebus", "objects", filepath.FromSlash(rec.SnapshotPath))
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o600)
		}},
		{"replaced", func(e *env, rec *SleepRecord) {
			e.store.Put(context.Background(), rec.SnapshotPath, strings.NewReader("garbage"))
		}},
		{"deleted", func(e *env, rec *SleepRecord) {
			e.store.Delete(context.Background(), rec.SnapshotPath)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, HypnosConfig{}, "")
			e.prepare("sb-1")
			rec, err := e.m.Sleep(t.Context(), "sb-1", nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(e, rec)
			_, err = e.m.Wake(t.Context(), "sb-1")
			if !errors.Is(err, erebus.ErrCorrupt) {
				t.Fatalf("Wake from a damaged snapshot: %v, want ErrCorrupt", err)
			}
			if len(e.rt.restores) != 0 || e.rt.box("sb-1") != nil {
				t.Fatal("the runtime restored from damaged data")
			}
			if e.m.IsSleeping("sb-1") {
				t.Error("a failed sandbox still counts as sleeping")
			}
			got, err := e.m.Record(t.Context(), "sb-1")
			if err != nil || got.Status != StatusFailed || !strings.Contains(got.Error, "does not match") && !strings.Contains(got.Error, "missing") {
				t.Errorf("record after the refused wake: %+v, %v", got, err)
			}
			if s := e.states("sb-1"); s[len(s)-1] != tartarus.StateFailed {
				t.Errorf("events %v, want failed last", s)
			}
			if _, err := e.m.Wake(t.Context(), "sb-1"); !errors.Is(err, tartarus.ErrFailedPrecondition) {
				t.Errorf("second Wake: %v, want ErrFailedPrecondition", err)
			}
			// The damaged snapshot stays for inspection, even across Start.
			if _, err := e.m.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			if objs := e.snapshotObjects(); len(objs) == 0 {
				t.Error("Start collected the snapshot of a failed sandbox")
			}
			if err := e.m.Forget(t.Context(), "sb-1"); err != nil {
				t.Fatal(err)
			}
			if objs := e.snapshotObjects(); len(objs) != 0 {
				t.Errorf("Forget left %v", objs)
			}
		})
	}
}

func TestWakeRestoreErrorKeepsSleeping(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	e.prepare("sb-1")
	if _, err := e.m.Sleep(t.Context(), "sb-1", nil); err != nil {
		t.Fatal(err)
	}
	e.rt.failRestore = tartarus.Errorf(tartarus.ErrNotFound, "template image base")
	if _, err := e.m.Wake(t.Context(), "sb-1"); err == nil {
		t.Fatal("Wake succeeded although restore failed")
	}
	if !e.m.IsSleeping("sb-1") {
		t.Fatal("a transient restore error lost the sleeping sandbox")
	}
	e.rt.failRestore = nil
	if _, err := e.m.Wake(t.Context(), "sb-1"); err != nil {
		t.Fatal(err)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)
}

func TestWakeSingleFlight(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	e.prepare("sb-1")
	if _, err := e.m.Sleep(t.Context(), "sb-1", nil); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	e.rt.restoreGate = gate
	var wg sync.WaitGroup
	results := make([]*WakeResult, 5)
	errs := make([]error, 5)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = e.m.Wake(t.Context(), "sb-1") })
	}
	waitFor(t, func() bool { e.rt.mu.Lock(); defer e.rt.mu.Unlock(); return len(e.rt.restores) == 1 })
	// Also a caller that gives up does not stop the shared wake.
	short, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.m.Wake(short, "sb-1"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter: %v", err)
	}
	close(gate)
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i] != results[0] {
			t.Fatalf("waiter %d: %+v, %v; want the shared result", i, results[i], errs[i])
		}
	}
	if n := len(e.rt.restores); n != 1 {
		t.Fatalf("%d restores for one sandbox, want 1", n)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)
}

func TestWakeConcurrencyAndPriority(t *testing.T) {
	e := newEnv(t, HypnosConfig{MaxConcurrentWakes: 1}, "")
	prio := map[string]int{"first": 0, "low": 1, "high": 9, "mid": 5}
	for id, p := range prio {
		e.prepare(id)
		if _, err := e.m.Sleep(t.Context(), id, &SleepOptions{CompressMemory: true, WakePriority: p}); err != nil {
			t.Fatal(err)
		}
	}
	gate := make(chan struct{})
	e.rt.restoreGate = gate
	var wg sync.WaitGroup
	wake := func(id string) {
		wg.Go(func() {
			if _, err := e.m.Wake(t.Context(), id); err != nil {
				t.Errorf("wake %s: %v", id, err)
			}
		})
	}
	wake("first")
	waitFor(t, func() bool { e.rt.mu.Lock(); defer e.rt.mu.Unlock(); return len(e.rt.restores) == 1 })
	for i, id := range []string{"low", "high", "mid"} {
		wake(id)
		waitFor(t, func() bool { return e.m.wakes.waiting() == i+1 })
	}
	close(gate)
	wg.Wait()
	if want := []string{"first", "high", "mid", "low"}; !slices.Equal(e.rt.restores, want) {
		t.Errorf("restore order %v, want %v", e.rt.restores, want)
	}
	if e.rt.maxRestoring != 1 {
		t.Errorf("%d restores ran at once, MaxConcurrentWakes is 1", e.rt.maxRestoring)
	}
}

func TestWakeQueueCancel(t *testing.T) {
	q := newWakeQueue(1)
	if err := q.acquire(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- q.acquire(ctx, 5) }()
	waitFor(t, func() bool { return q.waiting() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("acquire: %v", err)
	}
	if q.waiting() != 0 {
		t.Fatal("cancelled waiter still queued")
	}
	q.release()
	if err := q.acquire(t.Context(), 0); err != nil {
		t.Fatalf("slot lost after a cancelled waiter: %v", err)
	}
}

// TestRestart: the agent dies while sandboxes sleep; a new manager over the
// same store finds them, lists them and wakes them.
func TestRestart(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	for _, id := range []string{"sb-1", "sb-2", "sb-3", "sb-4"} {
		e.prepare(id)
		if _, err := e.m.Sleep(t.Context(), id, nil); err != nil {
			t.Fatal(err)
		}
	}
	// sb-3: crash after the record was stored but before the VM was
	// destroyed; the VM is still there, paused.
	e.rt.add("sb-3", t0)
	e.rt.Pause(t.Context(), "sb-3")
	// sb-4: crash after a wake restored it but before the record went.
	e.rt.add("sb-4", t0)

	// Garbage of crashes: a hibernation snapshot without its record, and
	// data without metadata.
	e.prepare("sb-5")
	if _, err := e.m.snaps.CreateFromRunning(t.Context(), "sb-5", &nyx.CreateOptions{Labels: map[string]string{"purpose": "hibernate"}}); err != nil {
		t.Fatal(err)
	}
	e.rt.Resume(t.Context(), "sb-5")
	if _, err := e.store.Put(t.Context(), "sleep/half-done/data", strings.NewReader("partial")); err != nil {
		t.Fatal(err)
	}

	e.open(HypnosConfig{}, nil) // a new process: nothing in memory
	if e.m.IsSleeping("sb-1") {
		t.Fatal("fresh manager knows about sleepers before Start")
	}
	// Even before Start, the durable record lets Wake work.
	if _, err := e.m.Wake(t.Context(), "sb-1"); err != nil {
		t.Fatalf("Wake before Start: %v", err)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)

	recs, err := e.m.Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.SandboxID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"sb-2", "sb-3"}) {
		t.Fatalf("Start found %v sleeping, want sb-2 and sb-3", ids)
	}
	if e.rt.box("sb-3") != nil {
		t.Error("Start did not destroy the VM left by an interrupted sleep")
	}
	if e.rt.box("sb-4") == nil || e.m.IsSleeping("sb-4") {
		t.Error("Start mishandled a sandbox that was already awake")
	}
	if objs := e.snapshotObjects(); len(objs) != 4 {
		t.Errorf("after Start the store holds %v; want only the data and metadata of sb-2 and sb-3", objs)
	}
	list, err := e.m.ListSleeping(t.Context(), nil)
	if err != nil || len(list) != 2 {
		t.Fatalf("ListSleeping after restart = %d, %v", len(list), err)
	}
	for _, id := range []string{"sb-2", "sb-3"} {
		if _, err := e.m.Wake(t.Context(), id); err != nil {
			t.Fatalf("wake %s after restart: %v", id, err)
		}
		e.checkIntact(id, tartarus.InstanceRunning)
	}
	if objs := e.snapshotObjects(); len(objs) != 0 {
		t.Errorf("objects left after all woke: %v", objs)
	}
}

func TestIdleDetection(t *testing.T) {
	e := newEnv(t, HypnosConfig{DefaultIdleThreshold: 10 * time.Minute}, "")
	for _, id := range []string{"default", "short", "cancelled", "busy", "touched", "paused"} {
		e.prepare(id)
	}
	e.rt.setIdle("busy", nil)
	e.rt.Pause(t.Context(), "paused")
	e.m.ScheduleSleep("short", time.Minute)
	e.m.CancelScheduledSleep("cancelled")
	if err := e.m.ScheduleSleep("x", 0); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("ScheduleSleep(0): %v", err)
	}

	step := func(d time.Duration, want ...string) {
		t.Helper()
		e.clock.Advance(d)
		got, err := e.m.SleepIdle(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("at +%v slept %v, want %v", e.clock.Now().Sub(t0), got, want)
		}
	}
	step(30 * time.Second)
	step(30*time.Second, "short")
	e.m.Touch("touched") // at +1m: its idle time restarts
	step(8 * time.Minute)
	step(time.Minute, "default") // +10m
	step(50 * time.Second)       // touched at +1m: not yet
	step(10*time.Second, "touched")
	step(time.Hour)
	for _, id := range []string{"cancelled", "busy", "paused"} {
		if e.m.IsSleeping(id) {
			t.Errorf("%s was put to sleep", id)
		}
	}

	// A woken sandbox reports the guest's pre-sleep idle time, but the
	// wake itself counts as activity: no immediate sleep again.
	if _, err := e.m.Wake(t.Context(), "default"); err != nil {
		t.Fatal(err)
	}
	step(time.Minute)
	step(10*time.Minute, "default")
}

func TestRunLoop(t *testing.T) {
	e := newEnv(t, HypnosConfig{DefaultIdleThreshold: time.Minute, CheckInterval: 10 * time.Second}, "")
	e.prepare("sb-1")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- e.m.Run(ctx) }()
	waitFor(t, func() bool { return e.clock.Tickers() == 1 })
	for range 7 {
		e.clock.Advance(10 * time.Second)
	}
	waitFor(t, func() bool { return e.m.IsSleeping("sb-1") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := e.states("sb-1"); !slices.Equal(s, []tartarus.State{tartarus.StateHibernated}) {
		t.Errorf("events %v", s)
	}
}

func TestMaxSleepDurationAndScheduledWake(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	e.prepare("limited")
	e.prepare("alarm")
	e.prepare("late")
	if _, err := e.m.Sleep(t.Context(), "limited", &SleepOptions{CompressMemory: true, MaxSleepDuration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Sleep(t.Context(), "alarm", &SleepOptions{CompressMemory: true, WakeAfter: 30 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Sleep(t.Context(), "late", &SleepOptions{CompressMemory: true, MaxSleepDuration: time.Minute}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(29 * time.Minute)
	e.m.Check(t.Context()) // "late" is past its limit but Check reaps it
	if e.m.IsSleeping("late") || !e.m.IsSleeping("alarm") || !e.m.IsSleeping("limited") {
		t.Fatal("wrong sleepers at +29m")
	}
	e.clock.Advance(time.Minute)
	e.m.Check(t.Context())
	if e.m.IsSleeping("alarm") || e.rt.box("alarm") == nil {
		t.Error("scheduled wake did not happen")
	}
	e.clock.Advance(29 * time.Minute)
	if got := e.m.ReapExpired(t.Context()); len(got) != 0 {
		t.Errorf("reaped %v before the limit", got)
	}
	e.clock.Advance(time.Minute)
	// Wake after the limit, before the reaper ran: the sandbox is over.
	if _, err := e.m.Wake(t.Context(), "limited"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Wake after MaxSleepDuration: %v, want ErrNotFound", err)
	}
	for _, id := range []string{"limited", "late"} {
		if s := e.states(id); s[len(s)-1] != tartarus.StateTerminated {
			t.Errorf("%s events %v, want terminated last", id, s)
		}
	}
	if objs := e.snapshotObjects(); len(objs) != 0 {
		t.Errorf("terminated sandboxes left %v", objs)
	}
}

func TestListSleepingFilter(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	for i, tenant := range []string{"a", "b", "a"} {
		id := fmt.Sprintf("sb-%d", i)
		e.prepare(id)
		e.rt.box(id).MemoryMB = 256 << i
		if _, err := e.m.Sleep(t.Context(), id, &SleepOptions{CompressMemory: true, TenantID: tenant}); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(time.Hour)
	}
	for _, tc := range []struct {
		name   string
		filter *SleepFilter
		want   []string
	}{
		{"all", nil, []string{"sb-0", "sb-1", "sb-2"}},
		{"tenant", &SleepFilter{TenantID: "a"}, []string{"sb-0", "sb-2"}},
		{"before", &SleepFilter{SleepingBefore: t0.Add(90 * time.Minute)}, []string{"sb-0", "sb-1"}},
		{"after", &SleepFilter{SleepingAfter: t0.Add(30 * time.Minute)}, []string{"sb-1", "sb-2"}},
		{"min memory", &SleepFilter{MinMemorySize: 512 << 20}, []string{"sb-1", "sb-2"}},
		{"max memory", &SleepFilter{MaxMemorySize: 512 << 20}, []string{"sb-0", "sb-1"}},
		{"combined", &SleepFilter{TenantID: "a", MinMemorySize: 300 << 20}, []string{"sb-2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := e.m.ListSleeping(t.Context(), tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range recs {
				got = append(got, r.SandboxID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestEnsureAwake(t *testing.T) {
	e := newEnv(t, HypnosConfig{}, "")
	e.prepare("sb-1")
	if err := e.m.EnsureAwake(t.Context(), "sb-1"); err != nil || len(e.rt.restores) != 0 {
		t.Fatalf("EnsureAwake of an awake sandbox: %v, %d restores", err, len(e.rt.restores))
	}
	if _, err := e.m.Sleep(t.Context(), "sb-1", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.m.EnsureAwake(t.Context(), "sb-1"); err != nil {
		t.Fatal(err)
	}
	e.checkIntact("sb-1", tartarus.InstanceRunning)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  HypnosConfig
		errs []string
	}{
		{HypnosConfig{}, nil},
		{HypnosConfig{CompressionAlgorithm: "none", MaxConcurrentWakes: 4, PrewarmPoolSize: 2}, nil},
		{HypnosConfig{CompressionAlgorithm: "lz4"}, []string{"compression"}},
		{HypnosConfig{DefaultIdleThreshold: -1, MaxConcurrentWakes: -1, PrewarmPoolSize: -1}, []string{"idle", "wakes", "pool"}},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != (tc.errs == nil) {
			t.Errorf("%+v: %v", tc.cfg, err)
			continue
		}
		for _, s := range tc.errs {
			if !strings.Contains(err.Error(), s) || !errors.Is(err, tartarus.ErrInvalid) {
				t.Errorf("%+v: %v does not mention %q", tc.cfg, err, s)
			}
		}
	}
	if _, err := NewHypnosManager(Deps{}, HypnosConfig{}); err == nil {
		t.Error("NewHypnosManager without deps succeeded")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
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

func TestCompressionConfig(t *testing.T) {
	for _, tc := range []struct {
		algorithm string
		opts      *SleepOptions
		wantSmall bool
	}{
		{"zstd", nil, true},
		{"zstd", &SleepOptions{CompressMemory: true}, true},
		{"zstd", &SleepOptions{CompressMemory: false}, false},
		{"none", nil, false},
		{"none", &SleepOptions{CompressMemory: true}, false},
	} {
		e := newEnv(t, HypnosConfig{CompressionAlgorithm: tc.algorithm}, "")
		e.prepare("sb-1")
		rec, err := e.m.Sleep(t.Context(), "sb-1", tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if small := rec.CompressedSize < 64<<10; small != tc.wantSmall {
			t.Errorf("%s %+v: stored %d bytes, want compressed=%v", tc.algorithm, tc.opts, rec.CompressedSize, tc.wantSmall)
		}
	}
}

// TestConcurrentOperations races Sleep, Wake, EnsureAwake and ReapExpired
// on one sandbox: whatever the interleaving, it ends either asleep (no VM)
// or awake (a VM with its state), never failed or lost.
func TestConcurrentOperations(t *testing.T) {
	e := newEnv(t, HypnosConfig{MaxConcurrentWakes: 2}, "")
	e.prepare("sb-1")
	for round := range 20 {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				var err error
				switch (i + round) % 4 {
				case 0:
					_, err = e.m.Sleep(t.Context(), "sb-1", &SleepOptions{CompressMemory: true, MaxSleepDuration: time.Hour})
				case 1:
					_, err = e.m.Wake(t.Context(), "sb-1")
					if errors.Is(err, ErrNotSleeping) {
						err = nil
					}
				case 2:
					err = e.m.EnsureAwake(t.Context(), "sb-1")
				case 3:
					e.m.ReapExpired(t.Context())
				}
				if err != nil {
					t.Errorf("round %d op %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		asleep, vm := e.m.IsSleeping("sb-1"), e.rt.box("sb-1") != nil
		if asleep == vm {
			t.Fatalf("round %d: sleeping=%v but VM exists=%v", round, asleep, vm)
		}
		if !vm {
			if _, err := e.m.Wake(t.Context(), "sb-1"); err != nil {
				t.Fatal(err)
			}
		}
		e.checkIntact("sb-1", tartarus.InstanceRunning)
	}
	if s := e.states("sb-1"); slices.Contains(s, tartarus.StateFailed) || slices.Contains(s, tartarus.StateTerminated) {
		t.Errorf("events include failure or termination: %v", s)
	}
}
