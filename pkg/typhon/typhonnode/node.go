// Package typhonnode lets Typhon (pkg/typhon) hold the sandboxes of one
// node agent (pkg/hecatoncheir): it implements typhon.Host over the agent,
// reading host counters from /proc, the console from the runtime, and the
// guest's own view (marked guest-reported) through exec.
package typhonnode

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
)

// Bounds of what is collected from one sandbox.
const (
	keepReadings   = 60
	consoleBytes   = 16 << 10
	screenLines    = 40
	psOutputLimit  = 256 << 10
	guestCallLimit = 10 * time.Second
)

// evidenceTenant owns the snapshots taken as evidence, so that the
// sandbox's owner cannot restore (and so free) a copy of what is held.
const evidenceTenant = "quarantine"

// Host is typhon.Host over a node agent.
type Host struct {
	agent *hecatoncheir.Agent
	clk   clock.Clock

	// Scratch is a directory for the disk diff's raw copy of a disk
	// (its changed and template blocks, sparse); empty means os.TempDir.
	Scratch string

	mu       sync.Mutex
	last     map[string]reading   // previous host reading, for CPU %
	readings map[string][]reading // recent readings, for evidence
	released map[string]time.Time // last release, by sandbox
}

var _ typhon.Host = (*Host)(nil)

type reading struct {
	At         time.Time `json:"at"`
	CPUSeconds float64   `json:"-"`
	CPUPercent float64   `json:"cpu_percent"`
	// Demand: see typhon.Signals.CPUDemand.
	DemandTID     int     `json:"-"`
	DemandSeconds float64 `json:"-"`
	CPUDemand     float64 `json:"cpu_demand"`
	MemoryMB      float64 `json:"memory_mb"`
	// Processes is what the guest reports: it may lie.
	Processes int  `json:"processes"`
	Host      bool `json:"host_counters"`
}

// New returns a Host over agent.
func New(agent *hecatoncheir.Agent, clk clock.Clock) *Host {
	return &Host{agent: agent, clk: clk, last: map[string]reading{}, readings: map[string][]reading{},
		released: map[string]time.Time{}}
}

// Sandboxes implements typhon.Host: the node's running sandboxes.
func (h *Host) Sandboxes(ctx context.Context) ([]*tartarus.Sandbox, error) {
	live, err := h.agent.List(ctx, tartarus.SandboxFilter{Node: h.agent.Node(), States: []tartarus.State{tartarus.StateRunning}})
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, sb := range live {
		keep[sb.ID] = true
	}
	h.mu.Lock()
	for id := range h.last {
		if !keep[id] {
			delete(h.last, id)
			delete(h.readings, id)
		}
	}
	for id, t := range h.released {
		if h.clk.Now().Sub(t) > netWindow {
			delete(h.released, id)
		}
	}
	h.mu.Unlock()
	return live, nil
}

// Get implements typhon.Host.
func (h *Host) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return h.agent.Get(ctx, id)
}

// SetQuarantined implements typhon.Host.
func (h *Host) SetQuarantined(ctx context.Context, id string, on bool) error {
	_, err := h.agent.SetQuarantined(ctx, id, on)
	if err == nil && !on {
		h.mu.Lock()
		h.released[id] = h.clk.Now()
		h.mu.Unlock()
	}
	return err
}

var _ typhon.Sleeper = (*Host)(nil)

var _ typhon.SeccompHardener = (*Host)(nil)

// SetStrictSeccomp implements typhon.SeccompHardener through the agent.
func (h *Host) SetStrictSeccomp(ctx context.Context, id string, on bool) error {
	return h.agent.SetStrictSeccomp(ctx, id, on)
}

// Hibernate implements typhon.Sleeper through the agent (Hypnos).
func (h *Host) Hibernate(ctx context.Context, id string) error {
	_, err := h.agent.Hibernate(ctx, id)
	return err
}

// Wake implements typhon.Sleeper through the agent (Hypnos).
func (h *Host) Wake(ctx context.Context, id string) error {
	_, err := h.agent.Wake(ctx, id)
	return err
}

// Destroy implements typhon.Host: Thanatos ends the sandbox with reason
// policy_violation, at once.
func (h *Host) Destroy(ctx context.Context, id string) error {
	sb, err := h.agent.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State.Final() {
		return nil
	}
	_, err = h.agent.Terminate(ctx, id, &tartarus.ShutdownOptions{Reason: tartarus.ReasonPolicyViolation, Tenant: sb.Tenant})
	return err
}

