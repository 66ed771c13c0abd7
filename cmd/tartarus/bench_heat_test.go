package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// floodClasses are two small classes so that a node capped at 1024 MiB
// holds eight sandboxes: inferno work runs 1 s, cold work 1 s.
const floodClasses = `classes:
  - {name: spark, heat: cold, cpu_cores: 1, memory_mb: 128, max_duration_s: 1}
  - {name: torch, heat: inferno, cpu_cores: 1, memory_mb: 128, max_duration_s: 1}
`

// BenchmarkHeatFlood sends 50 inferno creates at once to a real server
// whose node holds eight sandboxes, then a trickle of 10 cold creates (one
// every 500 ms), every create with queue_timeout_s, and measures each cold
// create's wait from its request until it runs: once with the admission
// queue's weighted fair share, once with FIFO, same run. The sandboxes run
// on the test-only fake runtime (host processes), so the figure is the
// queue's and the server's, not VM boot's; each ends through Thanatos at
// its class's maximum duration, which is what frees room.
func BenchmarkHeatFlood(b *testing.B) {
	if testing.Short() {
		b.Skip("starts servers")
	}
	classes := filepath.Join(b.TempDir(), "classes.yaml")
	if err := os.WriteFile(classes, []byte(floodClasses), 0o644); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		for _, policy := range []phlegethon.Policy{phlegethon.PolicyFair, phlegethon.PolicyFIFO} {
			c := benchClient(b, newE2E(b, "--runtimes", "fake", "--unsafe-fake-runtime", "--heat-classes", classes,
				"--capacity-memory-mb", "1024", "--queue-policy", string(policy)))
			waits := heatFlood(b, c, 50, 10, 500*time.Millisecond)
			p50, p99 := percentile(waits, 0.50), percentile(waits, 0.99)
			b.Logf("%s: cold wait during a flood of 50 inferno creates: p50 %v, p99 %v, max %v (n=%d)",
				policy, p50.Round(time.Millisecond), p99.Round(time.Millisecond), slices.Max(waits).Round(time.Millisecond), len(waits))
			b.ReportMetric(p50.Seconds(), "cold-p50-s-"+string(policy))
			b.ReportMetric(p99.Seconds(), "cold-p99-s-"+string(policy))
		}
	}
}

// heatFlood sends floods inferno creates at once, then colds cold creates
// one every gap, and returns how long each cold one waited to run.
func heatFlood(b *testing.B, c *client.Client, floods, colds int, gap time.Duration) []time.Duration {
	b.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	for range floods {
		wg.Go(func() {
			if _, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "inferno", QueueTimeoutS: 600}); err != nil {
				b.Errorf("inferno create: %v", err)
			}
		})
	}
	wg.Wait()
	var mu sync.Mutex
	var waits []time.Duration
	for range colds {
		time.Sleep(gap)
		wg.Go(func() {
			start := time.Now()
			sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 600})
			if err != nil {
				b.Errorf("cold create: %v", err)
				return
			}
			for sb.State == tartarus.StateQueued || sb.State == tartarus.StateCreating {
				time.Sleep(20 * time.Millisecond)
				if sb, err = c.GetSandbox(ctx, sb.ID); err != nil {
					b.Errorf("follow a cold create: %v", err)
					return
				}
			}
			if sb.State != tartarus.StateRunning && sb.State != tartarus.StateTerminating && sb.State != tartarus.StateTerminated {
				b.Errorf("cold create %s ended %s: %s", sb.ID, sb.State, sb.Error)
				return
			}
			mu.Lock()
			waits = append(waits, time.Since(start))
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(waits) == 0 {
		b.Fatal("no cold create ran")
	}
	return waits
}

// percentile is the nearest-rank percentile p of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
