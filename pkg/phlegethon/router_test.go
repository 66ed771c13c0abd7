package phlegethon

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func newRouter(t testing.TB, cfg Config, nodes []tartarus.NodeInfo) *Router {
	t.Helper()
	r, err := NewRouter(context.Background(), cfg, &MemJournal{}, NodeListerFunc(func(context.Context) ([]tartarus.NodeInfo, error) { return nodes, nil }))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRouterDecide(t *testing.T) {
	ctx := context.Background()
	nodes := []tartarus.NodeInfo{node("big-1", "up", "tier=big"), node("n1", "up")}
	r := newRouter(t, Config{}, nodes)
	if err := r.DefinePool(ctx, &Pool{Name: "big", Heats: []HeatLevel{HeatHot, HeatInferno}, NodeSelector: map[string]string{"tier": "big"}, MinNodes: 2}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		req      SandboxRequest
		enforced bool
		limits   Limits
		tiers    string
	}{
		{"a create that asks for no heat keeps its size and lifetime", SandboxRequest{TemplateID: "base", MemoryMB: 256}, false,
			Limits{Class: "ember", MemoryMB: 256}, "shared:n1 hotter_pool:big-1"},
		{"a hint applies the class", SandboxRequest{TemplateID: "base", HeatHint: HeatHot}, true,
			Limits{Class: "blaze", CPUs: 4, MemoryMB: 8192, MaxDuration: 30 * time.Minute}, "pool:big-1 shared:n1"},
		{"max duration opts in", SandboxRequest{TemplateID: "base", MaxDuration: 20 * time.Second}, true,
			Limits{Class: "ember", CPUs: 1, MemoryMB: 512, MaxDuration: 20 * time.Second}, "shared:n1 hotter_pool:big-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := r.Decide(ctx, &tc.req)
			if err != nil {
				t.Fatal(err)
			}
			var tiers []string
			for _, tr := range d.Tiers {
				tiers = append(tiers, tr.Rule+":"+strings.Join(tr.Nodes, ","))
			}
			if d.Enforced != tc.enforced || d.Limits != tc.limits || strings.Join(tiers, " ") != tc.tiers {
				t.Errorf("got %+v tiers %v", d, tiers)
			}
		})
	}
	// EnforceAll applies the class to every create.
	all := newRouter(t, Config{EnforceAll: true}, nodes)
	if d, err := all.Decide(ctx, &SandboxRequest{TemplateID: "base"}); err != nil || !d.Enforced || d.Limits.MaxDuration != 30*time.Second || d.Limits.MemoryMB != 512 {
		t.Errorf("enforce all %+v, %v", d, err)
	}
	// A GPU no node reports is refused with that reason.
	if _, err := r.Decide(ctx, &SandboxRequest{GPUCount: 1}); !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.Contains(err.Error(), "no node reports GPUs") {
		t.Errorf("gpu %v", err)
	}
	pools, err := r.ListPools(ctx)
	if err != nil || len(pools) != 1 || pools[0].CurrentNodes != 1 {
		t.Errorf("pools %+v, %v", pools, err)
	}
	a, err := r.RouteToPool(ctx, HeatHot)
	if err != nil || len(a.Pools) != 1 || a.ResourceClass.Name != "blaze" || a.Tiers[0].Pool != "big" {
		t.Errorf("route %+v, %v", a, err)
	}
	if h, err := r.ClassifyHeat(ctx, &SandboxRequest{CPUCores: 2}); err != nil || h != HeatHot {
		t.Errorf("classify %s, %v", h, err)
	}
	if r.GetResourceClass(HeatWarm).Name != "flame" {
		t.Error("warm class")
	}
	if err := r.RemovePool(ctx, "big"); err != nil {
		t.Fatal(err)
	}
}