// Signals implements typhon.Host: CPU and memory from the host's counters
// of the sandbox's process where the runtime has one (else the guest's
// report), processes from the guest, exec history from the agent's log.
func (h *Host) Signals(ctx context.Context, sb *tartarus.Sandbox) (*typhon.Signals, error) {
	now := h.clk.Now()
	s := &typhon.Signals{SandboxID: sb.ID, Tenant: sb.Tenant, Template: sb.Template, Runtime: sb.Runtime,
		Age: now.Sub(sb.CreatedAt), Metadata: sb.Metadata}
	r := reading{At: now.UTC()}
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	gs, gerr := h.agent.GuestStats(gctx, sb)
	cancel()
	if gerr == nil {
		r.Processes = gs.Processes
	}
	if hc, ok := h.agent.HostCounters(ctx, sb); ok {
		r.Host, r.CPUSeconds, r.MemoryMB = true, hc.CPUSeconds, hc.RSSMB
		r.DemandTID, r.DemandSeconds = hc.BusiestTID, hc.DemandSeconds
		h.mu.Lock()
		prev, had := h.last[sb.ID]
		h.mu.Unlock()
		if had && prev.Host && now.After(prev.At) {
			wall := now.Sub(prev.At).Seconds()
			r.CPUPercent = max(0, (hc.CPUSeconds-prev.CPUSeconds)/wall*100)
			if prev.DemandTID != 0 && prev.DemandTID == r.DemandTID {
				r.CPUDemand = min(100, max(0, (r.DemandSeconds-prev.DemandSeconds)/wall*100))
			}
		}
	} else if gerr == nil {
		r.CPUPercent, r.MemoryMB = gs.CPUPercent, float64(gs.MemoryUsedMB)
	} else {
		return nil, gerr
	}
	h.mu.Lock()
	h.last[sb.ID] = r
	rs := append(h.readings[sb.ID], r)
	if len(rs) > keepReadings {
		rs = rs[len(rs)-keepReadings:]
	}
	h.readings[sb.ID] = rs
	h.mu.Unlock()
	s.CPUPercent, s.CPUDemand, s.MemoryMB, s.Processes, s.HostCounters = r.CPUPercent, r.CPUDemand, r.MemoryMB, r.Processes, r.Host
	if sb.MemoryMB > 0 {
		s.MemoryPercent = r.MemoryMB / float64(sb.MemoryMB) * 100
	}
	s.NetAttempts, s.NetDenied = h.netCounts(ctx, sb)
	for _, e := range h.agent.ExecHistory(sb.ID) {
		s.ExecHistory = append(s.ExecHistory, strings.Join(e.Cmd, " "))
	}
	return s, nil
}

// Collect implements typhon.Host: a memory and disk snapshot (a Thanatos
// checkpoint kept for keepFor), the resource readings, the API's exec log
// and the console's last screen (host-observed), and the guest's process
// tree (guest-reported).
func (h *Host) Collect(ctx context.Context, sb *tartarus.Sandbox, iso *typhon.QuarantineIsolation, keepFor time.Duration) []typhon.Evidence {
	now := h.clk.Now().UTC()
	var out []typhon.Evidence
	note := func(what string, err error) {
		out = append(out, typhon.Evidence{Type: tartarus.EvidenceNote, Source: tartarus.SourceHost, Timestamp: now,
			Description: fmt.Sprintf("%s not collected: %v", what, err), Data: []byte(err.Error())})
	}

	h.mu.Lock()
	rs := append([]reading(nil), h.readings[sb.ID]...)
	h.mu.Unlock()
	if len(rs) > 0 {
		hostCounters := rs[len(rs)-1].Host
		b, _ := json.Marshal(map[string]any{"host_counters": hostCounters, "samples": rs})
		desc := "CPU and memory of the sandbox's host process (QEMU), process counts from the guest"
		if !hostCounters {
			desc = "CPU, memory and process counts as the guest reported them"
		}
		src := tartarus.SourceHost
		if !hostCounters {
			src = tartarus.SourceGuest
		}
		out = append(out, typhon.Evidence{Type: tartarus.EvidenceResourceSpike, Source: src, Timestamp: now, Description: desc, Data: b})
	}

	execs := h.agent.ExecHistory(sb.ID)
	if execs == nil {
		execs = []hecatoncheir.ExecEntry{}
	}
	b, _ := json.Marshal(execs)
	out = append(out, typhon.Evidence{Type: tartarus.EvidenceExecHistory, Source: tartarus.SourceHost, Timestamp: now,
		Description: fmt.Sprintf("the last %d commands run through the API", len(execs)), Data: b})

	if con, err := h.agent.Console(ctx, sb, consoleBytes); err != nil {
		note("console", err)
	} else {
		out = append(out, typhon.Evidence{Type: tartarus.EvidenceScreenshot, Source: tartarus.SourceHost, Timestamp: now,
			Description: fmt.Sprintf("the console's last %d lines, as text", screenLines), Data: lastScreen(con, screenLines)})
	}

	ps, err := h.guestRun(ctx, sb, []string{"ps", "-o", "pid,ppid,user,args"})
	if err != nil {
		// Templates without ps (Debian minbase): read /proc in the guest.
		ps, err = h.guestRun(ctx, sb, []string{"sh", "-c", procList})
	}
	if err != nil {
		note("process tree", err)
	} else {
		out = append(out, typhon.Evidence{Type: tartarus.EvidenceProcessTree, Source: tartarus.SourceGuest, Timestamp: now,
			Description: "the guest's process list (guest-reported: it may lie)", Data: ps})
	}
	if iso != nil && iso.EnableStrace {
		if tr, err := h.guestRun(ctx, sb, []string{"sh", "-c", syscallTrace}); err != nil {
			note("syscall trace", err)
		} else {
			out = append(out, typhon.Evidence{Type: tartarus.EvidenceSyscallTrace, Source: tartarus.SourceGuest, Timestamp: now,
				Description: "each guest process's current system call (/proc/PID/syscall), and 2 s of strace where the guest has it (guest-reported: it may lie)", Data: tr})
		}
	}
	if iso != nil && iso.EnableAuditd {
		note("audit records", fmt.Errorf("auditd is not collected: the host's audit subsystem sees QEMU's system calls, not the guest's, and the guest's own auditd would be guest-reported like its strace (enable_strace)"))
	}
	if overlay, base, err := h.agent.DiskFiles(ctx, sb); err == nil {
		// Flush what the guest holds in its page cache (best effort: a
		// guest that refuses only hides writes it has not yet made).
		_, _ = h.guestRun(ctx, sb, []string{"sync"})
		if d, err := diffDisk(ctx, overlay, base, h.Scratch); err != nil {
			note("file access (disk diff)", err)
		} else {
			b, _ := json.Marshal(d)
			out = append(out, typhon.Evidence{Type: tartarus.EvidenceFileAccess, Source: tartarus.SourceHost, Timestamp: now,
				Description: fmt.Sprintf("%d disk blocks the guest changed against its template, in %d files (blocks host-observed; file names read from the guest's file system)", d.ChangedBlocks, len(d.Files)),
				Data:        b})
		}
	}
	if b, err := h.networkEvidence(ctx, sb); err != nil {
		note("network log", err)
	} else {
		out = append(out, typhon.Evidence{Type: tartarus.EvidenceNetworkLog, Source: tartarus.SourceHost, Timestamp: now,
			Description: "the sandbox's connection log, from its network namespace on the host", Data: b})
	}

	ck, err := h.agent.Terminations().CheckpointFor(ctx, sb.ID, evidenceTenant, keepFor)
	if err != nil {
		note("memory and disk snapshot", err)
	} else {
		out = append(out, typhon.Evidence{Type: tartarus.EvidenceSnapshot, Source: tartarus.SourceHost, Timestamp: now,
			Description: fmt.Sprintf("memory and disk snapshot, checkpoint %s (restorable with from_checkpoint until %s)", ck.ID, ck.ExpiresAt.Format(time.RFC3339)),
			Ref:         ck.ID, Size: ck.Size})
	}
	return out
}

