package persephonesrv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var start = time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC) // a Wednesday

type storeSandboxes struct {
	store.Store
	store.UsageKeeper
}

// denyWrites lets reads through and refuses every write: routes must
// authorize with the right action.
type denyWrites struct{}

func (denyWrites) Wrap(h http.Handler) http.Handler { return h }
func (denyWrites) Authorize(_ context.Context, a cerberus.Action, res cerberus.Resource) error {
	if res.Type != cerberus.ResourceTypeNode {
		return fmt.Errorf("resource %q", res.Type)
	}
	if a != cerberus.ActionRead {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "no %s on node", a)
	}
	return nil
}

type fakePools struct{ set map[string]int }

func (f *fakePools) TemplatePoolSizes() map[string]int { return map[string]int{} }
func (f *fakePools) SetPoolTargets(_ context.Context, t map[string]int) error {
	f.set = t
	return nil
}

func newService(t *testing.T) (*Service, *clock.Fake, store.Store, *fakePools) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fc := clock.NewFake(start.Add(14 * 24 * time.Hour))
	var uk store.UsageKeeper = st
	scaler, err := persephone.New(ctx, persephone.Config{Usage: uk.Usage(), Seasons: uk.Usage(), Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	pools := &fakePools{}
	svc, err := New(Config{Scaler: scaler, Usage: uk.Usage(), Sandboxes: storeSandboxes{st, uk}, Clock: fc, Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	return svc, fc, st, pools
}

func serve(t *testing.T, svc *Service, guard cerberus.Guard) *httptest.Server {
	mux := http.NewServeMux()
	for p, h := range svc.Routes(guard) {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRoutes(t *testing.T) {
	svc, _, _, _ := newService(t)
	srv := serve(t, svc, cerberus.Open())
	var csv bytes.Buffer
	recs := persephone.TraceRecords("python", start, persephone.LaunchTrace(persephone.DefaultDayShape(), start, 14*24*60, 1))
	if err := persephone.WriteUsageCSV(&csv, recs); err != nil {
		t.Fatal(err)
	}
	spring := `{"id":"spring","schedule":{"start_cron":"0 6 * * *","end_cron":"0 18 * * *"},"min_nodes":2,"max_nodes":9,"target_utilization":0.7,"prewarming":{"templates":["python"],"pool_size":4,"lead_time":1800000000000}}`
	cases := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"import", "POST", "/v1/usage/import", csv.String(), 200, `"records":20160`},
		{"import bad line", "POST", "/v1/usage/import", "timestamp,active_vms\n2026-03-02T09:00:00Z,-4\n", 400, "line 2"},
		{"define", "POST", "/v1/seasons", spring, 201, `"id":"spring"`},
		{"define unknown field", "POST", "/v1/seasons", `{"id":"x","cron":"* * * * *"}`, 400, "unknown field"},
		{"define bad cron", "POST", "/v1/seasons", `{"id":"x","schedule":{"start_cron":"61 * * * *","end_cron":"0 1 * * *"}}`, 400, "above maximum"},
		{"list", "GET", "/v1/seasons", "", 200, `"pinned":""`},
		{"apply missing", "POST", "/v1/seasons/nope/apply", "", 404, "nope"},
		{"apply", "POST", "/v1/seasons/spring/apply", "", 200, `"pinned":"spring"`},
		{"unpin", "DELETE", "/v1/seasons/pin", "", 200, `"pinned":""`},
		{"forecast", "GET", "/v1/forecast?window=2h", "", 200, `"metric":"demand"`},
		{"forecast template", "GET", "/v1/forecast?window=1h&template=python", "", 200, `"metric":"launches:python"`},
		{"forecast bad window", "GET", "/v1/forecast?window=30d", "", 400, "window"},
		{"forecast bad template", "GET", "/v1/forecast?template=../x", "", 400, "template"},
		{"forecast unknown query", "GET", "/v1/forecast?windw=1h", "", 400, "windw"},
		{"backtest", "GET", "/v1/forecast/backtest?metric=launches:python", "", 200, `"chosen":true`},
		{"backtest bad metric", "GET", "/v1/forecast/backtest?metric=nope", "", 400, "nope"},
		{"capacity", "GET", "/v1/capacity?target_util=0.5", "", 200, `"recommended_nodes"`},
		{"capacity bad util", "GET", "/v1/capacity?target_util=2", "", 400, "target_util"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := do(t, c.method, srv.URL+c.path, c.body)
			if status != c.status || !strings.Contains(body, c.want) {
				t.Errorf("%s %s: %d %.300s; want %d with %q", c.method, c.path, status, body, c.status, c.want)
			}
		})
	}
	if err := svc.SizePools(context.Background()); err != nil {
		t.Fatal(err)
	}
	status, body := do(t, "GET", srv.URL+"/v1/warm-pools", "")
	var wp struct{ Targets []persephone.PoolTarget }
	if status != 200 || json.Unmarshal([]byte(body), &wp) != nil || len(wp.Targets) != 1 || wp.Targets[0].Template != "python" {
		t.Errorf("warm pools: %d %s", status, body)
	}
}

func TestRoutesAuthorize(t *testing.T) {
	svc, _, _, _ := newService(t)
	srv := serve(t, svc, denyWrites{})
	if status, body := do(t, "GET", srv.URL+"/v1/seasons", ""); status != 200 {
		t.Errorf("read: %d %s", status, body)
	}
	for _, w := range [][2]string{{"POST", "/v1/seasons"}, {"POST", "/v1/seasons/x/apply"}, {"DELETE", "/v1/seasons/pin"}, {"POST", "/v1/usage/import"}} {
		if status, _ := do(t, w[0], srv.URL+w[1], "{}"); status != http.StatusForbidden {
			t.Errorf("%s %s without update on node: %d, want 403", w[0], w[1], status)
		}
	}
}

// The source counts the sandboxes created in the minute from the store,
// by template, with the failed ones as errors, and the running and
// creating ones as active and queued.
func TestSourceAndPools(t *testing.T) {
	ctx := context.Background()
	svc, fc, st, pools := newService(t)
	minute := fc.Now().Truncate(time.Minute)
	mk := func(id, tpl string, at time.Time, to tartarus.State) {
		sb := tartarus.NewSandbox(id, "t", &tartarus.CreateRequest{Template: tpl}, at)
		if err := st.Create(ctx, sb); err != nil {
			t.Fatal(err)
		}
		if to != tartarus.StateCreating {
			if _, err := st.Move(ctx, id, tartarus.StateCreating, to, store.Change{At: at}); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("sb-1", "python", minute.Add(5*time.Second), tartarus.StateRunning)
	mk("sb-2", "python", minute.Add(50*time.Second), tartarus.StateFailed)
	mk("sb-3", "node", minute.Add(59*time.Second), tartarus.StateCreating)
	mk("sb-4", "python", minute.Add(time.Minute), tartarus.StateRunning) // the next minute
	src := &Source{Sandboxes: svc.cfg.Sandboxes}
	rec, err := src.Usage(ctx, minute)
	if err != nil {
		t.Fatal(err)
	}
	if rec.ActiveVMs != 2 || rec.QueueDepth != 1 || rec.LaunchCount != 3 || rec.ErrorCount != 1 ||
		rec.LaunchesByTemplate["python"] != 2 || rec.LaunchesByTemplate["node"] != 1 {
		t.Errorf("usage record %+v", rec)
	}
	// A season listing python sets its pool floor; the loop hands it over.
	season := &persephone.Season{ID: "busy", Prewarming: persephone.PrewarmConfig{Templates: []string{"python"}, PoolSize: 3}}
	if err := svc.scaler.DefineSeason(ctx, season); err != nil {
		t.Fatal(err)
	}
	if err := svc.scaler.ApplySeason(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	if err := svc.SizePools(ctx); err != nil {
		t.Fatal(err)
	}
	if pools.set["python"] != 3 {
		t.Errorf("targets %v, want python: 3", pools.set)
	}
}

// clusterPools is a cluster replica's pools: it leads or not, reads the
// ready counts with a context and shows each agent's share.
type clusterPools struct {
	fakePools
	lead  bool
	ready map[string]int
	plan  []persephone.PoolTarget
}

func (c *clusterPools) Lead(context.Context) (bool, error) { return c.lead, nil }
func (c *clusterPools) SetPoolPlan(_ context.Context, ts []persephone.PoolTarget) error {
	c.plan = ts
	return nil
}
func (c *clusterPools) ReadyPools(context.Context) (map[string]int, error) {
	return c.ready, nil
}
func (c *clusterPools) NodePools(context.Context) ([]persephone.NodePool, error) {
	return []persephone.NodePool{{Node: "node-a", Template: "python", Target: 2, Ready: 1, WarmCreates: 4, ColdCreates: 1}}, nil
}

// On a cluster only the leading replica sizes; a season applied at
// another replica (straight into the store here) is seen at the next
// sizing; GET /v1/warm-pools adds each agent's share.
func TestClusterPoolsLeadAndSplit(t *testing.T) {
	ctx := context.Background()
	svc, fc, st, _ := newService(t)
	pools := &clusterPools{ready: map[string]int{"python": 1}}
	svc.cfg.Pools = pools

	uk := st.(store.UsageKeeper)
	other, err := persephone.New(ctx, persephone.Config{Usage: uk.Usage(), Seasons: uk.Usage(), Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	season := &persephone.Season{ID: "busy", Prewarming: persephone.PrewarmConfig{Templates: []string{"python"}, PoolSize: 3,
		NodeLabels: map[string]string{"pool": "fast"}}}
	if err := other.DefineSeason(ctx, season); err != nil {
		t.Fatal(err)
	}
	if err := other.ApplySeason(ctx, "busy"); err != nil {
		t.Fatal(err)
	}

	if err := svc.SizePools(ctx); err != nil {
		t.Fatal(err)
	}
	if pools.plan != nil || len(svc.LastTargets()) != 0 {
		t.Fatalf("a replica that does not lead sized: %v %v", pools.set, svc.LastTargets())
	}
	pools.lead = true
	if err := svc.SizePools(ctx); err != nil {
		t.Fatal(err)
	}
	if len(pools.plan) != 1 || pools.plan[0].Size != 3 || pools.plan[0].NodeLabels["pool"] != "fast" {
		t.Fatalf("plan %+v, want python: 3 on pool=fast (the season applied at the other replica)", pools.plan)
	}
	if ts := svc.LastTargets(); len(ts) != 1 || ts[0].Current != 1 {
		t.Fatalf("last targets %+v, want python with 1 ready (ReadyPools)", ts)
	}

	srv := serve(t, svc, denyWrites{})
	code, body := do(t, http.MethodGet, srv.URL+"/v1/warm-pools", "")
	var ans WarmPoolsAnswer
	if err := json.Unmarshal([]byte(body), &ans); code != http.StatusOK || err != nil {
		t.Fatalf("GET /v1/warm-pools: %d %s", code, body)
	}
	if len(ans.Targets) != 1 || len(ans.Nodes) != 1 || ans.Nodes[0].Node != "node-a" || ans.Nodes[0].WarmCreates != 4 {
		t.Errorf("warm pools answer %+v", ans)
	}
}

// countingNodes lists no nodes and counts creates as set.
type countingNodes struct {
	counts map[string]map[string]map[string]int
}

func (c *countingNodes) Nodes(context.Context) ([]*tartarus.NodeInfo, error) { return nil, nil }
func (c *countingNodes) NodeCreateCounts(context.Context) (map[string]map[string]map[string]int, error) {
	return c.counts, nil
}

// Warm and cold launches are the growth of the nodes' create counts
// between records: the first reading is the baseline, failed creates are
// neither, and a count that fell (the agent restarted) counts whole.
func TestSourceWarmCold(t *testing.T) {
	ctx := context.Background()
	svc, fc, _, _ := newService(t)
	nodes := &countingNodes{}
	src := &Source{Sandboxes: svc.cfg.Sandboxes, Nodes: nodes}
	steps := []struct {
		name       string
		counts     map[string]map[string]map[string]int
		warm, cold int
	}{
		{"baseline", map[string]map[string]map[string]int{"a": {"python": {"warm pool": 5, "restored": 2}}}, 0, 0},
		{"growth", map[string]map[string]map[string]int{
			"a": {"python": {"warm pool": 7, "restored": 3, "failed": 4}},
			"b": {"node": {"booted": 1}}}, 2, 2},
		{"no change", map[string]map[string]map[string]int{
			"a": {"python": {"warm pool": 7, "restored": 3, "failed": 4}},
			"b": {"node": {"booted": 1}}}, 0, 0},
		{"a restarted", map[string]map[string]map[string]int{
			"a": {"python": {"warm pool": 1}},
			"b": {"node": {"booted": 1}}}, 1, 0},
		{"primed", map[string]map[string]map[string]int{}, 0, 0},
		{"counted whole after a prime", map[string]map[string]map[string]int{"c": {"python": {"warm pool": 2}}}, 2, 0},
	}
	for _, s := range steps {
		nodes.counts = s.counts
		if s.name == "primed" {
			src.Prime(ctx)
			continue
		}
		rec, err := src.Usage(ctx, fc.Now().Truncate(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if rec.WarmLaunches != s.warm || rec.ColdLaunches != s.cold {
			t.Errorf("%s: warm %d cold %d, want %d and %d", s.name, rec.WarmLaunches, rec.ColdLaunches, s.warm, s.cold)
		}
	}
}
