package microvm_test

import (
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkExecLayout measures exec round trips in one python sandbox with
// the guest's address layout fixed (norandmaps, the driver's default under
// TCG) and, in the same sandbox right after, with randomisation turned back
// on: wall time (p50, p99) and QEMU's CPU time per command, for `true`
// (/usr/bin/true, dynamically linked) and `python3 -c pass`. QEMU 7.2's TCG
// finds translated code by virtual address, so a process whose libraries
// land somewhere new is translated afresh. Run once with:
//
//	TARTARUS_E2E=1 go test -run '^$' -bench ExecLayout -benchtime=1x ./pkg/runtimes/microvm/
func BenchmarkExecLayout(b *testing.B) {
	imgs := needImages(b)
	d := newDriver(b, b.TempDir(), imgs.python)
	createStart(b, d, imgs.python, "bench-layout")
	list, err := d.List(benchCtx(b))
	if err != nil || len(list) != 1 {
		b.Fatalf("list: %v %v", list, err)
	}
	pid := list[0].Pid
	run := func(cmd []string, n int) (p50, p99 time.Duration, cpuMS float64) {
		var ds []time.Duration
		t0 := qemuTicks(b, []int{pid})
		for range n {
			start := time.Now()
			res, err := d.Exec(benchCtx(b), "bench-layout", &tartarus.ExecRequest{Cmd: cmd})
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("exec %v: %v %+v", cmd, err, res)
			}
			ds = append(ds, time.Since(start))
		}
		// clock ticks are 10 ms
		cpuMS = float64(qemuTicks(b, []int{pid})-t0) * 10 / float64(n)
		return percentile(ds, 0.5), percentile(ds, 0.99), cpuMS
	}
	for b.Loop() {
		for _, layout := range []struct{ name, randomize string }{{"fixed", "0"}, {"randomized", "2"}} {
			if _, err := d.Exec(benchCtx(b), "bench-layout", &tartarus.ExecRequest{Cmd: []string{"sh", "-c",
				"echo " + layout.randomize + " > /proc/sys/kernel/randomize_va_space"}}); err != nil {
				b.Fatal(err)
			}
			run([]string{"true"}, 5) // warm what does not depend on the layout
			p50, p99, cpu := run([]string{"true"}, 50)
			b.ReportMetric(ms(p50), layout.name+"-true-p50-ms")
			b.ReportMetric(ms(p99), layout.name+"-true-p99-ms")
			b.ReportMetric(cpu, layout.name+"-true-cpu-ms")
			pp50, _, pcpu := run([]string{"python3", "-c", "pass"}, 5)
			b.ReportMetric(ms(pp50), layout.name+"-python-p50-ms")
			b.ReportMetric(pcpu, layout.name+"-python-cpu-ms")
			b.Logf("%s layout (randomize_va_space=%s): true p50 %.1f ms p99 %.1f ms, %.1f ms CPU each; python3 -c pass p50 %.0f ms, %.0f ms CPU each",
				layout.name, layout.randomize, ms(p50), ms(p99), cpu, ms(pp50), pcpu)
		}
	}
}
