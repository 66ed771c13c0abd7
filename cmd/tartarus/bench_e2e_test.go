package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// BenchmarkServerSnapshots measures, through the real server on the microvm
// runtime (TCG here) and its HTTP API, what the hibernation issue asks for,
// each beside a cold boot measured in the same run: create by boot, create
// by restore of the template's snapshot (p50/p99 over 20), create from the
// warm pool, and hibernate (time, stored size) and wake (p50/p99) of 256 MiB
// and 1 GiB guests. Run it once:
//
//	TARTARUS_E2E=1 go test -run XXX -bench ServerSnapshots -benchtime 1x ./cmd/tartarus/
//
// It needs what TestServerEndToEnd needs and skips without it.
func BenchmarkServerSnapshots(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	for b.Loop() {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		report := func(name string, ds []time.Duration) {
			slices.Sort(ds)
			b.ReportMetric(ms(ds[len(ds)/2]), name+"-p50-ms")
			b.ReportMetric(ms(ds[(len(ds)*99+99)/100-1]), name+"-p99-ms")
		}

		boot := benchClient(b, newE2E(b, "--create-from-snapshot=false"))
		report("create-boot", benchCreates(b, boot, 5, 0))

		snap := benchClient(b, newE2E(b))
		benchCreates(b, snap, 1, 0) // builds the template snapshot
		report("create-restore", benchCreates(b, snap, 20, 0))
		for _, mem := range []int{256, 1024} {
			hib, wake, size := benchHibernate(b, snap, mem, 8)
			report(fmt.Sprintf("hibernate-%dm", mem), hib)
			report(fmt.Sprintf("wake-%dm", mem), wake)
			b.ReportMetric(float64(size)/(1<<20), fmt.Sprintf("stored-%dm-MiB", mem))
			b.ReportMetric(100*float64(size)/float64(int64(mem)<<20), fmt.Sprintf("stored-%dm-%%", mem))
		}

		warm := benchClient(b, newE2E(b, "--warm-pool", "2"))
		benchCreates(b, warm, 1, 0) // builds the snapshot and asks for the pool
		report("create-warm", benchCreates(b, warm, 10, 5*time.Second))
	}
}

func benchClient(b *testing.B, e *e2e) *client.Client {
	b.Helper()
	key, err := os.ReadFile(filepath.Join(e.data, "admin.key"))
	if err != nil {
		b.Fatal(err)
	}
	c, err := client.New(e.url, strings.TrimSpace(string(key)))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// benchCreates times n creates (each destroyed after), pausing between
// them (to let a warm pool refill).
func benchCreates(b *testing.B, c *client.Client, n int, pause time.Duration) []time.Duration {
	b.Helper()
	ctx := context.Background()
	var ds []time.Duration
	for range n {
		time.Sleep(pause)
		start := time.Now()
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base"})
		if err != nil {
			b.Fatalf("create: %v", err)
		}
		ds = append(ds, time.Since(start))
		if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			b.Fatal(err)
		}
	}
	return ds
}

// benchHibernate hibernates and wakes one sandbox of mem MiB n times after
// it wrote 20 MB of random bytes (incompressible) to its tmpfs.
func benchHibernate(b *testing.B, c *client.Client, mem, n int) (hib, wake []time.Duration, size int64) {
	b.Helper()
	ctx := context.Background()
	sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: mem})
	if err != nil {
		b.Fatalf("create %d MiB: %v", mem, err)
	}
	defer c.DeleteSandbox(ctx, sb.ID)
	if _, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"sh", "-c", "head -c 20000000 /dev/urandom > /tmp/junk"}}); err != nil {
		b.Fatal(err)
	}
	for range n {
		start := time.Now()
		h, err := c.Hibernate(ctx, sb.ID)
		if err != nil || h.State != tartarus.StateHibernated {
			b.Fatalf("hibernate: %+v %v", h, err)
		}
		hib = append(hib, time.Since(start))
		size = h.SnapshotBytes
		start = time.Now()
		if w, err := c.Wake(ctx, sb.ID); err != nil || w.State != tartarus.StateRunning {
			b.Fatalf("wake: %+v %v", w, err)
		}
		wake = append(wake, time.Since(start))
	}
	return hib, wake, size
}

// BenchmarkClusterCreateExec measures create→first exec (the time from
// asking for a sandbox until a command's output is back) through a cluster
// replica with one agent, beside the same through a single-node server, in
// one run and interleaved, both on the microvm runtime (TCG here) creating
// by restore of the template's snapshot, then both again claiming from a
// warm pool of 2. Run it once:
//
//	TARTARUS_E2E=1 go test -run XXX -bench ClusterCreateExec -benchtime 1x ./cmd/tartarus/
func BenchmarkClusterCreateExec(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	for b.Loop() {
		single := benchClient(b, newE2E(b))
		c := newCluster(b, 1, 1)
		waitNodes(b, c.cl[0], map[string]string{"node-a": "up"})
		replica := c.cl[0]
		// The first create of each builds the template's snapshot.
		benchCreateExec(b, single, 1)
		benchCreateExec(b, replica, 1)
		var s, r []time.Duration
		for range 15 {
			s = append(s, benchCreateExec(b, single, 1)...)
			r = append(r, benchCreateExec(b, replica, 1)...)
		}
		// The same with warm pools of 2 on both (a pause lets them refill
		// and, in the cluster, the agent's next heartbeat name the new ones).
		singleWarm := benchClient(b, newE2E(b, "--warm-pool", "2"))
		cw := newCluster(b, 1, 1, "--warm-pool", "2")
		waitNodes(b, cw.cl[0], map[string]string{"node-a": "up"})
		replicaWarm := cw.cl[0]
		benchCreateExec(b, singleWarm, 1)
		benchCreateExec(b, replicaWarm, 1)
		var sw, rw []time.Duration
		for range 10 {
			time.Sleep(3 * time.Second)
			sw = append(sw, benchCreateExec(b, singleWarm, 1)...)
			time.Sleep(3 * time.Second)
			rw = append(rw, benchCreateExec(b, replicaWarm, 1)...)
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		for name, ds := range map[string][]time.Duration{"single": s, "replica": r, "single-warm": sw, "replica-warm": rw} {
			slices.Sort(ds)
			b.ReportMetric(ms(ds[len(ds)/2]), name+"-p50-ms")
			b.ReportMetric(ms(ds[len(ds)-1]), name+"-max-ms")
		}
	}
}

// benchCreateExec times n create→first exec, destroying each sandbox after.
func benchCreateExec(b *testing.B, c *client.Client, n int) []time.Duration {
	b.Helper()
	ctx := context.Background()
	var ds []time.Duration
	for range n {
		start := time.Now()
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base"})
		if err != nil {
			b.Fatalf("create: %v", err)
		}
		out, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"echo", "hi"}})
		if err != nil || out.Stdout != "hi\n" {
			b.Fatalf("exec: %+v %v", out, err)
		}
		ds = append(ds, time.Since(start))
		if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			b.Fatal(err)
		}
	}
	return ds
}
