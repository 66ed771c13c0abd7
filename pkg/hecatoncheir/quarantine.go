package hecatoncheir

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// What the agent does for a quarantine (pkg/typhon, wired by
// pkg/typhon/typhonnode): move a sandbox into and out of the quarantined
// state, keep the API's exec log, read host counters and the console.

// SetQuarantined moves a running or paused sandbox to quarantined (a
// paused one is resumed, so examiners can reach it), or a quarantined one
// back to running. Idempotent.
func (a *Agent) SetQuarantined(ctx context.Context, id string, on bool) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	ctx = context.WithoutCancel(ctx)
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	now := a.cfg.Clock.Now().UTC()
	if !on {
		if sb.State != tartarus.StateQuarantined {
			return sb, nil
		}
		return a.cfg.Store.Move(ctx, id, sb.State, tartarus.StateRunning, store.Change{At: now})
	}
	switch sb.State {
	case tartarus.StateQuarantined:
		return sb, nil
	case tartarus.StatePaused:
		rt, err := a.runtime(sb.Runtime)
		if err != nil {
			return nil, err
		}
		if err := rt.Resume(ctx, id); err != nil {
			return nil, fmt.Errorf("resume sandbox %s for quarantine: %w", id, err)
		}
	case tartarus.StateRunning:
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s: cannot be quarantined", id, sb.State)
	}
	return a.cfg.Store.Move(ctx, id, sb.State, tartarus.StateQuarantined, store.Change{At: now})
}

// strictSet holds the sandboxes that run under the strict seccomp filter
// (tartarus.VMConfig.StrictSeccomp) from their next restore on: held ones
// under a quarantine policy that asks for it. It lives in memory; Typhon
// sets it again from its records when the server starts.
type strictSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

// SetStrictSeccomp makes every later restore of the sandbox (a wake) run
// under the strict seccomp filter (on), or no longer (off). A process
// already running keeps the filter it started with. Only a jailed microvm
// can: other sandboxes get an ErrNotImplemented error saying why.
func (a *Agent) SetStrictSeccomp(ctx context.Context, id string, on bool) error {
	if on {
		sb, err := a.cfg.Store.Get(ctx, id)
		if err != nil {
			return err
		}
		rt, err := a.runtime(sb.Runtime)
		if err != nil {
			return err
		}
		fp, err := rt.Fingerprint(ctx)
		if err != nil {
			return err
		}
		if sb.Runtime != "microvm" || fp.Jail == nil || !fp.Jail.Enabled {
			return tartarus.Errorf(tartarus.ErrNotImplemented, "sandbox %s: the strict seccomp filter needs a microvm sandbox with the jail on (runtime %s)", id, sb.Runtime)
		}
	}
	a.strict.mu.Lock()
	defer a.strict.mu.Unlock()
	if a.strict.ids == nil {
		a.strict.ids = map[string]bool{}
	}
	if on {
		a.strict.ids[id] = true
	} else {
		delete(a.strict.ids, id)
	}
	return nil
}

// StrictSeccomp reports whether the sandbox's restores run under the
// strict seccomp filter.
func (a *Agent) StrictSeccomp(id string) bool {
	a.strict.mu.Lock()
	defer a.strict.mu.Unlock()
	return a.strict.ids[id]
}

// ExecEntry is one command the API ran in a sandbox, as the host saw it.
type ExecEntry struct {
	At       time.Time `json:"at"`
	Cmd      []string  `json:"cmd"`
	ExitCode int       `json:"exit_code"`
	Error    string    `json:"error,omitempty"`
}

// maxExecLog bounds each sandbox's exec log.
const maxExecLog = 64

// execLog keeps the last commands run through the API in each sandbox.
type execLog struct {
	mu  sync.Mutex
	per map[string][]ExecEntry
}

func (l *execLog) add(id string, e ExecEntry) {
	if len(e.Cmd) > 64 {
		e.Cmd = e.Cmd[:64]
	}
	for i, c := range e.Cmd {
		if len(c) > 1024 {
			e.Cmd[i] = c[:1024]
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.per == nil {
		l.per = map[string][]ExecEntry{}
	}
	s := append(l.per[id], e)
	if len(s) > maxExecLog {
		s = s[len(s)-maxExecLog:]
	}
	l.per[id] = s
}

func (l *execLog) get(id string) []ExecEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ExecEntry(nil), l.per[id]...)
}

