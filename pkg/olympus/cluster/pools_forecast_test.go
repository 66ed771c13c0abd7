package cluster

import (
	"context"
	"maps"
	"net/http"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// One replica at a time leads; the leader splits a template's target over
// the agents by room and sends each its share once (again only when the
// agent reports other targets); a create goes to an agent holding a warm
// sandbox of its template, and becomes that sandbox, although spread
// would have chosen the other agent.
func TestForecastPools(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, pgtest.StartPostgres(t), "pools")
	a, b := status("a", 4096, nil, false), status("b", 8192, nil, false)
	e.beat(a, true)
	e.beat(b, true)

	fp, other := e.c.ForecastPools(), e.c.ForecastPools()
	if lead, err := fp.Lead(ctx); err != nil || !lead {
		t.Fatalf("first Lead = %v, %v", lead, err)
	}
	if lead, err := other.Lead(ctx); err != nil || lead {
		t.Fatalf("second Lead while the first holds it = %v, %v", lead, err)
	}

	// b has room for 32 sandboxes of 256 MiB, a for 16: each one goes
	// where most room is left, so b takes 16 alone and the other 24 are
	// shared: a 12, b 28.
	if err := fp.SetPoolTargets(ctx, map[string]int{"base": 40}); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]int{}
	for _, n := range []string{"a", "b"} {
		for _, cmd := range e.poll(n) {
			if cmd.Kind != wire.KindPoolTargets || cmd.SandboxID != "" {
				t.Fatalf("command %+v", cmd)
			}
			got[n] = cmd.PoolTargets
			if code := e.call(n, "POST", wire.PathCommands+"/"+cmd.ID, wire.Result{}, nil); code != http.StatusNoContent {
				t.Fatalf("result: %d", code)
			}
		}
	}
	if !maps.Equal(got["a"], map[string]int{"base": 12}) || !maps.Equal(got["b"], map[string]int{"base": 28}) {
		t.Fatalf("targets sent %v, want a: base 12, b: base 28", got)
	}

	// The agents report their targets; a holds two warm sandboxes.
	a.PoolTargets, b.PoolTargets = got["a"], got["b"]
	a.Warm = map[string][]string{"microvm/base/256/1": {"sb-warm1", "sb-warm2"}}
	a.Creates = map[string]map[string]int{"base": {"warm pool": 5, "restored": 2, "failed": 1}}
	a.RefillTime, a.RefillParallel, b.RefillParallel = 3*time.Second, 2, 4
	e.beat(a, false)
	e.beat(b, false)
	if err := fp.SetPoolTargets(ctx, map[string]int{"base": 40}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		var cmds wire.Commands
		e.call(n, "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
		if len(cmds.Commands) != 0 {
			t.Fatalf("node %s got %+v although its targets are unchanged", n, cmds.Commands)
		}
	}
	if ready, err := fp.ReadyPools(ctx); err != nil || ready["base"] != 2 {
		t.Fatalf("ReadyPools = %v, %v", ready, err)
	}
	if took, par := fp.RefillRate(); took != 3*time.Second || par != 6 {
		t.Fatalf("RefillRate = %v, %d; want a's 3s and 2+4 at once", took, par)
	}
	nps, err := fp.NodePools(ctx)
	if err != nil || len(nps) != 2 || nps[0].Node != "a" || nps[0].Ready != 2 || nps[0].Target != 12 ||
		nps[0].WarmCreates != 5 || nps[0].ColdCreates != 2 || nps[1].Target != 28 {
		t.Fatalf("NodePools = %+v, %v", nps, err)
	}

	// Spread alone would pick b (twice the room); a has a warm sandbox.
	ch := e.create(&tartarus.CreateRequest{Template: "base"})
	var cmd wire.Command
	for _, c := range e.poll("a") {
		if c.Kind == wire.KindCreate {
			cmd = c
		}
	}
	if cmd.SandboxID != "sb-warm1" {
		t.Fatalf("create command on a: %+v, want the warm sandbox sb-warm1", cmd)
	}
	e.finish(cmd, cmd.Sandbox, tartarus.StateRunning)
	if r := <-ch; r.err != nil || r.sb.ID != "sb-warm1" || r.sb.Node != "a" {
		t.Fatalf("create = %+v, %v", r.sb, r.err)
	}

	fp.Close(ctx)
	if lead, err := other.Lead(ctx); err != nil || !lead {
		t.Fatalf("Lead after the first gave up = %v, %v", lead, err)
	}
	other.Close(ctx)
}

