package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// activeCPUPercent is the CPU use above which a sampling window counts as
// activity: more than the agent and kernel housekeeping use when idle.
const activeCPUPercent = 2.0

// activity records when the guest last did something for a user.
type activity struct {
	mu   sync.Mutex
	last time.Time
}

func (a *activity) touch(t time.Time) {
	a.mu.Lock()
	if t.After(a.last) {
		a.last = t
	}
	a.mu.Unlock()
}

func (a *activity) get() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// cpuTimes are the busy and total jiffies of all CPUs.
type cpuTimes struct{ busy, total uint64 }

// parseCPUTimes reads the aggregate "cpu" line of /proc/stat.
func parseCPUTimes(stat []byte) (cpuTimes, error) {
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 5 || string(f[0]) != "cpu" {
		return cpuTimes{}, fmt.Errorf("parse /proc/stat: no cpu line")
	}
	var t cpuTimes
	// user nice system idle iowait irq softirq steal; guest time is
	// already counted in user and nice.
	for i := 1; i < len(f) && i <= 8; i++ {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("parse /proc/stat: %w", err)
		}
		t.total += v
		if i != 4 && i != 5 { // idle, iowait
			t.busy += v
		}
	}
	return t, nil
}

func readCPUTimes() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseCPUTimes(b)
}

// percent is the CPU use between two readings, in percent of all CPUs.
func percent(from, to cpuTimes) (float64, bool) {
	if to.total <= from.total || to.busy < from.busy {
		return 0, false
	}
	return 100 * float64(to.busy-from.busy) / float64(to.total-from.total), true
}

// cpuSampler keeps the last /proc/stat reading and the CPU use of the last
// window.
type cpuSampler struct {
	mu     sync.Mutex
	last   cpuTimes
	lastAt time.Time
	pct    float64
}

// sample takes a reading and returns the use since the previous one.
func (s *cpuSampler) sample(now time.Time) (float64, bool) {
	t, err := readCPUTimes()
	if err != nil {
		return 0, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, had := s.last, !s.lastAt.IsZero()
	s.last, s.lastAt = t, now
	if !had {
		return 0, false
	}
	pct, ok := percent(prev, t)
	if ok {
		s.pct = pct
	}
	return pct, ok
}

// current is the CPU use since the last sample, or of the last window when
// that sample is too recent to say anything.
func (s *cpuSampler) current(now time.Time) float64 {
	t, err := readCPUTimes()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && now.Sub(s.lastAt) >= 500*time.Millisecond {
		if pct, ok := percent(s.last, t); ok {
			return pct
		}
	}
	return s.pct
}

// parseMeminfo returns MemTotal and MemAvailable in kB.
func parseMeminfo(b []byte) (total, avail uint64, err error) {
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		v, perr := strconv.ParseUint(string(f[1]), 10, 64)
		if perr != nil {
			continue
		}
		switch string(f[0]) {
		case "MemTotal:":
			total, haveTotal = v, true
		case "MemAvailable:":
			avail, haveAvail = v, true
		}
	}
	if !haveTotal || !haveAvail {
		return 0, 0, fmt.Errorf("parse /proc/meminfo: MemTotal or MemAvailable missing")
	}
	return total, avail, nil
}

// pfKthread marks kernel threads in /proc/PID/stat's flags.
const pfKthread = 0x00200000

// countProcesses counts user-space processes (not kernel threads) in /proc,
// the agent itself left out: what remains is the sandbox's own work.
func countProcesses() (int, error) {
	self := strconv.Itoa(os.Getpid())
	d, err := os.Open("/proc")
	if err != nil {
		return 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' || name == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		if flags, ok := statFlags(b); ok && flags&pfKthread == 0 {
			n++
		}
	}
	return n, nil
}

// statFlags returns the flags field of a /proc/PID/stat line.
func statFlags(b []byte) (uint64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 7 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(f[6]), 10, 64)
	return v, err == nil
}

func (a *Agent) stats() (*tartarus.Stats, error) {
	now := a.clock.Now()
	mi, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	total, avail, err := parseMeminfo(mi)
	if err != nil {
		return nil, err
	}
	procs, err := countProcesses()
	if err != nil {
		return nil, err
	}
	st := &tartarus.Stats{
		CPUPercent:     a.cpu.current(now),
		MemoryUsedMB:   int((total - min(avail, total)) / 1024),
		MemoryTotalMB:  int(total / 1024),
		Processes:      procs,
		LastActivityAt: a.activity.get(),
	}
	st.DiskUsedMB, st.DiskTotalMB = diskUsage("/")
	return st, nil
}
