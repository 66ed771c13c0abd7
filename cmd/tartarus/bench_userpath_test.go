package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// BenchmarkUserPath measures what a user of the API sees, through the real
// server over HTTP (store, auth, node agent, jailed microvm under TCG), on
// the base and python templates: create → first exec, the exec round trip
// of `true`, hibernate of a 256 MiB sandbox that wrote 20 MB of random
// bytes, wake → first exec, the stored snapshot's size, and the PSS and CPU
// of idle sandboxes. Beside them, in the same run, the floor: the microvm
// driver alone (no server, no jail) restoring the same template snapshot
// and running `true`. Run it once:
//
//	TARTARUS_E2E=1 TARTARUS_TEST_DATA=/var/tmp/tartarus-test go test -run XXX -bench UserPath -benchtime 1x ./cmd/tartarus/
//
// It needs what TestServerEndToEnd needs (and the python template, built
// on first use) and skips without it.
func BenchmarkUserPath(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	n := userPathCounts()
	// TARTARUS_BENCH_MEMORY=both runs the server with mapped template
	// memory (the default) and, after it in the same run, without.
	variants := []struct{ suffix, flag string }{{"", ""}}
	if os.Getenv("TARTARUS_BENCH_MEMORY") == "both" {
		variants = append(variants, struct{ suffix, flag string }{"-copied", "--map-template-memory=false"})
	}
	for b.Loop() {
		var rows []userPathRow
		for _, v := range variants {
			var args []string
			if v.flag != "" {
				args = append(args, v.flag)
			}
			e := newE2E(b, args...)
			if out, err := exec.Command(e.bin, "template", "build", "--data-dir", e.cacheDir(), "python").CombinedOutput(); err != nil {
				b.Fatalf("build the python template: %v\n%s", err, out)
			}
			c := benchClient(b, e)
			for _, tpl := range []string{"base", "python"} {
				r := benchUserPath(b, e, c, tpl, n)
				label := tpl + v.suffix
				r.template = label
				rows = append(rows, r)
				for name, ds := range map[string][]time.Duration{"create-exec": r.create, "exec": r.exec,
					"hibernate": r.hibernate, "wake-exec": r.wake, "floor-restore-exec": r.floor} {
					b.ReportMetric(ms(pct(ds, 50)), label+"-"+name+"-p50-ms")
					b.ReportMetric(ms(pct(ds, 99)), label+"-"+name+"-p99-ms")
				}
				b.ReportMetric(float64(r.stored)/(1<<20), label+"-stored-MiB")
				b.ReportMetric(r.pssMiB, label+"-idle-pss-MiB")
				b.ReportMetric(r.idleCPU, label+"-idle-cpu-%")
			}
			e.kill(b)
		}
		// What `make run` gives: the same server with one warm sandbox
		// per template, a user creating one sandbox at a time.
		e := newE2E(b, "--prewarm", "--warm-pool", "1")
		c := benchClient(b, e)
		for i := range rows {
			if rows[i].template == "base" || rows[i].template == "python" {
				rows[i].warm = benchWarmCreates(b, e, c, rows[i].template, n.creates)
				b.ReportMetric(ms(pct(rows[i].warm, 50)), rows[i].template+"-warm-create-exec-p50-ms")
				b.ReportMetric(ms(pct(rows[i].warm, 99)), rows[i].template+"-warm-create-exec-p99-ms")
			}
		}
		e.kill(b)
		printUserPath(b, rows)
	}
}

// userPathN says how many of each measurement a run takes.
type userPathN struct{ creates, execs, hibernates, floor, idle int }

// userPathCounts keeps a -benchtime 1x run near a minute; TARTARUS_BENCH_FULL=1
// takes more samples for the figures in docs/BENCHMARKS.md.
func userPathCounts() userPathN {
	if os.Getenv("TARTARUS_BENCH_FULL") == "1" {
		return userPathN{creates: 20, execs: 200, hibernates: 5, floor: 10, idle: 6}
	}
	return userPathN{creates: 6, execs: 50, hibernates: 2, floor: 4, idle: 3}
}

