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
}

// coldBound is K(k) of docs/heat.md for a cold create with k cold creates
// queued before it when inferno (weight 1 against cold's 8) is the only
// other heat waiting: at most k + 1 + ⌊(k+1)/8⌋ other creates are admitted
// before it.
func coldBound(k int) int {
	return k + 1 + (k+1)/8
}

func TestHeatFloodFairShare(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	if os.Getenv("TARTARUS_HEAT_FLOOD") != "1" {
		t.Skip("set TARTARUS_HEAT_FLOOD=1 to flood a real server's queues (two servers, about 4 minutes under load)")
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
		res := floodResult{policy: policy}
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
	t.Logf("cold p99 wait: fair share %v, FIFO %v; stated bound (K+1)·Δ = %d × %v = %v",
		fair.p99.Round(10*time.Millisecond), fifo.p99.Round(10*time.Millisecond), worst+1, fair.maxGap.Round(10*time.Millisecond), bound.Round(10*time.Millisecond))
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
