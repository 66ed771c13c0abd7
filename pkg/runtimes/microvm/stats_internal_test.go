package microvm

import (
	"context"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// statsGuest counts the stats calls that reach the guest.
type statsGuest struct {
	guestConn
	asked int
}

func (g *statsGuest) Stats(context.Context) (*tartarus.Stats, error) {
	g.asked++
	return &tartarus.Stats{CPUPercent: 50, MemoryUsedMB: 10 + g.asked, Processes: 3}, nil
}

func TestGuestStatsReusedWhileQuiet(t *testing.T) {
	// A sleeping process stands in for an idle QEMU: its CPU time stays put.
	quiet := exec.Command("sleep", "60")
	if err := quiet.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = quiet.Process.Kill(); _ = quiet.Wait() })

	for _, tt := range []struct {
		name    string
		between func(v *vm, clk *clock.Fake) // after the first answer
		ask     bool                         // whether the second call reaches the guest
	}{
		{"quiet guest, soon after", func(v *vm, clk *clock.Fake) { clk.Advance(5 * time.Second) }, false},
		{"a call into the guest since", func(v *vm, clk *clock.Fake) { clk.Advance(5 * time.Second); v.calls++ }, true},
		{"another call still running", func(v *vm, clk *clock.Fake) { clk.Advance(5 * time.Second); v.busy++ }, true},
		{"answer too old", func(v *vm, clk *clock.Fake) { clk.Advance(statsReuseMax) }, true},
		{"QEMU busy since", func(v *vm, clk *clock.Fake) {
			v.pid = os.Getpid()
			v.stats.ticks, _ = cpuTicks(v.pid)
			burnCPU(t, 20) // 200 ms of CPU in one second of the fake clock: above 2 % and the slack
			clk.Advance(time.Second)
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := testDriver(t)
			clk := clock.NewFake(time.Unix(1e9, 0))
			d.clock = clk
			g := &statsGuest{}
			v := &vm{id: "sb-1", pid: quiet.Process.Pid, conf: vmConfig{CPUs: 1}}
			if _, err := d.guestStats(context.Background(), v, g, 0); err != nil || g.asked != 1 {
				t.Fatalf("first call: asked %d, %v", g.asked, err)
			}
			tt.between(v, clk)
			st, err := d.guestStats(context.Background(), v, g, 0)
			if err != nil {
				t.Fatal(err)
			}
			if asked := g.asked == 2; asked != tt.ask {
				t.Fatalf("second call reached the guest: %v, want %v", asked, tt.ask)
			}
			if !tt.ask && (st.MemoryUsedMB != 11 || st.CPUPercent != 0) {
				t.Errorf("reused answer %+v: want the first memory figure and QEMU's CPU since (0)", st)
			}
		})
	}
}

// burnCPU spins until this process used n more clock ticks.
func burnCPU(t *testing.T, n int64) {
	t.Helper()
	start, err := cpuTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for x := 0; ; x++ {
		if x%100000 == 0 {
			if now, _ := cpuTicks(os.Getpid()); now-start >= n {
				return
			}
		}
	}
}

// slowStatsGuest answers stats only once released, counting the asks.
type slowStatsGuest struct {
	guestConn
	asked   atomic.Int32
	entered chan struct{}
	release chan struct{}
}

func (g *slowStatsGuest) Stats(context.Context) (*tartarus.Stats, error) {
	g.asked.Add(1)
	g.entered <- struct{}{}
	<-g.release
	return &tartarus.Stats{MemoryUsedMB: 42}, nil
}

// waitedCtx tells when a caller started waiting on it (guestStats waits
// on Done only while another caller's question is under way).
type waitedCtx struct {
	context.Context
	waiting chan struct{}
	once    sync.Once
}

func (c *waitedCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

func TestGuestStatsAskedOnceAtATime(t *testing.T) {
	d := testDriver(t)
	g := &slowStatsGuest{entered: make(chan struct{}, 10), release: make(chan struct{})}
	// Another call into the guest runs, so no answer is reused: without
	// sharing, each caller would ask the guest.
	v := &vm{id: "sb-1", pid: os.Getpid(), conf: vmConfig{CPUs: 1}, busy: 1}
	const callers = 4
	var wg sync.WaitGroup
	got := make([]int, callers)
	errs := make([]error, callers)
	call := func(i int, ctx context.Context) {
		defer wg.Done()
		st, err := d.guestStats(ctx, v, g, 0)
		errs[i] = err
		if err == nil {
			got[i] = st.MemoryUsedMB
		}
	}
	wg.Add(callers)
	go call(0, context.Background())
	<-g.entered // the first question is under way
	var waits []chan struct{}
	for i := 1; i < callers; i++ {
		c := &waitedCtx{Context: context.Background(), waiting: make(chan struct{})}
		waits = append(waits, c.waiting)
		go call(i, c)
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-g.entered:
			t.Error("a caller asked the guest while another's question was under way")
		}
	}
	close(g.release)
	wg.Wait()
	if n := g.asked.Load(); n != 1 {
		t.Errorf("the guest was asked %d times, want 1", n)
	}
	for i := range callers {
		if errs[i] != nil || got[i] != 42 {
			t.Errorf("caller %d: %d MiB, %v", i, got[i], errs[i])
		}
	}
	// The question is over: the next one asks the guest again.
	go func() { <-g.entered }()
	if _, err := d.guestStats(context.Background(), v, g, 0); err != nil || g.asked.Load() != 2 {
		t.Errorf("after the shared answer: asked %d, %v", g.asked.Load(), err)
	}
}
