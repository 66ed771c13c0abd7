package thanatos

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// call is one Target call the fake saw, at the fake clock's time.
type call struct {
	op  string
	at  time.Time
	arg string
}

// fakeTarget is a sandbox whose work, signal handling and failures a test
// sets.
type fakeTarget struct {
	clk *clock.Fake

	mu        sync.Mutex
	calls     []call
	active    int
	trapsTerm bool   // SIGTERM ends the work (a program that handles it)
	block     string // this op blocks until its ctx ends
	blocked   chan string
	errs      map[string]error
	removed   []string
}

func newFakeTarget(clk *clock.Fake) *fakeTarget {
	return &fakeTarget{clk: clk, blocked: make(chan string, 8), errs: map[string]error{}}
}

func (f *fakeTarget) enter(ctx context.Context, op, arg string) error {
	f.mu.Lock()
	f.calls = append(f.calls, call{op, f.clk.Now(), arg})
	block, err := f.block == op, f.errs[op]
	f.mu.Unlock()
	if block {
		f.blocked <- op
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (f *fakeTarget) SignalAll(ctx context.Context, id string, sig syscall.Signal) error {
	if err := f.enter(ctx, "signal", sig.String()); err != nil {
		return err
	}
	f.mu.Lock()
	if sig == syscall.SIGTERM && f.trapsTerm {
		f.active = 0
	}
	f.mu.Unlock()
	return nil
}

func (f *fakeTarget) ActiveWork(ctx context.Context, id string) (int, error) {
	f.mu.Lock()
	n := f.active
	f.mu.Unlock()
	if err := f.enterQuiet(ctx, "active"); err != nil {
		return 0, err
	}
	return n, nil
}

// enterQuiet is enter without recording (drain polls often).
func (f *fakeTarget) enterQuiet(ctx context.Context, op string) error {
	f.mu.Lock()
	block, err := f.block == op, f.errs[op]
	f.mu.Unlock()
	if block {
		f.blocked <- op
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (f *fakeTarget) Checkpoint(ctx context.Context, id, ck string) (SnapshotInfo, error) {
	if err := f.enter(ctx, "checkpoint", ck); err != nil {
		return SnapshotInfo{}, err
	}
	return SnapshotInfo{Ref: "snap/" + ck, Size: 4096}, nil
}

func (f *fakeTarget) Kill(ctx context.Context, id string) error {
	return f.enter(ctx, "kill", id)
}

func (f *fakeTarget) Release(ctx context.Context, id string) error {
	return f.enter(ctx, "release", id)
}

func (f *fakeTarget) RemoveCheckpoint(ctx context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, ref)
	return nil
}

func (f *fakeTarget) setActive(n int) {
	f.mu.Lock()
	f.active = n
	f.mu.Unlock()
}

// ops returns the recorded op names, in order.
func (f *fakeTarget) ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		out = append(out, c.op)
	}
	return out
}

func (f *fakeTarget) callAt(op string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c.op == op {
			return c.at, true
		}
	}
	return time.Time{}, false
}

var _ Target = (*fakeTarget)(nil)
var _ CheckpointRemover = (*fakeTarget)(nil)

// harness is a manager over a fake target, a fake clock and a journal.
type harness struct {
	clk     *clock.Fake
	target  *fakeTarget
	journal Journal
	m       *Manager
}

func newHarness(t *testing.T, j Journal, tweak func(*Config)) *harness {
	t.Helper()
	clk := clock.NewFake(t0)
	if j == nil {
		j = &MemJournal{}
	}
	h := &harness{clk: clk, target: newFakeTarget(clk), journal: j}
	cfg := Config{Target: h.target, Journal: j, Clock: clk}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	t.Cleanup(func() { m.Close() })
	return h
}

// waitTickers waits until the clock has at least n live tickers: the
// manager is waiting on them.
func waitTickers(t *testing.T, clk *clock.Fake, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for clk.Tickers() < n {
		if time.Now().After(deadline) {
			t.Fatalf("waited for %d tickers, have %d", n, clk.Tickers())
		}
		time.Sleep(time.Millisecond)
	}
}

// waitPhase waits until the sandbox's termination is recorded in phase.
func waitPhase(t *testing.T, m *Manager, id string, phase tartarus.TerminationPhase) *tartarus.TerminationStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := m.Status(context.Background(), id)
		if err == nil && st.Phase == phase {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s never reached phase %s (now %+v, %v)", id, phase, st, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func wait(t *testing.T, m *Manager, id string) *tartarus.TerminationStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.Wait(ctx, id)
	if err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
	return st
}

func phasesOf(st *tartarus.TerminationStatus) []tartarus.TerminationPhase {
	var out []tartarus.TerminationPhase
	for _, p := range st.Phases {
		out = append(out, p.Phase)
	}
	return out
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var errBoom = errors.New("boom")
