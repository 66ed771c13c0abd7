package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Asking the guest for its stats wakes it: under TCG one answer cost the
// host about 25 ms of CPU, and the server's samplers ask every sandbox
// every few seconds, which took an idle sandbox from 0.55 % to 2.3 % of a
// core (BenchmarkIdleCPU). A quiet guest's memory, disk and processes do
// not change without it running, so while the host saw no call into the
// guest and QEMU's own CPU time stayed near idle, the last answer stands,
// for at most statsReuseMax.
const (
	statsReuseMax = 30 * time.Second
	// statsQuietPercent is QEMU's CPU use, in % of a core per guest CPU,
	// under which the guest counts as quiet (an idle one uses about 0.5).
	statsQuietPercent = 2.0
	// statsQuietSlackTicks is QEMU CPU time, in clock ticks, a quiet guest
	// may use on top of statsQuietPercent: the tail of the last answer
	// (the stream's close, the agent going back to sleep) lands after it
	// was counted, and /proc counts whole ticks, so a caller that came
	// 0.4 s after an answer (allowed under one tick) asked again (60 idle
	// sandboxes, BenchmarkDensity: some were asked two or three times in
	// a row every 30 s).
	statsQuietSlackTicks = 5
)

// statsCache is a guest's last stats answer and what the host saw then.
type statsCache struct {
	st    tartarus.Stats
	at    time.Time
	ticks int64 // QEMU's CPU time then, in clock ticks
	calls int   // the vm's calls then (calls into the guest other than stats)
}

// statsAsk is a stats question to a guest under way. Callers that come
// while it is take its answer instead of asking again: when a guest's last
// answer expired, every sampler and List that came before the new one was
// in asked too, up to nine times at once (60 idle sandboxes, see
// BenchmarkDensity in docs/BENCHMARKS.md).
type statsAsk struct {
	done chan struct{}
	st   *tartarus.Stats
	err  error
}

// clockTicksPerSecond is USER_HZ, the unit of /proc/PID/stat's times.
const clockTicksPerSecond = 100

// cpuTicks is utime+stime of pid, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := bytes.Fields(b[i+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	s, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return u + s, nil
}

// guestStats answers v's stats, from the guest or, while it is quiet,
// from its last answer. own is how many of v's busy calls are the
// caller's (1 inside begin, 0 outside).
func (d *Driver) guestStats(ctx context.Context, v *vm, g guestConn, own int) (*tartarus.Stats, error) {
	now := d.clock.Now()
	v.mu.Lock()
	pid, c, calls, busy := v.pid, v.stats, v.calls, v.busy-own
	v.mu.Unlock()
	ticks, terr := cpuTicks(pid)
	if terr == nil && !c.at.IsZero() && busy == 0 && calls == c.calls {
		age := now.Sub(c.at)
		used := float64(ticks-c.ticks) / clockTicksPerSecond
		cpus := float64(max(v.conf.CPUs, 1))
		quiet := statsQuietPercent/100*age.Seconds()*cpus + float64(statsQuietSlackTicks)/clockTicksPerSecond
		if age >= 0 && age < statsReuseMax && used >= 0 && used <= quiet {
			st := c.st
			// The guest's own figure was for its last window; this one is
			// QEMU's, since then, per guest CPU.
			if age > 0 {
				st.CPUPercent = 100 * used / age.Seconds() / cpus
			}
			return &st, nil
		}
	}
	v.mu.Lock()
	if a := v.asking; a != nil {
		v.mu.Unlock()
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if a.err != nil {
			return nil, a.err
		}
		st := *a.st
		return &st, nil
	}
	a := &statsAsk{done: make(chan struct{})}
	v.asking = a
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.asking = nil
		v.mu.Unlock()
		close(a.done)
	}()

	st, err := g.Stats(ctx)
	if err != nil {
		a.err = err
		return nil, err
	}
	a.st = st
	v.sawGuestActivity(st.LastActivityAt)
	// QEMU's CPU counted from after the answer: what asking cost is not
	// the guest stirring.
	if ticks, err := cpuTicks(pid); err == nil {
		v.mu.Lock()
		v.stats = statsCache{st: *st, at: d.clock.Now(), ticks: ticks, calls: calls}
		v.mu.Unlock()
	}
	cp := *st
	return &cp, nil
}
