package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// floodResult is what one policy's run measured.
type floodResult struct {
	policy string
	// waits are the cold creates' waits in the queue (server clock: from
	// the create's answer to its admission); a create that timed out
	// counts as its whole timeout.
	waits    []time.Duration
	timedOut int
	// ahead is, per cold create, how many other creates were admitted
	// while it waited, and bound what fair share allows it: K(k) of
	// docs/heat.md, k being the cold creates queued before it.
	ahead, bound []int
	// maxGap is the longest time between two admissions (rooms freed)
	// while cold creates waited: the Δ of docs/heat.md.
	maxGap time.Duration
	p99    time.Duration
	// quietP99 is the cold p99 wait of the same trickle without the
	// flood (measured on the fair-share server only).
	quietP99 time.Duration
}

// quietColdP99 runs the trickle without the flood: two inferno creates
// fill the node (and end after their 2 s), then the cold creates arrive
// every `every`; it returns their p99 wait (0 for a create that found
// room at once).
func quietColdP99(t *testing.T, c *client.Client, every time.Duration, colds int, limit time.Duration) time.Duration {
	t.Helper()
	ctx := context.Background()
	for range 2 {
		if _, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "inferno", QueueTimeoutS: 900}); err != nil {
			t.Fatalf("quiet: inferno create: %v", err)
		}
	}
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		waits []time.Duration
	)
	add := func(d time.Duration) {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
	}
	for i := range colds {
		time.Sleep(every)
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: int(limit / time.Second)})
		if err != nil {
			t.Fatalf("quiet: cold create %d: %v", i, err)
		}
		if sb.State != tartarus.StateQueued {
			add(0)
			continue
		}
		wg.Go(func() {
			for {
				got, err := c.GetSandbox(ctx, sb.ID)
				if err != nil {
					t.Errorf("quiet: get %s: %v", sb.ID, err)
					return
				}
				switch {
				case got.State == tartarus.StateQueued:
					time.Sleep(100 * time.Millisecond)
					continue
				case got.State == tartarus.StateFailed && strings.Contains(got.Error, "timed_out"):
					add(limit)
				default:
					add(got.CreatedAt.Sub(sb.CreatedAt))
				}
				return
			}
		})
	}
	wg.Wait()
	time.Sleep(4 * time.Second) // the last ones end before the flood
	slices.Sort(waits)
	t.Logf("quiet: cold waits without the flood %v", waits)
	return waits[min(len(waits)-1, (len(waits)*99+99)/100-1)]
}

// coldBound is K(k) of docs/heat.md for a cold create with k cold creates
// queued before it when inferno (weight 1 against cold's 8) is the only
// other heat waiting: at most k + 1 + ⌊(k+1)/8⌋ other creates are admitted
// before it.
func coldBound(k int) int {
	return k + 1 + (k+1)/8
}