type userPathRow struct {
	template                             string
	create, exec, hibernate, wake, floor []time.Duration
	// warm is create → first exec on a server with make run's warm pool.
	warm []time.Duration
	// wakeParts splits wake → first exec.
	wakeParts wakeParts
	// created lists the timed creates' sandboxes, for the breakdown.
	created []string
	// breakdown of the timed creates (medians), from the server's log
	parts           createParts
	hibParts        hibernateParts // medians of the hibernates, from the server's log
	stored          int64
	pssMiB, idleCPU float64 // per idle sandbox; CPU in % of one core
}

func benchUserPath(b *testing.B, e *e2e, c *client.Client, tpl string, n userPathN) userPathRow {
	b.Helper()
	ctx := context.Background()
	r := userPathRow{template: tpl}
	create := func() (string, time.Duration) {
		start := time.Now()
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: tpl})
		if err != nil {
			b.Fatalf("create %s: %v", tpl, err)
		}
		benchExecTrue(b, c, sb.ID)
		return sb.ID, time.Since(start)
	}
	del := func(id string) {
		if _, err := c.DeleteSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	first, _ := create() // builds the template's snapshot
	del(first)
	var idle []string
	for i := range n.creates {
		id, d := create()
		r.create = append(r.create, d)
		r.created = append(r.created, id)
		if i < n.idle {
			idle = append(idle, id)
		} else {
			del(id)
		}
	}

	id := idle[0]
	for range n.execs {
		start := time.Now()
		benchExecTrue(b, c, id)
		r.exec = append(r.exec, time.Since(start))
	}

	// Idle sandboxes: settle, then PSS and CPU time over a window.
	time.Sleep(3 * time.Second)
	pids := make([]int, len(idle))
	for i, id := range idle {
		pids[i] = qemuPidOf(b, id)
	}
	r.idleCPU = idleCPUPercent(b, pids, 10*time.Second)
	for _, pid := range pids {
		p, err := pssKiB(pid)
		if err != nil {
			b.Fatal(err)
		}
		r.pssMiB += float64(p) / 1024 / float64(len(pids))
	}

	if _, err := c.Exec(ctx, id, &api.ExecRequest{Cmd: []string{"sh", "-c", "head -c 20000000 /dev/urandom > /tmp/junk"}}); err != nil {
		b.Fatal(err)
	}
	for range n.hibernates {
		start := time.Now()
		h, err := c.Hibernate(ctx, id)
		if err != nil || h.State != tartarus.StateHibernated {
			b.Fatalf("hibernate: %+v %v", h, err)
		}
		r.hibernate = append(r.hibernate, time.Since(start))
		r.stored = h.SnapshotBytes
		start = time.Now()
		if w, err := c.Wake(ctx, id); err != nil || w.State != tartarus.StateRunning {
			b.Fatalf("wake: %+v %v", w, err)
		}
		woken := time.Since(start)
		benchExecTrue(b, c, id)
		r.wake = append(r.wake, time.Since(start))
		r.wakeParts.request = append(r.wakeParts.request, woken)
		r.wakeParts.exec = append(r.wakeParts.exec, time.Since(start)-woken)
	}
	r.wakeParts.restores = restoreMarks(b, e, id, n.hibernates)
	for _, id := range idle {
		del(id)
	}
	r.floor = benchFloor(b, e, tpl, n.floor)
	r.parts = createBreakdown(b, e, r.created, r.create)
	r.hibParts = hibernateBreakdown(b, e, id)
	return r
}

// wakeParts splits each wake → first exec: the wake request as the client
// saw it, the driver's restore inside it (its log line's cumulative marks),
// the wake's restore around that (fetching, checking and unpacking the
// snapshot), and the first exec after it.
type wakeParts struct {
	request, exec []time.Duration
	restores      []map[string]time.Duration
}

