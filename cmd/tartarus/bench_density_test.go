package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkDensity fills one real server (jailed QEMU under TCG, mapped
// template memory, no network) with idle 256 MiB python sandboxes through
// the Go SDK, one create after another, and at each step (20, then 60 up)
// measures what the host pays for them and whether exec still answers:
// create → first exec during the fill, QEMU's CPU per idle sandbox (mean
// and max, % of a core), PSS per sandbox, the host's MemAvailable drop per
// sandbox, the server's own CPU, and the round trip of `true` in every
// sandbox and in 10 random ones 10 times each. Run it once:
//
//	TARTARUS_E2E=1 go test -run XXX -bench Density -benchtime 1x ./cmd/tartarus/
//
// TARTARUS_BENCH_DENSITY=20,60 (the default) sets the steps; it needs what
// BenchmarkUserPath needs and skips without it.
func BenchmarkDensity(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	steps, err := densitySteps(os.Getenv("TARTARUS_BENCH_DENSITY"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		// One host CPU backs 8 sandbox CPUs by default: 16 one-CPU
		// sandboxes on this 2-core host. Idle ones cost next to nothing,
		// which is what this measures, so let the last step fit.
		last := steps[len(steps)-1]
		e := newE2E(b, "--cpu-overcommit", strconv.Itoa(max(hecatoncheir.DefaultCPUOvercommit, (last+runtime.NumCPU()-1)/runtime.NumCPU())))
		if out, err := exec.Command(e.bin, "template", "build", "--data-dir", e.cacheDir(), "python").CombinedOutput(); err != nil {
			b.Fatalf("build the python template: %v\n%s", err, out)
		}
		rows := benchDensity(b, e, benchClient(b, e), steps)
		for _, r := range rows {
			p := fmt.Sprintf("n%d-", r.n)
			b.ReportMetric(ms(pct(r.create, 50)), p+"create-exec-p50-ms")
			b.ReportMetric(ms(pct(r.create, 99)), p+"create-exec-p99-ms")
			b.ReportMetric(r.cpuMean, p+"idle-cpu-mean-%")
			b.ReportMetric(r.cpuMax, p+"idle-cpu-max-%")
			b.ReportMetric(r.pssMiB, p+"pss-MiB")
			b.ReportMetric(r.privateMiB, p+"private-MiB")
			b.ReportMetric(r.hostMiB, p+"host-MiB")
			b.ReportMetric(ms(pct(r.execAll, 50)), p+"exec-p50-ms")
			b.ReportMetric(ms(pct(r.execAll, 99)), p+"exec-p99-ms")
			b.ReportMetric(ms(pct(r.execRepeat, 50)), p+"exec-repeat-p50-ms")
			b.ReportMetric(ms(pct(r.execRepeat, 99)), p+"exec-repeat-p99-ms")
			b.ReportMetric(float64(r.fit()), p+"fit-24GiB")
		}
		printDensity(rows)
		e.kill(b)
	}
}

// densitySteps parses TARTARUS_BENCH_DENSITY: how many sandboxes are up
// at each measurement, ascending ("20,60" when empty).
func densitySteps(s string) ([]int, error) {
	if s == "" {
		s = "20,60"
	}
	var steps []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || (len(steps) > 0 && n <= steps[len(steps)-1]) {
			return nil, fmt.Errorf("TARTARUS_BENCH_DENSITY=%q: want ascending counts of sandboxes, like 20,60", s)
		}
		steps = append(steps, n)
	}
	return steps, nil
}

// densityRow is one step: what the host paid with n idle sandboxes up.
type densityRow struct {
	n int
	// create holds this step's creates (create → first exec); fill their
	// sum.
	create []time.Duration
	fill   time.Duration
	// CPU in % of one core over the window: each QEMU's (mean, max), the
	// server's, and the whole host's busy time (all cores).
	cpuMean, cpuMax, serverCPU, hostCPU float64
	// pssMiB is the mean PSS of the QEMUs, privateMiB their mean private
	// memory (what only that QEMU maps); hostMiB the host's MemAvailable
	// drop since before the fill, per sandbox.
	pssMiB, privateMiB, hostMiB float64
	// execAll is one `true` in every sandbox; execRepeat 10 in each of 10
	// random ones.
	execAll, execRepeat []time.Duration
	load                string
}

// fit is how many such sandboxes 24 GiB holds at hostMiB each.
func (r densityRow) fit() int {
	if r.hostMiB <= 0 {
		return 0
	}
	return int(24 * 1024 / r.hostMiB)
}

const (
	densitySettle = 20 * time.Second
	densityWindow = 20 * time.Second
)

func benchDensity(b *testing.B, e *e2e, c *client.Client, steps []int) []densityRow {
	b.Helper()
	ctx := context.Background()
	var ids []string
	b.Cleanup(func() {
		for _, id := range ids {
			_, _ = c.DeleteSandbox(ctx, id)
		}
	})
	create := func() string {
		// A timeout far beyond the run, and no auto-hibernate (the
		// server's default is off): they must stay up.
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", MemoryMB: 256, TimeoutS: 3600})
		if err != nil {
			b.Fatalf("create sandbox %d: %v", len(ids)+1, err)
		}
		ids = append(ids, sb.ID)
		benchExecTrue(b, c, sb.ID)
		return sb.ID
	}
	// The first create builds the template's snapshot (and the mapped
	// memory every later create shares); it is not part of the fill.
	first := create()
	if _, err := c.DeleteSandbox(ctx, first); err != nil {
		b.Fatal(err)
	}
	ids = ids[:0]
	time.Sleep(2 * time.Second)
	before := memAvailableKiB(b)

	var rows []densityRow
	for _, n := range steps {
		r := densityRow{n: n}
		for len(ids) < n {
			start := time.Now()
			create()
			d := time.Since(start)
			r.create = append(r.create, d)
			r.fill += d
		}
		time.Sleep(densitySettle)

		pids := make([]int, len(ids))
		for i, id := range ids {
			pids[i] = qemuPidOf(b, id)
		}
		cpu, server, host := densityCPU(b, append(pids, e.server.Process.Pid), densityWindow)
		r.cpuMean, r.cpuMax, r.serverCPU, r.hostCPU = mean(cpu[:len(pids)]), slices.Max(cpu[:len(pids)]), server, host
		for _, pid := range pids {
			p, err := pssKiB(pid)
			if err != nil {
				b.Fatal(err)
			}
			r.pssMiB += float64(p) / 1024 / float64(len(pids))
			r.privateMiB += float64(privateKiB(b, pid)) / 1024 / float64(len(pids))
		}
		r.hostMiB = float64(before-memAvailableKiB(b)) / 1024 / float64(n)
		load, _ := os.ReadFile("/proc/loadavg")
		r.load = strings.Join(strings.Fields(string(load))[:3], " ")

		// Exec still answering, with all of them up: each once, then a
		// random 10 ten times each.
		timeExec := func(id string) time.Duration {
			start := time.Now()
			benchExecTrue(b, c, id)
			return time.Since(start)
		}
		for _, id := range ids {
			r.execAll = append(r.execAll, timeExec(id))
		}
		for _, i := range rand.Perm(len(ids))[:min(10, len(ids))] {
			for range 10 {
				r.execRepeat = append(r.execRepeat, timeExec(ids[i]))
			}
		}
		rows = append(rows, r)
	}
	for len(ids) > 0 {
		if _, err := c.DeleteSandbox(ctx, ids[0]); err != nil {
			b.Fatal(err)
		}
		ids = ids[1:]
	}
	return rows
}

// densityCPU measures, over window, the CPU of each of pids (utime+stime,
// in % of a core; the last pid's is also returned as last) and the host's
// busy time over all its cores (in % of a core).
func densityCPU(b *testing.B, pids []int, window time.Duration) (each []float64, last, host float64) {
	b.Helper()
	const hz = 100 // USER_HZ on Linux
	ticks := func() []int64 {
		t := make([]int64, len(pids))
		for i, pid := range pids {
			n, err := cpuTicks(pid)
			if err != nil {
				b.Fatal(err)
			}
			t[i] = n
		}
		return t
	}
	t0, h0, w0 := ticks(), hostBusyTicks(b), time.Now()
	time.Sleep(window)
	t1, h1, w1 := ticks(), hostBusyTicks(b), time.Now()
	secs := w1.Sub(w0).Seconds()
	for i := range pids {
		each = append(each, 100*float64(t1[i]-t0[i])/hz/secs)
	}
	return each, each[len(each)-1], 100 * float64(h1-h0) / hz / secs
}

// hostBusyTicks is the host's non-idle CPU time (all cores) in clock
// ticks, from the first line of /proc/stat.
func hostBusyTicks(b *testing.B) int64 {
	b.Helper()
	s, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := bytes.Cut(s, []byte("\n"))
	var busy int64
	// cpu user nice system idle iowait irq softirq steal (guest fields are
	// already in user and nice).
	for i, f := range strings.Fields(string(line))[1:] {
		if i >= 8 {
			break
		}
		n, _ := strconv.ParseInt(f, 10, 64)
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy
}

// privateKiB is the memory only pid maps (Private_Clean + Private_Dirty
// of its smaps_rollup): what freeing it would give back.
func privateKiB(b *testing.B, pid int) int64 {
	b.Helper()
	s, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		b.Fatal(err)
	}
	var kib int64
	for line := range strings.SplitSeq(string(s), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && (f[0] == "Private_Clean:" || f[0] == "Private_Dirty:") {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			kib += n
		}
	}
	return kib
}

func memAvailableKiB(b *testing.B) int64 {
	b.Helper()
	s, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(s), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no MemAvailable in /proc/meminfo")
	return 0
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(max(len(xs), 1))
}

func printDensity(rows []densityRow) {
	var w bytes.Buffer
	fmt.Fprintf(&w, "\nidle python sandboxes (256 MiB, TCG, jailed, mapped template memory) through the HTTP API\n")
	fmt.Fprintf(&w, "%-44s", "sandboxes up")
	for _, r := range rows {
		fmt.Fprintf(&w, " | %-24d", r.n)
	}
	fmt.Fprintln(&w)
	line := func(name string, get func(densityRow) string) {
		fmt.Fprintf(&w, "%-44s", name)
		for _, r := range rows {
			fmt.Fprintf(&w, " | %-24s", get(r))
		}
		fmt.Fprintln(&w)
	}
	durs := func(ds []time.Duration) string {
		return fmt.Sprintf("%.1f / %.1f ms (%d)", ms(pct(ds, 50)), ms(pct(ds, 99)), len(ds))
	}
	line("create → first exec in this step, p50 / p99", func(r densityRow) string { return durs(r.create) })
	line("this step's creates, in all", func(r densityRow) string { return fmt.Sprintf("%.1f s", r.fill.Seconds()) })
	line("idle CPU per sandbox, mean / max (% core)", func(r densityRow) string { return fmt.Sprintf("%.2f / %.2f %%", r.cpuMean, r.cpuMax) })
	line("all idle sandboxes together (% core)", func(r densityRow) string { return fmt.Sprintf("%.1f %%", r.cpuMean*float64(r.n)) })
	line("the server process (% core)", func(r densityRow) string { return fmt.Sprintf("%.2f %%", r.serverCPU) })
	line("the host, all cores busy (% core)", func(r densityRow) string { return fmt.Sprintf("%.1f %%", r.hostCPU) })
	line("PSS per sandbox, mean", func(r densityRow) string { return fmt.Sprintf("%.1f MiB", r.pssMiB) })
	line("private memory per QEMU, mean", func(r densityRow) string { return fmt.Sprintf("%.1f MiB", r.privateMiB) })
	line("host MemAvailable drop per sandbox", func(r densityRow) string { return fmt.Sprintf("%.1f MiB", r.hostMiB) })
	line("fit in 24 GiB at that", func(r densityRow) string { return strconv.Itoa(r.fit()) })
	line("exec `true`, each sandbox once, p50 / p99", func(r densityRow) string { return durs(r.execAll) })
	line("exec `true`, 10 random × 10, p50 / p99", func(r densityRow) string { return durs(r.execRepeat) })
	line("load average after the window", func(r densityRow) string { return r.load })
	_, _ = io.Copy(os.Stdout, &w)
}
