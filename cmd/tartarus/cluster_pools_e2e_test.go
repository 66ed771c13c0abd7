package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone/persephonesrv"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestClusterForecastPools runs forecast-sized warm pools on a cluster:
// two replicas with --forecast-pools (sizing every 2s) over two agents
// with real microVMs. A season defined at one replica and pinned at the
// other sets the cluster's target for "base" to 3; one replica (the lease holder) sizes, the agents together
// hold 3 warm sandboxes, split over both; a create at either replica is
// served from a warm pool (counted warm by the agent, no cold create),
// one of a shape no pool keeps is cold; killing one agent moves its share
// to the other; the usage records count one warm and one cold launch.
func TestClusterForecastPools(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	c := newClusterWith(t, clusterOpts{replicas: 2, agents: 2,
		replicaArgs: []string{"--forecast-pools", "--pool-interval", "2s"}})
	ctx := context.Background()
	waitNodes(t, c.cl[0], map[string]string{"node-a": "up", "node-b": "up"})

	const target = 3
	season := &persephone.Season{ID: "peak", Name: "Peak",
		Prewarming: persephone.PrewarmConfig{Templates: []string{"base"}, PoolSize: target}}
	if err := c.cl[0].Call(ctx, http.MethodPost, "/v1/seasons", nil, season, nil); err != nil {
		t.Fatal(err)
	}
	// Applied at the other replica: seasons are shared through the store.
	if err := c.cl[1].Call(ctx, http.MethodPost, "/v1/seasons/peak/apply", nil, nil, nil); err != nil {
		t.Fatal(err)
	}

	pools := func(i int) *persephonesrv.WarmPoolsAnswer {
		var ans persephonesrv.WarmPoolsAnswer
		if err := c.cl[i].Call(ctx, http.MethodGet, "/v1/warm-pools", nil, nil, &ans); err != nil {
			t.Logf("warm pools at replica %d: %v", i+1, err)
			return nil
		}
		return &ans
	}
	// byNode sums the agents' shares of base: target and ready per node,
	// and creates served warm and cold in all.
	type share struct{ target, ready int }
	byNode := func(ans *persephonesrv.WarmPoolsAnswer) (map[string]share, int, int) {
		out := map[string]share{}
		warm, cold := 0, 0
		for _, n := range ans.Nodes {
			if n.Template == "base" {
				out[n.Node] = share{n.Target, n.Ready}
				warm += n.WarmCreates
				cold += n.ColdCreates
			}
		}
		return out, warm, cold
	}
	var last string
	waitPools := func(what string, ok func(map[string]share) bool) {
		t.Helper()
		t0 := time.Now()
		if !waitForQuiet(5*time.Minute, func() bool {
			ans := pools(1)
			if ans == nil {
				return false
			}
			data, _ := json.Marshal(ans.Nodes)
			last = string(data)
			s, _, _ := byNode(ans)
			return ok(s)
		}) {
			t.Fatalf("%s: never; last seen %s", what, last)
		}
		t.Logf("%s after %v: %s", what, time.Since(t0).Round(time.Second), last)
	}

	waitPools("both agents hold warm sandboxes summing to the target", func(s map[string]share) bool {
		return s["node-a"].target > 0 && s["node-b"].target > 0 && s["node-a"].target+s["node-b"].target == target &&
			s["node-a"].ready == s["node-a"].target && s["node-b"].ready == s["node-b"].target
	})
	// One replica sizes (the lease holder); the other shows the same
	// split from the agents' heartbeats but made no sizing of its own.
	leader := -1
	for i := range 2 {
		ans := pools(i)
		if ans != nil && len(ans.Targets) > 0 {
			if leader >= 0 {
				t.Fatalf("replicas %d and %d both size the pools", leader+1, i+1)
			}
			leader = i
			if ans.Targets[0].Template != "base" || ans.Targets[0].Size != target {
				t.Fatalf("leader's targets %+v, want base: %d", ans.Targets, target)
			}
		}
	}
	if leader < 0 {
		t.Fatal("no replica sizes the pools")
	}

	// A create at the replica that does not size is served warm.
	other := 1 - leader
	_, warm0, cold0 := byNode(pools(0))
	t0 := time.Now()
	sb, err := c.cl[other].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", TimeoutS: 600})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if out := execOut(t, c.cl[leader], sb.ID, "echo", "warm"); out != "warm\n" {
		t.Fatalf("exec in the warm sandbox: %q", out)
	}
	waitFor(t, "the agent to count the create", func() bool {
		_, warm, _ := byNode(pools(0))
		return warm > warm0
	})
	_, warm1, cold1 := byNode(pools(0))
	if warm1 != warm0+1 || cold1 != cold0 {
		t.Fatalf("creates warm %d → %d, cold %d → %d: want one more warm and no cold", warm0, warm1, cold0, cold1)
	}
	t.Logf("create at replica %d served warm on %s in %v", other+1, sb.Node, took.Round(time.Millisecond))
	if _, err := c.cl[0].DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}

	// The CLI against a replica: capacity advice and the per-agent split.
	out := c.cli(t, "capacity", "--url", c.urls[other])
	if !strings.Contains(out, "recommended nodes") || !strings.Contains(out, "season") {
		t.Fatalf("tartarus capacity at a replica:\n%s", out)
	}
	out = c.cli(t, "forecast", "pools", "--url", c.urls[other])
	if !strings.Contains(out, "node-a") || !strings.Contains(out, "node-b") {
		t.Fatalf("tartarus forecast pools at a replica:\n%s", out)
	}

	// node-a dies: its share moves to node-b.
	c.agents[0].kill()
	waitNodes(t, c.cl[0], map[string]string{"node-a": "down", "node-b": "up"})
	waitPools("node-b holds the whole target", func(s map[string]share) bool {
		_, a := s["node-a"]
		return !a && s["node-b"].target == target && s["node-b"].ready == target
	})

	// A shape no pool keeps is a cold create (for comparison; last, since
	// the agent then keeps a pool of that shape too).
	_, _, cold0 = byNode(pools(0))
	t0 = time.Now()
	sb, err = c.cl[other].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 384, TimeoutS: 600})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a create of 384 MiB (no pool) on %s took %v: cold", sb.Node, time.Since(t0).Round(time.Millisecond))
	waitFor(t, "the agent to count the cold create", func() bool {
		_, _, cold := byNode(pools(0))
		return cold == cold0+1
	})
	if _, err := c.cl[0].DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}

	// The usage records (each minute, one replica's row) count the first
	// create warm and the second cold.
	db, err := sql.Open("pgx", c.pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var warm, cold int
	t0 = time.Now()
	if !waitForQuiet(2*time.Minute, func() bool {
		err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(warm_launches), 0), COALESCE(SUM(cold_launches), 0) FROM persephone_usage`).Scan(&warm, &cold)
		return err == nil && warm > 0
	}) {
		t.Fatalf("no usage record counted the warm create (warm %d, cold %d)", warm, cold)
	}
	if !waitForQuiet(time.Minute, func() bool {
		err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(warm_launches), 0), COALESCE(SUM(cold_launches), 0) FROM persephone_usage`).Scan(&warm, &cold)
		return err == nil && cold > 0
	}) || warm != 1 || cold != 1 {
		t.Fatalf("usage records count %d warm and %d cold launches, want 1 and 1 (once each, though both replicas record)", warm, cold)
	}
	t.Logf("usage records: 1 warm launch, 1 cold (after %v more)", time.Since(t0).Round(time.Second))
}