// restoreMarks returns the marks of the last n "restored" lines the server
// logged for sandbox id (its wakes), oldest first.
func restoreMarks(b *testing.B, e *e2e, id string, n int) []map[string]time.Duration {
	b.Helper()
	var all []map[string]time.Duration
	var woken, fetches []time.Duration
	for _, l := range serverLog(b, e) {
		if l.f["sandbox"] != id {
			continue
		}
		switch l.msg {
		case "snapshot restored":
			v, _ := strconv.Atoi(l.f["fetch_ms"])
			fetches = append(fetches, time.Duration(v)*time.Millisecond)
		case "sandbox woken":
			d, _ := time.ParseDuration(l.f["restore"])
			woken = append(woken, d)
		case "restored":
			all = append(all, marks(l.f))
		}
	}
	if len(all) < n || len(woken) < n {
		b.Fatalf("server log has %d restores and %d wakes of %s, want %d or more", len(all), len(woken), id, n)
	}
	all = all[len(all)-n:]
	for i, d := range woken[len(woken)-n:] {
		all[i]["woken"] = d // the wake's restore, the snapshot's fetch included
	}
	if len(fetches) >= n {
		for i, d := range fetches[len(fetches)-n:] {
			all[i]["fetch"] = d
		}
	}
	return all
}

// wakePartNames are the rows printUserPath shows for wakeParts (medians).
var wakePartNames = []partName[wakeParts]{
	{"server around the restore", func(p wakeParts) time.Duration {
		var out []time.Duration
		for i, m := range p.restores {
			out = append(out, p.request[i]-m["woken"])
		}
		return pct(out, 50)
	}},
	{"fetch, check, unpack the snapshot", func(p wakeParts) time.Duration { return pct(markDiff(p.restores, "", "fetch"), 50) }},
	{"clear remains, prepare the VM", func(p wakeParts) time.Duration {
		var out []time.Duration
		for _, m := range p.restores {
			out = append(out, m["woken"]-m["fetch"]-restoreEnd(m))
		}
		return pct(out, 50)
	}},
	{"QEMU start and memory load", func(p wakeParts) time.Duration { return pct(markDiff(p.restores, "disk", "memory"), 50) }},
	{"guest handshake and first sync", func(p wakeParts) time.Duration { return pct(markDiff(p.restores, "memory", "guest"), 50) }},
	{"first exec", func(p wakeParts) time.Duration { return pct(p.exec, 50) }},
}

// restoreEnd is where a driver restore's marks end: the guest answered
// and synced (plus a hostname set by exec for an older agent).
func restoreEnd(m map[string]time.Duration) time.Duration { return max(m["guest"], m["hostname"]) }

func markDiff(ms []map[string]time.Duration, from, to string) []time.Duration {
	var out []time.Duration
	for _, m := range ms {
		out = append(out, m[to]-m[from])
	}
	return out
}

// benchWarmCreates times n creates → first exec of tpl on a server started
// with `make run`'s warm pool (--prewarm --warm-pool 1), each once the pool
// has refilled after the last: one user creating one sandbox at a time.
func benchWarmCreates(b *testing.B, e *e2e, c *client.Client, tpl string, n int) []time.Duration {
	b.Helper()
	ctx := context.Background()
	ready := func() int {
		logs, err := os.ReadFile(e.logs)
		if err != nil {
			b.Fatal(err)
		}
		return countReady(string(logs), tpl)
	}
	createExec := func() time.Duration {
		start := time.Now()
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: tpl})
		if err != nil {
			b.Fatalf("create %s: %v", tpl, err)
		}
		benchExecTrue(b, c, sb.ID)
		took := time.Since(start)
		if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			b.Fatal(err)
		}
		return took
	}
	createExec() // builds the template's snapshot; the pool fills after it
	var out []time.Duration
	for i := range n {
		deadline := time.Now().Add(time.Minute)
		for ready() < i+1 {
			if time.Now().After(deadline) {
				b.Fatalf("%s: the warm pool did not refill (%d ready of %d)", tpl, ready(), i+1)
			}
			time.Sleep(50 * time.Millisecond)
		}
		out = append(out, createExec())
	}
	return out
}

