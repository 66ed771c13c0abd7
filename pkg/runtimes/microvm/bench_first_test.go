package microvm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkFirstCommand splits restore → first command on the python
// template, driver alone (no server, no jail): the restore, the first
// `true` and the second (TARTARUS_TEST_JAIL=1: jailed, as a server runs
// it). The template is snapshotted warm, as the node
// agent does (its first commands already run once). With
// TARTARUS_BENCH_QEMU set, the restored sandboxes' QEMU is that program
// (for example scripts/qemu-perf.sh, which records a CPU profile of each
// QEMU with perf):
//
//	TARTARUS_E2E=1 TARTARUS_BENCH_QEMU=$PWD/scripts/qemu-perf.sh go test -run '^$' -bench FirstCommand -benchtime=1x ./pkg/runtimes/microvm/
func BenchmarkFirstCommand(b *testing.B) {
	imgs := needImages(b)
	ctx := benchCtx(b)
	state := b.TempDir()
	newDrv := func(dir, qemu string) *microvm.Driver {
		var j *jail.Jail
		if os.Getenv("TARTARUS_TEST_JAIL") == "1" {
			j = newJail(b, filepath.Join(state, dir))
		}
		d, err := microvm.New(ctx, microvm.Config{StateDir: filepath.Join(state, dir), Log: testLogger(b), QEMU: qemu, Jail: j,
			ProbeImage: imgs.python, ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json")})
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	d := newDrv("template", "")
	createStart(b, d, imgs.python, "first-tpl")
	for _, cmd := range [][]string{{"true"}, {"/bin/sh", "-c", "bash -lc true; python3 -c pass"}} {
		if _, err := d.Exec(ctx, "first-tpl", &tartarus.ExecRequest{Cmd: cmd}); err != nil {
			b.Fatal(err)
		}
	}
	snap := filepath.Join(state, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Snapshot(ctx, "first-tpl", snap); err != nil {
		b.Fatal(err)
	}
	_ = d.Destroy(ctx, "first-tpl")
	if q := os.Getenv("TARTARUS_BENCH_QEMU"); q != "" {
		d = newDrv("vms", q)
	}
	for b.Loop() {
		var restore, first, second []time.Duration
		for i := range 5 {
			dir := filepath.Join(state, "restore-"+strconv.Itoa(i))
			linkSnapshot(b, snap, dir)
			id := fmt.Sprintf("first-%d", i)
			start := time.Now()
			if err := d.Restore(ctx, &tartarus.VMConfig{ID: id}, dir); err != nil {
				b.Fatal(err)
			}
			restore = append(restore, time.Since(start))
			for _, to := range []*[]time.Duration{&first, &second} {
				t := time.Now()
				if _, err := d.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
				*to = append(*to, time.Since(t))
			}
			_ = d.Destroy(ctx, id)
		}
		b.ReportMetric(ms(percentile(restore, 0.5)), "restore-p50-ms")
		b.ReportMetric(ms(percentile(first, 0.5)), "first-true-p50-ms")
		b.ReportMetric(ms(percentile(second, 0.5)), "second-true-p50-ms")
	}
}