func (l *execLog) forget(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.per, id)
}

// ExecHistory returns the last commands the API ran in the sandbox,
// oldest first (kept in memory: a restart forgets them).
func (a *Agent) ExecHistory(id string) []ExecEntry { return a.execs.get(id) }

// HostCounters are a sandbox's resource use read on the host, from its
// runtime's process (QEMU's, for microvm): the guest cannot forge them.
type HostCounters struct {
	Pid        int
	CPUSeconds float64 // user + system time of the process
	RSSMB      float64
	// BusiestTID is the process's thread with the most CPU time (under TCG,
	// a vCPU thread), and DemandSeconds its time on a CPU plus its time
	// runnable but waiting for one (/proc/PID/task/TID/schedstat): a guest
	// that spins keeps it runnable all the time, however loaded the host
	// is, while its CPU time is only the share the host gives it.
	BusiestTID    int
	DemandSeconds float64
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times on Linux.
const clockTicks = 100

// HostCounters reads the sandbox's process counters from /proc; ok is
// false when its runtime names no process (containers) or it is gone.
func (a *Agent) HostCounters(ctx context.Context, sb *tartarus.Sandbox) (HostCounters, bool) {
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return HostCounters{}, false
	}
	in := a.instance(ctx, rt, sb.ID)
	if in == nil || in.Pid <= 0 {
		return HostCounters{}, false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(in.Pid) + "/stat")
	if err != nil {
		return HostCounters{}, false
	}
	// Fields after the command name, which ends at the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return HostCounters{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 22 {
		return HostCounters{}, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	rss, _ := strconv.ParseFloat(f[21], 64)
	hc := HostCounters{Pid: in.Pid, CPUSeconds: (ut + st) / clockTicks, RSSMB: rss * float64(os.Getpagesize()) / (1 << 20)}
	hc.BusiestTID, hc.DemandSeconds = busiestThread(in.Pid)
	return hc, true
}

// busiestThread returns the thread of pid with the most CPU time and its
// CPU time plus run-queue wait, in seconds (0, 0 when unreadable).
func busiestThread(pid int) (int, float64) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	tid, run, demand := 0, -1.0, 0.0
	for i, e := range ents {
		if i >= 256 {
			break // QEMU has a handful of threads
		}
		b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		r, err1 := strconv.ParseFloat(f[0], 64)
		w, err2 := strconv.ParseFloat(f[1], 64)
		t, err3 := strconv.Atoi(e.Name())
		if err1 != nil || err2 != nil || err3 != nil || r <= run {
			continue
		}
		tid, run, demand = t, r, (r+w)/1e9
	}
	return tid, demand
}

// Console returns the last max bytes of the sandbox's console, from runtimes
// that keep one (tartarus.ConsoleReader).
func (a *Agent) Console(ctx context.Context, sb *tartarus.Sandbox, max int) ([]byte, error) {
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, err
	}
	cr, ok := rt.(tartarus.ConsoleReader)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "runtime %s keeps no console", sb.Runtime)
	}
	return cr.Console(ctx, sb.ID, max)
}

// GuestStats asks the sandbox's guest for its own view (guest-reported:
// it may lie), without counting as activity.
func (a *Agent) GuestStats(ctx context.Context, sb *tartarus.Sandbox) (*tartarus.Stats, error) {
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return nil, err
	}
	if ss, ok := rt.(tartarus.StatsSampler); ok {
		return ss.SampleStats(ctx, sb.ID)
	}
	return rt.Stats(ctx, sb.ID)
}

// DiskFiler is a runtime that can name a sandbox's disk on the host: a
// copy-on-write overlay over the template's root filesystem (microvm).
type DiskFiler interface {
	DiskFiles(ctx context.Context, id string) (overlay, base string, err error)
}

// DiskFiles names the sandbox's disk overlay and the template image under
// it, for runtimes that keep one (DiskFiler).
func (a *Agent) DiskFiles(ctx context.Context, sb *tartarus.Sandbox) (overlay, base string, err error) {
	rt, err := a.runtime(sb.Runtime)
	if err != nil {
		return "", "", err
	}
	df, ok := rt.(DiskFiler)
	if !ok {
		return "", "", tartarus.Errorf(tartarus.ErrNotImplemented, "runtime %s keeps no disk overlay the host can read", sb.Runtime)
	}
	return df.DiskFiles(ctx, sb.ID)
}