// syscallTrace reads, in the guest, each process's current system call
// (number and arguments, /proc/PID/syscall) and, where the guest has
// strace, traces its processes for 2 s. Output is bounded by guestRun.
const syscallTrace = `for d in /proc/[0-9]*; do p=${d#/proc/}; c=$(cat $d/comm 2>/dev/null); s=$(cat $d/syscall 2>/dev/null); echo "$p $c: $s"; done
if command -v strace >/dev/null 2>&1; then
  pids=$(for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" != 1 ] && [ "$p" != $$ ] && [ -n "$(cat $d/cmdline 2>/dev/null | head -c1)" ] && printf ' -p %s' $p; done)
  echo "--- strace (2 s)"; timeout 2 strace -f -qq -tt $pids 2>&1 | head -c 200000
fi
true`

// procList lists the guest's processes from /proc where there is no ps:
// pid, parent pid and command line.
const procList = `for d in /proc/[0-9]*; do p=${d#/proc/}; pp=$(sed -n 's/^PPid:[[:space:]]*//p' $d/status 2>/dev/null); c=$(tr '\0' ' ' < $d/cmdline 2>/dev/null); echo "$p $pp $c"; done`

// guestRun runs a command in the guest, bounded in time and output.
func (h *Host) guestRun(ctx context.Context, sb *tartarus.Sandbox, cmd []string) ([]byte, error) {
	var out capped
	out.limit = psOutputLimit
	gctx, cancel := context.WithTimeout(ctx, guestCallLimit)
	defer cancel()
	res, err := h.agent.Exec(gctx, sb.ID, &tartarus.ExecRequest{Cmd: cmd, User: "root", Stdout: &out, Stderr: &out, Timeout: guestCallLimit})
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("%s exited %d: %s", cmd[0], res.ExitCode, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

type capped struct {
	bytes.Buffer
	limit int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.limit - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// lastScreen keeps the last n lines of a console, as a terminal would show
// them: carriage returns overwrite, escape sequences are dropped.
func lastScreen(b []byte, n int) []byte {
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n") {
		if i := strings.LastIndexByte(l, '\r'); i >= 0 {
			l = l[i+1:]
		}
		lines = append(lines, stripEscapes(l))
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return []byte(strings.Join(lines, "\n"))
}

// stripEscapes drops ANSI CSI sequences and other control bytes.
func stripEscapes(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			i += 2
			for i < len(s) && (s[i] < 0x40 || s[i] > 0x7e) {
				i++
			}
			continue
		}
		if c < 0x20 && c != '\t' || c == 0x7f {
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