// TestHeatFloodFairShare runs the must-hold of the admission queues
// against the real server with real microVMs: a node whose capacity is
// capped at two sandboxes (--capacity-memory-mb 512, 256 MiB each; the
// VMs, their restores and their ends are real), filled, then a flood of 50
// inferno creates and a trickle of cold creates arriving every 3 s. Each
// sandbox is ended by its class's max_duration_s, which frees the room
// the queue hands on. The same script runs on a server with fair share
// and on one with FIFO queues. With fair share, a cold create with k cold
// creates queued before it sees at most K(k) = k + 1 + ⌊(k+1)/8⌋ other
// admissions before its own (docs/heat.md; K(0) = 1), so its wait is at
// most (K+1) × the longest gap between admissions; both are checked, and
// the FIFO run must break them: its cold creates wait behind the flood and
// time out after 45 s. The fair-share server first runs the trickle
// without the flood, for the cold p99 wait with and without it.
func TestHeatFloodFairShare(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	if os.Getenv("TARTARUS_HEAT_FLOOD") != "1" {
		t.Skip("set TARTARUS_HEAT_FLOOD=1 to flood a real server's queues (two servers, about 5 minutes under load)")
	}
	classes := filepath.Join(t.TempDir(), "classes.yaml")
	if err := os.WriteFile(classes, []byte(`classes:
  - {name: spark, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 2}
  - {name: furnace, heat: inferno, cpu_cores: 1, memory_mb: 256, max_duration_s: 2}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	const (
		flood     = 50
		colds     = 6
		every     = 3 * time.Second
		coldLimit = 45 * time.Second
	)
	run := func(policy string) floodResult {
		e := newE2E(t, "--heat-classes", classes, "--capacity-memory-mb", "512", "--warm-pool", "0", "--queue-policy", policy)
		defer e.cleanup(t)
		key, err := os.ReadFile(filepath.Join(e.data, "admin.key"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(e.url, strings.TrimSpace(string(key)))
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		// The template's snapshot at this shape is built before the clock
		// starts.
		if _, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 300}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second)
		var quietP99 time.Duration
		if policy == "fair" {
			quietP99 = quietColdP99(t, c, every, colds, coldLimit)
		}
		// The flood: the first two fill the node, the rest queue.
		var wg sync.WaitGroup
		for range flood {
			wg.Go(func() {
				if _, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "inferno", QueueTimeoutS: 900}); err != nil {
					t.Errorf("%s: inferno create: %v", policy, err)
				}
			})
		}
		wg.Wait()
		// The trickle, each followed until it is admitted or times out.
		res := floodResult{policy: policy, quietP99: quietP99}
		var mu sync.Mutex
		var firstQueued, lastDone time.Time
		type cold struct {
			id            string
			k             int
			queued, ended time.Time // ended: admitted or timed out
		}
		var waited []*cold
		for i := range colds {
			time.Sleep(every)
			sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: int(coldLimit / time.Second)})
			if err != nil {
				t.Fatalf("%s: cold create %d: %v", policy, i, err)
			}
			if sb.State != tartarus.StateQueued {
				t.Fatalf("%s: cold create %d on a full node: %s, want queued", policy, i, sb.State)
			}
			if firstQueued.IsZero() {
				firstQueued = sb.CreatedAt
			}
			cw := &cold{id: sb.ID, k: sb.Queue.Position - 1, queued: sb.CreatedAt}
			waited = append(waited, cw)
			wg.Go(func() {
				for {
					got, err := c.GetSandbox(ctx, sb.ID)
					if err != nil {
						t.Errorf("%s: get %s: %v", policy, sb.ID, err)
						return
					}
					mu.Lock()
					switch {
					case got.State == tartarus.StateQueued:
					case got.State == tartarus.StateFailed && strings.Contains(got.Error, "timed_out"):
						res.waits = append(res.waits, coldLimit)
						res.timedOut++
						cw.ended = sb.CreatedAt.Add(coldLimit)
						lastDone = later(lastDone, cw.ended)
					default:
						res.waits = append(res.waits, got.CreatedAt.Sub(sb.CreatedAt))
						cw.ended = got.CreatedAt
						lastDone = later(lastDone, cw.ended)
					}
					done := got.State != tartarus.StateQueued
					mu.Unlock()
					if done {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		// Admissions (freed rooms) while cold creates waited.
		all, err := c.ListSandboxes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		points := []time.Time{firstQueued, lastDone}
		for _, sb := range all {
			if sb.CreatedAt.After(firstQueued) && sb.CreatedAt.Before(lastDone) {
				points = append(points, sb.CreatedAt)
			}
		}
		slices.SortFunc(points, func(a, b time.Time) int { return a.Compare(b) })
		for i := 1; i < len(points); i++ {
			res.maxGap = max(res.maxGap, points[i].Sub(points[i-1]))
		}
		for _, cw := range waited {
			n := 0
			for _, sb := range all {
				if sb.ID != cw.id && sb.CreatedAt.After(cw.queued) && sb.CreatedAt.Before(cw.ended) {
					n++
				}
			}
			res.ahead = append(res.ahead, n)
			res.bound = append(res.bound, coldBound(cw.k))
		}
		slices.Sort(res.waits)
		res.p99 = res.waits[min(len(res.waits)-1, (len(res.waits)*99+99)/100-1)]
		t.Logf("%-4s: cold waits %v (%d timed out after %v); p99 %v; admitted ahead of each %v, fair-share bound K(k) %v; longest gap between admissions %v",
			policy, res.waits, res.timedOut, coldLimit, res.p99.Round(10*time.Millisecond), res.ahead, res.bound,
			res.maxGap.Round(10*time.Millisecond))
		return res
	}
	fair := run("fair")
	fifo := run("fifo")
	// The stated bound on a cold create's wait: (K+1) admissions, each at
	// most the longest gap between admissions of the fair run.
	worst := slices.Max(fair.bound)
	bound := time.Duration(worst+1) * fair.maxGap
	t.Logf("cold p99 wait: fair share %v with the flood, %v without; FIFO %v with the flood; stated bound (K+1)·Δ = %d × %v = %v",
		fair.p99.Round(10*time.Millisecond), fair.quietP99.Round(10*time.Millisecond), fifo.p99.Round(10*time.Millisecond),
		worst+1, fair.maxGap.Round(10*time.Millisecond), bound.Round(10*time.Millisecond))
	for i := range fair.ahead {
		if fair.ahead[i] > fair.bound[i] {
			t.Errorf("fair share: cold create %d saw %d admissions ahead of it, bound %d", i, fair.ahead[i], fair.bound[i])
		}
	}
	if fair.timedOut > 0 || fair.p99 > bound {
		t.Errorf("fair share: cold p99 wait %v (%d timed out), want within %v", fair.p99, fair.timedOut, bound)
	}
	beyond := 0
	for i := range fifo.ahead {
		if fifo.ahead[i] > fifo.bound[i] {
			beyond++
		}
	}
	if beyond == 0 || fifo.p99 <= bound {
		t.Errorf("FIFO: cold p99 wait %v (bound %v), %d cold creates beyond their admission bound: the flood did not hold cold work back", fifo.p99, bound, beyond)
	}
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