// countReady counts the server's "warm pool sandbox ready" lines for tpl.
func countReady(logs, tpl string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `msg="warm pool sandbox ready"`) && strings.Contains(line, " template="+tpl+" ") {
			n++
		}
	}
	return n
}

// cacheDir is the template cache newE2E linked the server's images from.
func (e *e2e) cacheDir() string {
	images, _ := os.Readlink(filepath.Join(e.data, "images"))
	return filepath.Dir(images)
}

func benchExecTrue(b *testing.B, c *client.Client, id string) {
	b.Helper()
	out, err := c.Exec(context.Background(), id, &api.ExecRequest{Cmd: []string{"true"}})
	if err != nil || out.ExitCode != 0 {
		b.Fatalf("exec true in %s: %+v %v", id, out, err)
	}
}

// benchFloor restores the server's unpacked template snapshot of tpl
// (default shape) n times with the microvm driver alone, unjailed, in this
// process, timing restore + `true`.
func benchFloor(b *testing.B, e *e2e, tpl string, n int) []time.Duration {
	b.Helper()
	ctx := context.Background()
	// The cache names each snapshot template-digest-shape.
	dirs, _ := filepath.Glob(filepath.Join(e.data, "template-cache", "microvm", tpl+"-*-256m-1c"))
	if len(dirs) != 1 {
		b.Fatalf("template snapshots of %s: %v", tpl, dirs)
	}
	src := dirs[0]
	state := b.TempDir()
	d, err := microvm.New(ctx, microvm.Config{StateDir: filepath.Join(state, "vms"), Accel: "tcg"})
	if err != nil {
		b.Fatal(err)
	}
	var ds []time.Duration
	for i := range n {
		dir := filepath.Join(state, "snap-"+strconv.Itoa(i))
		copyDir(b, src, dir)
		id := fmt.Sprintf("floor-%s-%d", tpl, i)
		start := time.Now()
		if err := d.Restore(ctx, &tartarus.VMConfig{ID: id}, dir); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		if err := d.Destroy(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	return ds
}

func copyDir(b *testing.B, src, dst string) {
	b.Helper()
	if out, err := exec.Command("cp", "-r", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		b.Fatalf("copy %s: %v\n%s", src, err, out)
	}
}

// qemuPidOf finds the QEMU of sandbox id by its -name.
func qemuPidOf(b *testing.B, id string) int {
	b.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cmdline, []byte("\x00tartarus-"+id+"\x00")) || !bytes.Contains(cmdline, []byte("qemu-system")) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		return pid
	}
	b.Fatalf("no QEMU for %s", id)
	return 0
}

