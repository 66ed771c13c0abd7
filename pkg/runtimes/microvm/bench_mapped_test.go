package microvm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkMappedMemory compares, in one run, restores of a python
// template snapshot with mapped memory (the default) and with copied
// memory (Config.CopyMemory): restore time, restore → first `true`, PSS
// per idle sandbox, and how many idle sandboxes fit in a memory budget
// (densityBudgetMiB) at that PSS, the template's whole memory counted
// once on top for mapped memory (the sealed copy the driver holds).
// The template boots with the driver's setting, as a node's would. Run
// once:
//
//	TARTARUS_E2E=1 TARTARUS_BENCH_FULL=1 go test -run '^$' -bench MappedMemory -benchtime=1x ./pkg/runtimes/microvm/
func BenchmarkMappedMemory(b *testing.B) {
	imgs := needImages(b)
	n, settle := 3, 3*time.Second
	if os.Getenv("TARTARUS_BENCH_FULL") == "1" {
		n, settle = 10, 10*time.Second
	}
	for b.Loop() {
		for _, copyMem := range []bool{false, true} {
			name := "mapped"
			if copyMem {
				name = "copied"
			}
			r := mappedRestores(b, imgs.python, copyMem, n, settle)
			fit := int(densityBudgetMiB / r.pssMiB)
			if !copyMem {
				fit = int((densityBudgetMiB - 256) / r.pssMiB)
			}
			b.ReportMetric(ms(percentile(r.restore, 0.5)), name+"-restore-p50-ms")
			b.ReportMetric(ms(percentile(r.restore, 0.99)), name+"-restore-p99-ms")
			b.ReportMetric(ms(percentile(r.first, 0.5)), name+"-restore-exec-p50-ms")
			b.ReportMetric(ms(percentile(r.first, 0.99)), name+"-restore-exec-p99-ms")
			b.ReportMetric(ms(percentile(r.cpu, 0.5)), name+"-qemu-cpu-to-exec-p50-ms")
			b.ReportMetric(r.pssMiB, name+"-idle-pss-MiB")
			b.ReportMetric(float64(fit), name+"-fit-in-budget")
			b.Logf("%s: %d restores, restore p50 %.1f p99 %.1f ms, restore → true p50 %.1f p99 %.1f ms, QEMU CPU to it p50 %.0f p99 %.0f ms, idle PSS %.1f MiB each, %d fit in %d MiB",
				name, n, ms(percentile(r.restore, 0.5)), ms(percentile(r.restore, 0.99)), ms(percentile(r.first, 0.5)), ms(percentile(r.first, 0.99)),
				ms(percentile(r.cpu, 0.5)), ms(percentile(r.cpu, 0.99)), r.pssMiB, fit, densityBudgetMiB)
		}
	}
}

// densityBudgetMiB is the memory the density figure fills: 24 GiB, the
// host issue 19 sizes.
const densityBudgetMiB = 24 << 10

type mappedResult struct {
	restore, first []time.Duration
	// cpu is QEMU's CPU time (utime+stime) from its start to the first
	// `true` answered: what the load moves less than wall time.
	cpu    []time.Duration
	pssMiB float64
}

func mappedRestores(b *testing.B, img *tartarus.Image, copyMem bool, n int, settle time.Duration) mappedResult {
	b.Helper()
	ctx := benchCtx(b)
	state := b.TempDir()
	d, err := microvm.New(ctx, microvm.Config{StateDir: filepath.Join(state, "vms"), Log: testLogger(b),
		ProbeImage: img, ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json"), CopyMemory: copyMem})
	if err != nil {
		b.Fatal(err)
	}
	createStart(b, d, img, "mapped-tpl")
	time.Sleep(settle) // as a template snapshot is taken after the boot settles
	snap := filepath.Join(state, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		b.Fatal(err)
	}
	info, err := d.Snapshot(ctx, "mapped-tpl", snap)
	if err != nil {
		b.Fatal(err)
	}
	if got := slices.Contains(info.Files, "memory.ram"); got == copyMem {
		b.Fatalf("copy memory %v: snapshot files %v", copyMem, info.Files)
	}
	if err := d.Destroy(ctx, "mapped-tpl"); err != nil {
		b.Fatal(err)
	}
	var r mappedResult
	var ids []string
	for i := range n {
		dir := filepath.Join(state, "restore-"+strconv.Itoa(i))
		linkSnapshot(b, snap, dir)
		id := fmt.Sprintf("mapped-%d", i)
		start := time.Now()
		if err := d.Restore(ctx, &tartarus.VMConfig{ID: id}, dir); err != nil {
			b.Fatal(err)
		}
		r.restore = append(r.restore, time.Since(start))
		if _, err := d.Exec(ctx, id, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
			b.Fatal(err)
		}
		r.first = append(r.first, time.Since(start))
		ids = append(ids, id)
		list, err := d.List(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, in := range list {
			if in.ID == id {
				r.cpu = append(r.cpu, time.Duration(qemuTicks(b, []int{in.Pid}))*10*time.Millisecond)
			}
		}
		b.Cleanup(func() { _ = d.Destroy(ctx, id) })
	}
	time.Sleep(settle)
	list, err := d.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, in := range list {
		kb, err := pss(in.Pid)
		if err != nil {
			b.Fatal(err)
		}
		r.pssMiB += float64(kb) / 1024 / float64(len(list))
	}
	for _, id := range ids {
		_ = d.Destroy(ctx, id)
	}
	return r
}

// linkSnapshot gives dst the snapshot files of src: the disk copied (a
// restore changes it), the rest linked, as the node's template cache does.
func linkSnapshot(b *testing.B, src, dst string) {
	b.Helper()
	if err := os.Mkdir(dst, 0o700); err != nil {
		b.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "disk.qcow2" {
			copyTree(b, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
			continue
		}
		if err := os.Link(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			b.Fatal(err)
		}
	}
}
