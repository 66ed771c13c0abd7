package cluster

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestClusterHeat runs two replicas with heat classes on one Postgres and
// plays one node by hand: a classed create reaches the node sized by its
// class, its maximum duration as its timeout and no heat fields; on a full
// node creates that may wait are queued at either replica (202, with their
// place), exactly one replica runs the queue, the queued creates are
// admitted in order as room frees up, and one whose wait ends times out
// with the reason; pools are shared through the database.
func TestClusterHeat(t *testing.T) {
	admin := pgtest.StartPostgres(t)
	ctx := context.Background()
	enable := func(c *Cluster) {
		if err := c.EnableHeat(ctx, HeatConfig{}); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnvWith(t, admin, "heat", http.DefaultClient, 10*time.Second, enable)
	st2, err := store.OpenPostgres(ctx, e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st2.Close() })
	c2, err := New(Config{Store: st2, PollInterval: 20 * time.Millisecond, CommandWait: 10 * time.Second,
		AgentClient: e.c.cfg.AgentClient, AgentIdentity: e.c.cfg.AgentIdentity})
	if err != nil {
		t.Fatal(err)
	}
	enable(c2)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c2.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	node := status("node-a", 1024, map[string]string{"pool": "test"}, false)
	node.CPUs = 4
	node.Runtimes[0].MaxCPUs = 4
	e.beat(node, true)
	defer e.keepBeating(node)()

	// A classed create: ember (1 CPU, 512 MiB, 30 s).
	ch := e.create(&tartarus.CreateRequest{Template: "base", ResourceClass: "ember", Network: &tartarus.NetworkSpec{Mode: "open"}})
	cmds := e.poll("node-a")
	if len(cmds) != 1 || cmds[0].Kind != wire.KindCreate {
		t.Fatalf("commands: %+v", cmds)
	}
	cr := cmds[0].Create
	if cr.CPUs != 1 || cr.MemoryMB != 512 || cr.TimeoutS != 30 || cr.ResourceClass != "" || cr.HeatHint != "" || cr.QueueTimeoutS != 0 {
		t.Errorf("create as the node gets it: %+v; want 1 CPU, 512 MiB, timeout 30 s, no heat fields", cr)
	}
	e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
	first := <-ch
	if first.err != nil || first.sb.Heat == nil || first.sb.Heat.Class != "ember" || first.sb.Heat.Heat != "cold" {
		t.Fatalf("classed create: %+v, %v", first.sb, first.err)
	}

	// Fill the node; then a create without queue_timeout_s is refused at
	// once, and ones with it are queued at either replica.
	ch = e.create(&tartarus.CreateRequest{Template: "base", HeatHint: "cold"})
	cmds = e.poll("node-a")
	e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
	second := <-ch
	if second.err != nil {
		t.Fatal(second.err)
	}
	if _, err := e.c.Create(ctx, "t1", &tartarus.CreateRequest{Template: "base", HeatHint: "cold"}); !strings.Contains(errString(err), "resource_exhausted") && !isExhausted(err) {
		t.Fatalf("create on a full node without queue_timeout_s: %v", err)
	}
	q1, err := c2.Create(ctx, "t1", &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 60})
	if err != nil || q1.State != tartarus.StateQueued || q1.Queue == nil || q1.Queue.Position != 1 {
		t.Fatalf("queued create at replica 2: %+v, %v", q1, err)
	}
	q2, err := e.c.Create(ctx, "t1", &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 60})
	if err != nil || q2.State != tartarus.StateQueued || q2.Queue == nil || q2.Queue.Position != 2 {
		t.Fatalf("queued create at replica 1: %+v, %v", q2, err)
	}
	if got, err := c2.Get(ctx, q2.ID); err != nil || got.State != tartarus.StateQueued {
		t.Fatalf("queued create read at the other replica: %+v, %v", got, err)
	}
	waitUntil(t, "one replica to run the queue", func() bool { return (e.c.runsQueue() != c2.runsQueue()) })
	m, err := c2.HeatMetrics(ctx)
	if err != nil || m.QueueDepthByHeat["cold"] != 2 || m.ByHeat["cold"] != 2 {
		t.Fatalf("heat metrics: %+v, %v; want 2 cold running and 2 queued", m, err)
	}

	// Room frees up: the first queued create is admitted (a create command
	// for its id), then the second.
	for i, q := range []*tartarus.Sandbox{q1, q2} {
		ended := []*tartarus.Sandbox{first.sb, second.sb}[i]
		gone := *ended
		gone.State, gone.UpdatedAt = tartarus.StateTerminated, time.Now().UTC()
		e.call("node-a", "POST", wire.PathReports, wire.Reports{Sandboxes: []wire.Report{{Sandbox: gone}}}, nil)
		var got wire.Command
		waitUntil(t, "the queued create to reach the node", func() bool {
			for _, cmd := range e.poll("node-a") {
				if cmd.Kind == wire.KindCreate {
					got = cmd
					return true
				}
			}
			return false
		})
		if got.SandboxID != q.ID || got.Create.MemoryMB != 512 {
			t.Fatalf("admitted %s (%+v), want %s first", got.SandboxID, got.Create, q.ID)
		}
		e.finish(got, got.Sandbox, tartarus.StateRunning)
		if sb, err := e.c.Get(ctx, q.ID); err != nil || sb.State != tartarus.StateRunning || sb.Heat == nil {
			t.Fatalf("admitted create: %+v, %v", sb, err)
		}
	}

	// Full again: a create that may wait 1 s times out with the reason.
	q3, err := c2.Create(ctx, "t1", &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 1})
	if err != nil || q3.State != tartarus.StateQueued {
		t.Fatalf("queued create: %+v, %v", q3, err)
	}
	waitUntil(t, "the queued create to time out", func() bool {
		sb, err := e.c.Get(ctx, q3.ID)
		return err == nil && sb.State == tartarus.StateFailed && strings.Contains(sb.Error, "timed_out")
	})
	// A queued create deleted at a replica is cancelled.
	q4, err := e.c.Create(ctx, "t1", &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 60})
	if err != nil || q4.State != tartarus.StateQueued {
		t.Fatalf("queued create: %+v, %v", q4, err)
	}
	if sb, err := c2.Destroy(ctx, q4.ID); err != nil || sb.State.Final() == false {
		t.Fatalf("delete a queued create: %+v, %v", sb, err)
	}

	// Pools live in the database: defined at one replica, listed at the other.
	if _, err := e.c.DefineHeatPool(ctx, &api.Pool{Name: "big", Heats: []string{"inferno"}, NodeSelector: map[string]string{"pool": "big"}, MaxNodes: 4}); err != nil {
		t.Fatal(err)
	}
	pools, err := c2.HeatPools(ctx)
	if err != nil || len(pools) != 1 || pools[0].Name != "big" {
		t.Fatalf("pools at the other replica: %+v, %v", pools, err)
	}
	// Tiers: hot work goes to its pool's node-b; cold work to the shared
	// nodes (node-a, full) and then borrows upward, to node-b.
	big := status("node-b", 16384, map[string]string{"pool": "big"}, false)
	e.beat(big, true)
	defer e.keepBeating(big)()
	if _, err := c2.DefineHeatPool(ctx, &api.Pool{Name: "hotpool", Heats: []string{"hot"}, NodeSelector: map[string]string{"pool": "big"}, MaxNodes: 1}); err != nil {
		t.Fatal(err)
	}
	for _, hint := range []string{"hot", "cold"} {
		ch := e.create(&tartarus.CreateRequest{Template: "base", HeatHint: hint})
		cmds := e.poll("node-b")
		if len(cmds) != 1 || cmds[0].Kind != wire.KindCreate {
			t.Fatalf("%s create: node-b got %+v", hint, cmds)
		}
		e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
		if r := <-ch; r.err != nil || r.sb.Node != "node-b" {
			t.Fatalf("%s create: %+v, %v; want it on node-b", hint, r.sb, r.err)
		}
	}
	classes, err := c2.HeatClasses(ctx)
	if err != nil || len(classes) != 4 {
		t.Fatalf("classes: %+v, %v", classes, err)
	}
	// Heat fields without heat classes: 501 as before.
	c3, _ := New(Config{Store: st2, AgentClient: e.c.cfg.AgentClient, AgentIdentity: e.c.cfg.AgentIdentity})
	if _, err := c3.Create(ctx, "t1", &tartarus.CreateRequest{Template: "base", HeatHint: "hot"}); !isClass(err, tartarus.ErrNotImplemented) {
		t.Fatalf("heat fields on a replica without heat classes: %v", err)
	}
}

func (c *Cluster) runsQueue() bool {
	c.heat.mu.Lock()
	defer c.heat.mu.Unlock()
	return c.heat.queue != nil
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func isExhausted(err error) bool { return isClass(err, tartarus.ErrResourceExhausted) }

func isClass(err error, class error) bool { return err != nil && tartarus.ClassOf(err).Err == class }