func TestRouterMetrics(t *testing.T) {
	ctx := context.Background()
	r := newRouter(t, Config{}, []tartarus.NodeInfo{node("n1", "")})
	rm := &room{}
	q, err := NewQueue(QueueConfig{}, clock.NewFake(t0), &MemJournal{}, rm.admit)
	if err != nil {
		t.Fatal(err)
	}
	r.AttachQueue(q)
	r.Started("sb-1", HeatHot)
	r.Started("sb-2", HeatCold)
	r.Started("sb-3", HeatCold)
	if _, err := r.Decide(ctx, &SandboxRequest{HeatHint: HeatWarm}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, "w1", HeatWarm, 0)
	enqueue(t, q, "w2", HeatWarm, 0)
	if err := r.Ended(ctx, "sb-1", &HeatObservation{TemplateID: "base", ActualDuration: time.Minute, PeakCPU: 1}); err != nil {
		t.Fatal(err)
	}
	if err := r.Ended(ctx, "sb-2", &HeatObservation{TemplateID: "base", PeakCPU: -1}); err == nil {
		t.Error("a hostile observation was taken")
	}
	if len(r.Classifier().History("base")) != 1 {
		t.Error("the observation was not recorded")
	}
	rm.setFree(1)
	q.Dispatch(ctx)
	m, err := r.GetHeatMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.TotalSandboxes != 1 || m.ByHeat[HeatCold] != 1 || m.ByHeat[HeatHot] != 0 || m.QueueDepthByHeat[HeatWarm] != 1 || m.P99WaitByHeat[HeatWarm] != 0 || len(m.AvgWaitByHeat) != 4 {
		t.Errorf("metrics %+v", m)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(r.Collector()); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP tartarus_heat_queue_depth Creates waiting for room now, by heat.
# TYPE tartarus_heat_queue_depth gauge
tartarus_heat_queue_depth{heat="cold"} 0
tartarus_heat_queue_depth{heat="hot"} 0
tartarus_heat_queue_depth{heat="inferno"} 0
tartarus_heat_queue_depth{heat="warm"} 1
# HELP tartarus_heat_sandboxes Sandboxes running now, by heat.
# TYPE tartarus_heat_sandboxes gauge
tartarus_heat_sandboxes{heat="cold"} 1
tartarus_heat_sandboxes{heat="hot"} 0
tartarus_heat_sandboxes{heat="inferno"} 0
tartarus_heat_sandboxes{heat="warm"} 0
# HELP tartarus_heat_queue_outcomes_total Creates that left a heat queue, by heat and status (admitted, timed_out, failed, cancelled).
# TYPE tartarus_heat_queue_outcomes_total counter
tartarus_heat_queue_outcomes_total{heat="warm",status="admitted"} 1
# HELP tartarus_heat_classifications_total Creates classified, by heat and the rule that chose it.
# TYPE tartarus_heat_classifications_total counter
tartarus_heat_classifications_total{heat="warm",rule="hint"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tartarus_heat_queue_depth", "tartarus_heat_sandboxes",
		"tartarus_heat_queue_outcomes_total", "tartarus_heat_classifications_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "tartarus_heat_queue_wait_seconds"); err != nil || n != 1 {
		t.Errorf("wait histogram %d, %v", n, err)
	}
}

// What the classifier learned survives a restart: a new router over the
// same database explains the template's heat from the stored runs.
func TestRouterLearningSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "heat.db")
	open := func() *Router {
		j := openSQLite(t, path)
		r, err := NewRouter(ctx, Config{Observations: j}, j, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1 := open()
	for i := range DefaultMinSamples {
		if err := r1.Ended(ctx, "sb", &HeatObservation{TemplateID: "etl", ActualDuration: 20 * time.Minute, PeakCPU: 1, Timestamp: t0.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	r2 := open()
	e, err := r2.Classifier().ExplainTemplate("etl")
	if err != nil || e.Heat != HeatInferno || e.Rule != RuleLearned {
		t.Errorf("after restart %+v, %v", e, err)
	}
}
