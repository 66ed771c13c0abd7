package microvm_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkJail compares, in one run, the jail off and on (sub-benchmarks
// without "=": QEMU options cannot hold it in a path): cold boot,
// hibernate (snapshot), create by restore / wake (restore to a guest that
// answers an exec), and the host memory (PSS) of an idle 256 MiB sandbox.
//
//	TARTARUS_E2E=1 go test -run XXX -bench Jail -benchtime 1x ./pkg/runtimes/microvm/
func BenchmarkJail(b *testing.B) {
	imgs := needImages(b)
	const rounds = 5
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			stateDir := b.TempDir()
			var j *jail.Jail
			if mode == "on" {
				j = newJail(b, stateDir)
			}
			d := newDriverJail(b, stateDir, imgs.base, j)
			b.Cleanup(func() { d.Close() })
			for n := 0; n < b.N; n++ {
				var boots, saves, restores []time.Duration
				var pssMiB float64
				for i := 0; i < rounds; i++ {
					id := fmt.Sprintf("bench-jail-%d-%d", n, i)
					start := time.Now()
					createStart(b, d, imgs.base, id)
					boots = append(boots, time.Since(start))
					time.Sleep(2 * time.Second) // settle before measuring idle memory
					kb, err := pss(pidOf2(b, d, id))
					if err != nil {
						b.Fatal(err)
					}
					pssMiB += float64(kb) / 1024 / rounds
					snap := b.TempDir()
					start = time.Now()
					if _, err := d.Snapshot(benchCtx(b), id, snap); err != nil {
						b.Fatal(err)
					}
					saves = append(saves, time.Since(start))
					if err := d.Destroy(benchCtx(b), id); err != nil {
						b.Fatal(err)
					}
					start = time.Now()
					if err := d.Restore(benchCtx(b), &tartarus.VMConfig{ID: id + "-r", Template: imgs.base.Name, Image: imgs.base}, snap); err != nil {
						b.Fatal(err)
					}
					if _, err := d.Exec(benchCtx(b), id+"-r", &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
						b.Fatal(err)
					}
					restores = append(restores, time.Since(start))
					if err := d.Destroy(benchCtx(b), id+"-r"); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(ms(percentile(boots, 0.5)), "boot-p50-ms")
				b.ReportMetric(ms(percentile(saves, 0.5)), "hibernate-p50-ms")
				b.ReportMetric(ms(percentile(restores, 0.5)), "restore-p50-ms")
				b.ReportMetric(pssMiB, "idle-pss-MiB")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

func pidOf2(b *testing.B, d *microvm.Driver, id string) int {
	b.Helper()
	list, err := d.List(benchCtx(b))
	if err != nil {
		b.Fatal(err)
	}
	for _, in := range list {
		if in.ID == id {
			return in.Pid
		}
	}
	b.Fatalf("no sandbox %s", id)
	return 0
}
