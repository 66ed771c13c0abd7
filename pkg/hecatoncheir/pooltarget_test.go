package hecatoncheir

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Persephone's targets replace the fixed pool size: a template's pool grows
// to its target without any create first, shrinks (destroying the extra
// sandboxes) when the target falls, and a template without a target keeps
// none. Creates are counted by how they were served.
func TestPoolTargets(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{createFromSnapshot: true}) // --warm-pool 0
	if got := e.agent.PoolTargets(); got != nil {
		t.Fatalf("targets before any were set: %v", got)
	}
	cold := e.create(t, tartarus.CreateRequest{}) // no pool: restored
	e.agent.FillWarmPools(ctx)
	if got := e.agent.TemplatePoolSizes()["base"]; got != 0 {
		t.Fatalf("pool holds %d without a size or target, want 0", got)
	}

	steps := []struct {
		name    string
		targets map[string]int
		want    int
	}{
		{"grow", map[string]int{"base": 3}, 3},
		{"shrink", map[string]int{"base": 1}, 1},
		{"grow again", map[string]int{"base": 2}, 2},
		{"no target, no pool", map[string]int{}, 0},
	}
	for _, s := range steps {
		if err := e.agent.SetPoolTargets(ctx, s.targets); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		e.agent.FillWarmPools(ctx)
		if got := e.agent.TemplatePoolSizes()["base"]; got != s.want {
			t.Errorf("%s: pool holds %d, want %d", s.name, got, s.want)
		}
		// Every sandbox the runtime runs is the recorded one or pooled.
		if n := len(e.instances(t)); n != 1+s.want {
			t.Errorf("%s: the runtime runs %d sandboxes, want %d", s.name, n, 1+s.want)
		}
	}

	if err := e.agent.SetPoolTargets(ctx, map[string]int{"base": 1}); err != nil {
		t.Fatal(err)
	}
	e.agent.FillWarmPools(ctx)
	warm := e.create(t, tartarus.CreateRequest{})
	if warm.ID == cold.ID {
		t.Fatal("same id twice")
	}
	_ = e.create(t, tartarus.CreateRequest{}) // the pool is empty until the filler runs
	got := e.agent.CreateCounts()["base"]
	if got["warm pool"] != 1 || got["restored"] != 2 {
		t.Errorf("create counts %v, want 1 from the warm pool and 2 restored", got)
	}

	for _, bad := range []map[string]int{{"base": -1}, {"base": maxPoolTarget + 1}} {
		if err := e.agent.SetPoolTargets(ctx, bad); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("SetPoolTargets(%v) = %v, want invalid", bad, err)
		}
	}
	if err := e.agent.SetPoolTargets(ctx, map[string]int{"missing": 2}); err != nil {
		t.Errorf("a target for a template this node lacks: %v (want it ignored)", err)
	}
}

// TestRefillRate checks what the agent tells Persephone about its refills:
// one duration per refill made (on the agent's clock), the bound on
// refills at once, and that refills under way hold their room.
func TestRefillRate(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{createFromSnapshot: true, pool: 3})
	if d, p := e.agent.RefillRate(); d != 0 || p != min(max(1, runtime.NumCPU()), maxRefillParallel) {
		t.Fatalf("before any refill: %v, %d", d, p)
	}
	e.create(t, tartarus.CreateRequest{}) // restores, and asks for a pool
	e.agent.FillWarmPools(ctx)
	if got := e.agent.PoolSizes()["fake/base/256/1"]; got != 3 {
		t.Fatalf("pool holds %d, want 3", got)
	}
	e.agent.pools.mu.Lock()
	took, inflight := len(e.agent.pools.took), e.agent.pools.inflight[poolKey{"fake", "base", e.opts.digest, 256, 1}]
	e.agent.pools.mu.Unlock()
	if took != 3 || inflight != 0 {
		t.Errorf("after 3 refills: %d durations recorded, %d under way", took, inflight)
	}
	before := e.agent.PoolUsage()
	k := poolKey{"fake", "base", e.opts.digest, 256, 1}
	e.agent.pools.mu.Lock()
	e.agent.pools.inflight[k] = 2
	e.agent.pools.mu.Unlock()
	if got := e.agent.PoolUsage(); got != before+2*256 {
		t.Errorf("pool usage with 2 refills under way: %d MiB, want %d", got, before+2*256)
	}
}