// A replica that takes the lead keeps the split the agents report (the
// previous leader's) instead of splitting afresh.
func TestForecastPoolsNewLeaderKeepsSplit(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, pgtest.StartPostgres(t), "poolsleader")
	a, b := status("a", 4096, nil, false), status("b", 4096, nil, false)
	// Split afresh, 3 would be a 2, b 1; the agents report a 0, b 3.
	a.PoolTargets, b.PoolTargets = map[string]int{}, map[string]int{"base": 3}
	e.beat(a, true)
	e.beat(b, true)
	fp := e.c.ForecastPools()
	if err := fp.SetPoolTargets(ctx, map[string]int{"base": 3}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		var cmds wire.Commands
		e.call(n, "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
		if len(cmds.Commands) != 0 {
			t.Fatalf("node %s got %+v: the new leader moved the split", n, cmds.Commands)
		}
	}
}

// A season's node labels keep the pool on the agents carrying them.
func TestForecastPoolsLabels(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, pgtest.StartPostgres(t), "poolslabels")
	e.beat(status("a", 8192, map[string]string{"pool": "slow"}, false), true)
	e.beat(status("b", 4096, map[string]string{"pool": "fast"}, false), true)
	fp := e.c.ForecastPools()
	if err := fp.SetPoolPlan(ctx, []persephone.PoolTarget{{Template: "base", Size: 3, NodeLabels: map[string]string{"pool": "fast"}}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]int{}
	for _, n := range []string{"a", "b"} {
		for _, cmd := range e.poll(n) {
			got[n] = cmd.PoolTargets
		}
	}
	if !maps.Equal(got["a"], map[string]int{}) || !maps.Equal(got["b"], map[string]int{"base": 3}) {
		t.Fatalf("targets sent %v, want none on a, base: 3 on b (pool=fast)", got)
	}
}

// A shrinking pool comes off the agent that launched fewest of the
// template since the window began, though it has more room left.
func TestForecastPoolsShrinkWhereUnused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, pgtest.StartPostgres(t), "poolsshrink")
	a, b := status("a", 4096, nil, false), status("b", 8192, nil, false)
	a.PoolTargets, b.PoolTargets = map[string]int{"base": 2}, map[string]int{"base": 2}
	a.Creates = map[string]map[string]int{"base": {"warm pool": 5}}
	e.beat(a, true)
	e.beat(b, true)
	fp := e.c.ForecastPools()
	if err := fp.SetPoolTargets(ctx, map[string]int{"base": 4}); err != nil { // notes the counts
		t.Fatal(err)
	}
	a.Creates = map[string]map[string]int{"base": {"warm pool": 8, "restored": 1, "failed": 3}}
	e.beat(a, false)
	if err := fp.SetPoolTargets(ctx, map[string]int{"base": 2}); err != nil {
		t.Fatal(err)
	}
	var cmds wire.Commands
	e.call("b", "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
	if len(cmds.Commands) != 1 || !maps.Equal(cmds.Commands[0].PoolTargets, map[string]int{}) {
		t.Fatalf("b got %+v, want its share taken (it launched nothing)", cmds.Commands)
	}
	e.call("a", "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
	if len(cmds.Commands) != 0 {
		t.Fatalf("a got %+v, want its share of 2 kept", cmds.Commands)
	}
}
