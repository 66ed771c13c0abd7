package microvm_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkRestoreNetwork: create by restore to a first exec, with and
// without networking, in the same run. "with" includes building the
// sandbox's network (namespace, veth, TAP, nft, resolver) before the
// restore, as the agent will.
func BenchmarkRestoreNetwork(b *testing.B) {
	imgs := needImages(b)
	in := netnstest.New(b)
	ctx := context.Background()
	nets, err := netns.New(ctx, netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: "txbr-"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = nets.Reconcile(context.Background(), nil); nets.Close() })
	d, err := microvm.New(ctx, microvm.Config{
		StateDir: b.TempDir(), Log: testLogger(b), ProbeImage: imgs.base,
		ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json"), Networks: nets,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	open := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}
	snaps := map[bool]string{}
	for _, withNet := range []bool{false, true} {
		id := fmt.Sprintf("bench-rn-src-%v", withNet)
		if withNet {
			if _, err := nets.Create(ctx, id, open); err != nil {
				b.Fatal(err)
			}
		}
		createStart(b, d, imgs.base, id)
		snaps[withNet] = b.TempDir()
		if _, err := d.Snapshot(benchCtx(b), id, snaps[withNet]); err != nil {
			b.Fatal(err)
		}
		_ = d.Destroy(ctx, id)
		_ = nets.Destroy(ctx, id)
	}
	times := map[bool][]time.Duration{}
	for n := 0; n < b.N; n++ {
		for i := 0; i < 5; i++ {
			for _, withNet := range []bool{false, true} {
				id := fmt.Sprintf("bench-rn-%v-%d-%d", withNet, n, i)
				// Restore takes the snapshot's disk: give it a copy.
				snap := filepath.Join(b.TempDir(), "snap")
				if out, err := exec.Command("cp", "-a", "--sparse=always", snaps[withNet], snap).CombinedOutput(); err != nil {
					b.Fatalf("copy snapshot: %v: %s", err, out)
				}
				start := time.Now()
				if withNet {
					if _, err := nets.Create(ctx, id, open); err != nil {
						b.Fatal(err)
					}
				}
				if err := d.Restore(benchCtx(b), &tartarus.VMConfig{ID: id, Template: "base", Image: imgs.base, CPUs: 1, MemoryMB: 256}, snap); err != nil {
					b.Fatal(err)
				}
				if _, err := d.Exec(benchCtx(b), id, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
				times[withNet] = append(times[withNet], time.Since(start))
				_ = d.Destroy(ctx, id)
				_ = nets.Destroy(ctx, id)
			}
		}
	}
	b.ReportMetric(ms(percentile(times[false], 0.5)), "p50-ms-without")
	b.ReportMetric(ms(percentile(times[true], 0.5)), "p50-ms-with")
	b.ReportMetric(ms(percentile(times[true], 0.5)-percentile(times[false], 0.5)), "p50-ms-added")
	b.ReportMetric(0, "ns/op")
}
