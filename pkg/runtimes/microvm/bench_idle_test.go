package microvm_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkIdleCPU measures the host CPU (QEMU's utime+stime) that idle
// python sandboxes use, with idleCPUVMs of them restored from one snapshot
// and settled, for the guest's default kernel command line and, beside it
// in the same run, with the guest's periodic tick forced back on (nohz=off
// highres=off: what every guest ran before QEMU gave it ARAT). It
// also reports the guest's clock source and tick mode. Run once with:
//
//	TARTARUS_E2E=1 TARTARUS_BENCH_FULL=1 go test -run '^$' -bench IdleCPU -benchtime=1x ./pkg/runtimes/microvm/
//
// TARTARUS_BENCH_IDLE_VMS sets the number of sandboxes.
func BenchmarkIdleCPU(b *testing.B) {
	imgs := needImages(b)
	// Short by default (make test runs every benchmark once); the figures
	// in docs/BENCHMARKS.md take TARTARUS_BENCH_FULL=1.
	vms, settle, window := 3, 5*time.Second, 10*time.Second
	if os.Getenv("TARTARUS_BENCH_FULL") == "1" {
		vms, settle, window = 6, 10*time.Second, 20*time.Second
	}
	if n, err := strconv.Atoi(os.Getenv("TARTARUS_BENCH_IDLE_VMS")); err == nil && n > 0 {
		vms = n
	}
	variants := []struct {
		name string
		args []string
		poll []time.Duration
	}{
		{"periodic", []string{"nohz=off", "highres=off"}, nil},
		{"default", nil, nil},
		// What the server adds: the heat sampler asks every sandbox's
		// guest for its stats every 2 s, the metrics sampler every 5 s.
		{"polled", nil, []time.Duration{2 * time.Second, 5 * time.Second}},
	}
	for b.Loop() {
		for _, v := range variants {
			pct, pss, mode := idleCPU(b, imgs.python, v.args, v.poll, vms, settle, window)
			b.ReportMetric(pct, v.name+"-cpu-%/vm")
			b.ReportMetric(pss, v.name+"-pss-MiB/vm")
			b.Logf("%s (%v): %d idle sandboxes, %.2f %% of a core each, PSS %.0f MiB each; guest: %s", v.name, v.args, vms, pct, pss, mode)
		}
	}
}

// idleCPU boots img with extra kernel args, snapshots it, restores n
// sandboxes from the snapshot, lets them settle and measures their CPU
// over window, while the host asks each guest for its stats every poll.
func idleCPU(b *testing.B, img *tartarus.Image, args []string, poll []time.Duration, n int, settle, window time.Duration) (cpuPct, pssMiB float64, guest string) {
	b.Helper()
	ctx := benchCtx(b)
	state := b.TempDir()
	d, err := microvm.New(ctx, microvm.Config{StateDir: filepath.Join(state, "vms"), Log: testLogger(b),
		ProbeImage: img, ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json"), KernelArgs: args})
	if err != nil {
		b.Fatal(err)
	}
	createStart(b, d, img, "idle-tpl")
	var out bytes.Buffer
	if _, err := d.Exec(ctx, "idle-tpl", &tartarus.ExecRequest{Stdout: &out, Cmd: []string{"sh", "-c",
		"cat /sys/devices/system/clocksource/clocksource0/current_clocksource; grep -m1 nohz_mode /proc/timer_list; grep -m1 'event_handler' /proc/timer_list"}}); err != nil {
		b.Fatal(err)
	}
	guest = strings.Join(strings.Fields(out.String()), " ")
	snap := filepath.Join(state, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Snapshot(ctx, "idle-tpl", snap); err != nil {
		b.Fatal(err)
	}
	if err := d.Destroy(ctx, "idle-tpl"); err != nil {
		b.Fatal(err)
	}
	var pids []int
	for i := range n {
		dir := filepath.Join(state, "restore-"+strconv.Itoa(i))
		copyTree(b, snap, dir)
		id := fmt.Sprintf("idle-%d", i)
		if err := d.Restore(ctx, &tartarus.VMConfig{ID: id}, dir); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = d.Destroy(ctx, id) })
	}
	list, err := d.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, in := range list {
		pids = append(pids, in.Pid)
	}
	stop := make(chan struct{})
	defer close(stop)
	for _, every := range poll {
		go func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				for _, in := range list {
					_, _ = d.Stats(ctx, in.ID)
				}
			}
		}()
	}
	time.Sleep(settle) // after the restores
	t0, w0 := qemuTicks(b, pids), time.Now()
	time.Sleep(window)
	t1, w1 := qemuTicks(b, pids), time.Now()
	cpuPct = 100 * float64(t1-t0) / 100 / w1.Sub(w0).Seconds() / float64(len(pids))
	for _, pid := range pids {
		kb, err := pss(pid)
		if err != nil {
			b.Fatal(err)
		}
		pssMiB += float64(kb) / 1024 / float64(len(pids))
	}
	for _, in := range list {
		_ = d.Destroy(ctx, in.ID)
	}
	return cpuPct, pssMiB, guest
}

// qemuTicks sums utime+stime (clock ticks) of pids.
func qemuTicks(b *testing.B, pids []int) int64 {
	b.Helper()
	var sum int64
	for _, pid := range pids {
		s, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			b.Fatal(err)
		}
		f := strings.Fields(string(s[bytes.LastIndexByte(s, ')')+2:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum += u + st
	}
	return sum
}

func copyTree(b *testing.B, src, dst string) {
	b.Helper()
	if out, err := exec.Command("cp", "-r", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		b.Fatalf("copy %s: %v\n%s", src, err, out)
	}
}
