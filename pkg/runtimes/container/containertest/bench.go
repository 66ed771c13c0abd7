package containertest

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchNetwork measures create → start → first exec with a network of
// mode open and without one, in the same run, against a stand-in internet,
// reporting the medians and p99s (p50-ms, p99-ms) besides the mean. The
// sandbox is destroyed outside the timing.
func BenchNetwork(b *testing.B, img *tartarus.Image, newRuntime func(b *testing.B, nets container.Networks) tartarus.Runtime) {
	in := netnstest.New(b)
	ctx := context.Background()
	prefix := fmt.Sprintf("tb%04x-", mrand.IntN(1<<16))
	m, err := netns.New(ctx, netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = m.Reconcile(context.Background(), nil)
		m.Close()
	})
	rt := newRuntime(b, m)
	for _, c := range []struct {
		name string
		net  *tartarus.NetworkSpec
	}{{"NoNetwork", nil}, {"Network", &tartarus.NetworkSpec{Mode: tartarus.NetworkOpen}}} {
		b.Run(c.name, func(b *testing.B) {
			var took []time.Duration
			for i := 0; b.Loop(); i++ {
				cfg := &tartarus.VMConfig{ID: fmt.Sprintf("bnet-%d-%d", time.Now().UnixNano()%1e6, i), Template: img.Name, Image: img,
					CPUs: 1, MemoryMB: 128, Network: c.net}
				start := time.Now()
				if _, err := rt.Create(ctx, cfg); err != nil {
					b.Fatal(err)
				}
				if err := rt.Start(ctx, cfg.ID); err != nil {
					b.Fatal(err)
				}
				if res, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil || res.ExitCode != 0 {
					b.Fatal(err, res)
				}
				took = append(took, time.Since(start))
				b.StopTimer()
				if err := rt.Destroy(ctx, cfg.ID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			slices.Sort(took)
			if len(took) > 0 {
				b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(took[min(len(took)-1, len(took)*99/100)].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