// cpuTicks is utime+stime of pid in clock ticks.
func cpuTicks(pid int) (int64, error) {
	s, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// the 14th and 15th fields of the line.
	f := strings.Fields(string(s[bytes.LastIndexByte(s, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// idleCPUPercent is the average CPU of pids over window, in % of a core.
func idleCPUPercent(b *testing.B, pids []int, window time.Duration) float64 {
	b.Helper()
	const hz = 100 // USER_HZ on Linux
	sum := func() int64 {
		var t int64
		for _, pid := range pids {
			n, err := cpuTicks(pid)
			if err != nil {
				b.Fatal(err)
			}
			t += n
		}
		return t
	}
	t0, w0 := sum(), time.Now()
	time.Sleep(window)
	t1, w1 := sum(), time.Now()
	return 100 * float64(t1-t0) / hz / w1.Sub(w0).Seconds() / float64(len(pids))
}

func pssKiB(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no Pss in smaps_rollup of %d", pid)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)]
}

func printUserPath(b *testing.B, rows []userPathRow) {
	var w bytes.Buffer
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&w, "\nuser's path through the HTTP API (load average %s)\n", strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(&w, "%-34s", "measurement (p50 / p99)")
	for _, r := range rows {
		fmt.Fprintf(&w, " | %-22s", r.template)
	}
	fmt.Fprintln(&w)
	line := func(name string, get func(userPathRow) []time.Duration) {
		fmt.Fprintf(&w, "%-34s", name)
		for _, r := range rows {
			ds := get(r)
			fmt.Fprintf(&w, " | %-22s", fmt.Sprintf("%.1f / %.1f ms (%d)", ms(pct(ds, 50)), ms(pct(ds, 99)), len(ds)))
		}
		fmt.Fprintln(&w)
	}
	line("create → first exec", func(r userPathRow) []time.Duration { return r.create })
	line("  … with make run's warm pool", func(r userPathRow) []time.Duration { return r.warm })
	line("exec round trip of true", func(r userPathRow) []time.Duration { return r.exec })
	line("hibernate (256 MiB, 20 MB random)", func(r userPathRow) []time.Duration { return r.hibernate })
	line("wake → first exec", func(r userPathRow) []time.Duration { return r.wake })
	line("floor: driver restore + true", func(r userPathRow) []time.Duration { return r.floor })
	partRows(&w, "create → first exec, p50 parts:", rows, createPartNames, func(r userPathRow) createParts { return r.parts })
	partRows(&w, "wake → first exec, p50 parts:", rows, wakePartNames, func(r userPathRow) wakeParts { return r.wakeParts })
	partRows(&w, "hibernate, p50 parts (server log):", rows, hibernatePartNames, func(r userPathRow) hibernateParts { return r.hibParts })
	fmt.Fprintf(&w, "%-34s", "stored snapshot")
	for _, r := range rows {
		fmt.Fprintf(&w, " | %-22s", fmt.Sprintf("%.1f MiB", float64(r.stored)/(1<<20)))
	}
	fmt.Fprintf(&w, "\n%-34s", "idle sandbox: PSS, CPU of a core")
	for _, r := range rows {
		fmt.Fprintf(&w, " | %-22s", fmt.Sprintf("%.0f MiB, %.2f %%", r.pssMiB, r.idleCPU))
	}
	fmt.Fprintln(&w)
	_, _ = io.Copy(os.Stdout, &w)
}

// createParts splits create → first exec (medians over the timed creates)
// by what the server logged for each: the create request's time in the
// HTTP server, the node agent's bring-up inside it, the driver's restore
// inside that, and the first exec's time in the HTTP server. The rest of
// each is outside: the client, HTTP and loopback.
type createParts struct {
	driver, agent, request, exec, outside time.Duration
	// The driver restore's own phases (its log line's cumulative
	// marks): QEMU started to its control socket, the memory loaded,
	// the guest agent's handshake with the first sync (clock, entropy,
	// hostname).
	qemu, memory, handshake time.Duration
}

// partName is one row of a breakdown: its name and how to get its median.
type partName[P any] struct {
	name string
	get  func(P) time.Duration
}

// partRows prints a breakdown under title, a row a part, a column a template.
func partRows[P any](w io.Writer, title string, rows []userPathRow, names []partName[P], of func(userPathRow) P) {
	fmt.Fprintf(w, "%-34s\n", title)
	for _, part := range names {
		fmt.Fprintf(w, "%-34s", "  "+part.name)
		for _, r := range rows {
			fmt.Fprintf(w, " | %-22s", fmt.Sprintf("%.1f ms", ms(part.get(of(r)))))
		}
		fmt.Fprintln(w)
	}
}

var createPartNames = []partName[createParts]{
	{"driver restore (QEMU, guest, sync)", func(p createParts) time.Duration { return p.driver }},
	{"  QEMU start", func(p createParts) time.Duration { return p.qemu }},
	{"  memory load", func(p createParts) time.Duration { return p.memory }},
	{"  guest handshake and first sync", func(p createParts) time.Duration { return p.handshake }},
	{"node agent around it", func(p createParts) time.Duration { return p.agent }},
	{"API server around that", func(p createParts) time.Duration { return p.request }},
	{"first exec in the server", func(p createParts) time.Duration { return p.exec }},
	{"client, HTTP, loopback", func(p createParts) time.Duration { return p.outside }},
}

var (
	logMsg      = regexp.MustCompile(`msg=("[^"]*"|\S+)`)
	logField    = regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`)
	restorePart = regexp.MustCompile(`^\w+_ms$`)
)

// logLine is one line of the server's log: its message and its fields
// (values unquoted).
type logLine struct {
	msg string
	f   map[string]string
}

// serverLog reads the lines of the server's log that carry a message.
func serverLog(b *testing.B, e *e2e) []logLine {
	b.Helper()
	logs, err := os.ReadFile(e.logs)
	if err != nil {
		b.Fatal(err)
	}
	var out []logLine
	for _, line := range strings.Split(string(logs), "\n") {
		m := logMsg.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f := map[string]string{}
		for _, kv := range logField.FindAllStringSubmatch(line, -1) {
			f[kv[1]] = strings.Trim(kv[2], `"`)
		}
		out = append(out, logLine{msg: strings.Trim(m[1], `"`), f: f})
	}
	return out
}

// marks are a phase log line's NAME_ms fields (cumulative milliseconds),
// by NAME.
func marks(f map[string]string) map[string]time.Duration {
	out := map[string]time.Duration{}
	for k, v := range f {
		if restorePart.MatchString(k) {
			n, _ := strconv.Atoi(v)
			out[strings.TrimSuffix(k, "_ms")] = time.Duration(n) * time.Millisecond
		}
	}
	return out
}

// lastMark is where a phase line's cumulative marks end.
func lastMark(m map[string]time.Duration) time.Duration {
	var last time.Duration
	for _, d := range m {
		last = max(last, d)
	}
	return last
}

// createBreakdown reads the server's log for the creates of ids (which
// took totals) and returns the medians of their parts.
func createBreakdown(b *testing.B, e *e2e, ids []string, totals []time.Duration) createParts {
	b.Helper()
	type seen struct {
		driver, took, exec time.Duration
		marks              map[string]time.Duration
	}
	by := map[string]*seen{}
	for _, id := range ids {
		by[id] = &seen{}
	}
	var createReqs []time.Duration // POST /v1/sandboxes, in order
	for _, l := range serverLog(b, e) {
		f := l.f
		s := by[f["sandbox"]]
		switch l.msg {
		case "restored":
			if s == nil {
				continue
			}
			s.marks = marks(f)
			s.driver = lastMark(s.marks)
		case "sandbox running":
			if s != nil {
				s.took, _ = time.ParseDuration(f["took"])
			}
		case "request":
			n, _ := strconv.Atoi(f["duration_ms"])
			d := time.Duration(n) * time.Millisecond
			if f["route"] == "POST /v1/sandboxes" {
				createReqs = append(createReqs, d)
			}
			if id, ok := strings.CutSuffix(strings.TrimPrefix(f["path"], "/v1/sandboxes/"), "/exec"); ok {
				if s := by[id]; s != nil && s.exec == 0 {
					s.exec = d
				}
			}
		}
	}
	// The timed creates are the last len(ids) creates so far (the
	// untimed first one of each template comes before them).
	if len(createReqs) < len(ids) {
		b.Fatalf("server log has %d creates, want %d or more", len(createReqs), len(ids))
	}
	createReqs = createReqs[len(createReqs)-len(ids):]
	var driver, agent, req, ex, out, qemu, memory, handshake []time.Duration
	for i, id := range ids {
		s := by[id]
		if m := s.marks; m != nil {
			start := max(m["disk"], m["ram"])
			qemu = append(qemu, m["qemu"]-start)
			memory = append(memory, m["memory"]-m["qemu"])
			handshake = append(handshake, m["guest"]-m["memory"])
		}
		driver = append(driver, s.driver)
		agent = append(agent, s.took-s.driver)
		req = append(req, createReqs[i]-s.took)
		ex = append(ex, s.exec)
		out = append(out, totals[i]-createReqs[i]-s.exec)
	}
	return createParts{driver: pct(driver, 50), agent: pct(agent, 50), request: pct(req, 50), exec: pct(ex, 50), outside: pct(out, 50),
		qemu: pct(qemu, 50), memory: pct(memory, 50), handshake: pct(handshake, 50)}
}
