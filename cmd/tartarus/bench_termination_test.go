package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkTermination measures, through the real server on the microvm
// runtime, DELETE until the sandbox's resources are released (the answer
// of an immediate DELETE, or the termination's completed phase with a
// checkpoint) for 256 MiB and 1 GiB guests, and the drain of a node
// holding 16 sandboxes, in one run:
//
//	TARTARUS_E2E=1 go test -run XXX -bench Termination -benchtime 1x ./cmd/tartarus/
func BenchmarkTermination(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	for b.Loop() {
		c := benchClient(b, newE2E(b))
		ctx := context.Background()
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		benchCreates(b, c, 1, 0) // builds the template snapshot
		for _, mem := range []int{256, 1024} {
			for _, ck := range []bool{false, true} {
				var ds []time.Duration
				for range 3 {
					sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: mem})
					if err != nil {
						b.Fatal(err)
					}
					t0 := time.Now()
					if !ck {
						if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
							b.Fatal(err)
						}
					} else {
						st, err := c.TerminateSandbox(ctx, sb.ID, &tartarus.ShutdownOptions{CreateCheckpoint: true})
						for err == nil && !st.Phase.Final() {
							time.Sleep(20 * time.Millisecond)
							st, err = c.Termination(ctx, sb.ID)
						}
						if err != nil || st.Phase != tartarus.PhaseCompleted {
							b.Fatalf("terminate with a checkpoint: %+v, %v", st, err)
						}
					}
					ds = append(ds, time.Since(t0))
				}
				slices.Sort(ds)
				name := fmt.Sprintf("delete-%dm", mem)
				if ck {
					name += "-checkpoint"
				}
				b.ReportMetric(ms(ds[len(ds)/2]), name+"-p50-ms")
			}
		}
		// 16: a 2-core host holds at most 16 one-CPU sandboxes (CPUs overcommitted 8×).
		b.ReportMetric(ms(benchDrain(b, c, 16)), "drain-16-ms")
	}
}

// benchDrain creates n sandboxes on the single node and times draining it.
func benchDrain(b *testing.B, c *client.Client, n int) time.Duration {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 128})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes.Nodes) != 1 {
		b.Fatalf("nodes: %+v, %v", nodes, err)
	}
	t0 := time.Now()
	rep, err := c.DrainNode(ctx, nodes.Nodes[0].Name, tartarus.DrainOptions{})
	took := time.Since(t0)
	if err != nil || len(rep.Ended) != n {
		b.Fatalf("drain: %+v, %v", rep, err)
	}
	return took
}
