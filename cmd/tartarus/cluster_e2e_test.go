package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/cluster/clustertest"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// proc is one tartarus process of the cluster test.
type proc struct {
	name string
	bin  string
	args []string
	env  []string // added to the test's environment
	logs string
	cmd  *exec.Cmd
}

func (p *proc) start(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(p.logs, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== start %s\n", time.Now().Format(time.RFC3339Nano))
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
}

// kill is kill -9.
func (p *proc) kill() {
	if p.cmd != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

func (p *proc) stop() {
	if p.cmd != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		_ = p.cmd.Wait()
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestClusterWakeElsewhere gives two agents one snapshot store on a real
// SeaweedFS (S3), hibernates a sandbox on one, kills that agent (-9) and
// checks that the sandbox, marked unassigned rather than lost, wakes on
// the other node with its files and a process that kept its memory; then
// drains. The same cluster first runs clusterServices (networks, ports,
// heat and terminations through the replicas).
func TestClusterWakeElsewhere(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	c := newServicesCluster(t)
	t.Run("Services", func(t *testing.T) { clusterServices(t, c) })
	if t.Failed() {
		return
	}
	c.agents[0].start(t) // clusterServices left it killed
	ctx, cl := context.Background(), c.cl[0]
	waitNodes(t, cl, map[string]string{"node-a": "up", "node-b": "up"})
	nl, err := cl.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nl.Nodes {
		if len(n.SnapshotRuntimes) == 0 {
			t.Fatalf("node %s cannot snapshot: %+v", n.Name, n)
		}
	}

	sb, err := cl.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 256, TimeoutS: 1800,
		NodeLabels: map[string]string{"node": "node-a"}})
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, cl, sb.ID, "sh", "-c", "echo kept > /tmp/kept; "+
		"setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &")
	time.Sleep(time.Second)
	before, _ := strconv.Atoi(strings.TrimSpace(execOut(t, cl, sb.ID, "cat", "/tmp/counter")))
	if h, err := cl.Hibernate(ctx, sb.ID); err != nil || h.State != tartarus.StateHibernated {
		t.Fatalf("hibernate: %+v, %v", h, err)
	}
	c.agents[0].kill()
	waitNodes(t, cl, map[string]string{"node-a": "down", "node-b": "up"})
	got, err := cl.GetSandbox(ctx, sb.ID)
	if err != nil || got.State != tartarus.StateHibernated || got.Node != "" {
		t.Fatalf("hibernated sandbox of the dead node: %+v, %v; want hibernated and unassigned", got, err)
	}
	// An exec wakes it, on node-b.
	if out := execOut(t, cl, sb.ID, "cat", "/tmp/kept"); out != "kept\n" {
		t.Fatalf("file after waking on another node: %q", out)
	}
	got, _ = cl.GetSandbox(ctx, sb.ID)
	if got.Node != "node-b" || got.State != tartarus.StateRunning {
		t.Fatalf("after the wake: %+v, want running on node-b", got)
	}
	after, _ := strconv.Atoi(strings.TrimSpace(execOut(t, cl, sb.ID, "cat", "/tmp/counter")))
	if after < before {
		t.Fatalf("counter %d → %d: the process restarted instead of waking", before, after)
	}
	// node-a comes back and lets go of it without touching the snapshot
	// node-b now owns; node-b still answers.
	c.agents[0].start(t)
	waitNodes(t, cl, map[string]string{"node-a": "up", "node-b": "up"})
	time.Sleep(2 * time.Second)
	if out := execOut(t, cl, sb.ID, "cat", "/tmp/kept"); out != "kept\n" {
		t.Fatalf("after node-a came back: %q", out)
	}
	if _, err := cl.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "no QEMU left", func() bool { return len(qemusUnder(c.root)) == 0 })

	// Drain: ten sandboxes on node-a hibernate and leave it (they wake on
	// node-b, files kept), node-a takes no new sandbox until undrained, and
	// draining node-b without --hibernate ends what it holds.
	var ids []string
	for i := range 10 {
		sb, err := cl.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 128, TimeoutS: 1800,
			NodeLabels: map[string]string{"node": "node-a"}})
		if err != nil {
			t.Fatalf("create %d on node-a: %v", i, err)
		}
		execOut(t, cl, sb.ID, "sh", "-c", "echo "+sb.ID+" > /tmp/me")
		ids = append(ids, sb.ID)
	}
	t0 := time.Now()
	rep, err := cl.DrainNode(ctx, "node-a", tartarus.DrainOptions{Hibernate: true})
	if err != nil || len(rep.Moved) != 10 || len(rep.Ended) != 0 || len(rep.Failed) != 0 {
		t.Fatalf("drain node-a --hibernate: %+v, %v; want 10 moved", rep, err)
	}
	t.Logf("drained 10 sandboxes off node-a (hibernated, unassigned) in %v", time.Since(t0))
	for _, id := range ids {
		if got, err := cl.GetSandbox(ctx, id); err != nil || got.State != tartarus.StateHibernated || got.Node != "" {
			t.Fatalf("drained sandbox %s: %+v, %v; want hibernated and unassigned", id, got, err)
		}
	}
	if _, err := cl.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 128,
		NodeLabels: map[string]string{"node": "node-a"}}); err == nil {
		t.Fatal("a create placed on a draining node")
	}
	for _, id := range ids[:2] {
		if out := execOut(t, cl, id, "cat", "/tmp/me"); out != id+"\n" {
			t.Fatalf("moved sandbox %s after waking: %q", id, out)
		}
		if got, _ := cl.GetSandbox(ctx, id); got.Node != "node-b" {
			t.Fatalf("moved sandbox %s woke on %q, want node-b", id, got.Node)
		}
	}
	if err := cl.UndrainNode(ctx, "node-a"); err != nil {
		t.Fatal(err)
	}
	rep, err = cl.DrainNode(ctx, "node-b", tartarus.DrainOptions{})
	if err != nil || len(rep.Ended) != 2 || len(rep.Failed) != 0 {
		t.Fatalf("drain node-b: %+v, %v; want the 2 woken sandboxes ended", rep, err)
	}
	for _, id := range ids[:2] {
		if got, err := cl.GetSandbox(ctx, id); err != nil || got.State != tartarus.StateTerminated {
			t.Fatalf("sandbox %s after draining node-b: %+v, %v", id, got, err)
		}
	}
	for _, id := range ids[2:] {
		if _, err := cl.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "no QEMU left after the drains", func() bool { return len(qemusUnder(c.root)) == 0 })
}

// clusterEnv is a cluster of real processes on loopback.
type clusterEnv struct {
	bin, root        string
	urls             []string
	pg               *pgtest.PostgresServer
	redis            *clustertest.Redis
	replicas, agents []*proc
	// cl are clients of the replicas' public APIs, in order.
	cl []*client.Client
}

// newCluster starts Postgres, Redis, n replicas and m agents (node-a,
// node-b, …) with certificates from `tartarus certs dev`, and stops them
// all (and any VM left) when t ends. Extra agent flags go to every agent.
func newCluster(t testing.TB, n, m int, agentArgs ...string) *clusterEnv {
	t.Helper()
	return newClusterEnv(t, n, m, nil, agentArgs...)
}

// newClusterEnv is newCluster with environment variables for the agents.
func newClusterEnv(t testing.TB, n, m int, agentEnv []string, agentArgs ...string) *clusterEnv {
	t.Helper()
	return newClusterWith(t, clusterOpts{replicas: n, agents: m, agentEnv: agentEnv, agentArgs: agentArgs})
}

// clusterOpts shape a test cluster: its size, and flags and environment
// for its processes (agentFlags adds flags of one agent, by index).
type clusterOpts struct {
	replicas, agents int
	agentEnv         []string
	agentArgs        []string
	agentFlags       func(i int) []string
	replicaArgs      []string
	// ownImages gives each agent an images directory of its own (the
	// cache's templates linked in) instead of the shared cache: for
	// tests that add templates.
	ownImages bool
}

// newClusterWith is newCluster as o says.
func newClusterWith(t testing.TB, o clusterOpts) *clusterEnv {
	t.Helper()
	n, m, agentEnv, agentArgs := o.replicas, o.agents, o.agentEnv, o.agentArgs
	bin, cache := e2eBinary(t)
	c := &clusterEnv{bin: bin, root: t.TempDir(), pg: pgtest.StartPostgresServer(t), redis: clustertest.StartRedis(t)}
	root := c.root

	certs := filepath.Join(root, "certs")
	var nodes []string
	for i := range m {
		nodes = append(nodes, "node-"+string(rune('a'+i)))
	}
	certArgs := []string{"certs", "dev", "--dir", certs, "--host", "127.0.0.1"}
	for _, n := range nodes {
		certArgs = append(certArgs, "--client", "agent:"+n)
	}
	if out, err := exec.Command(bin, certArgs...).CombinedOutput(); err != nil {
		t.Fatalf("certs dev: %v\n%s", err, out)
	}

	var urls, agentURLs []string
	for i := range n {
		listen, agentListen := freeAddr(t), freeAddr(t)
		name := "replica-" + strconv.Itoa(i+1)
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		c.replicas = append(c.replicas, &proc{name: name, bin: bin, logs: filepath.Join(root, name+".log"),
			args: append([]string{"server", "--listen", listen, "--data-dir", dir, "--auth=off", "--log-level", "debug",
				"--database", c.pg.DSN, "--redis", c.redis.URL, "--agent-listen", agentListen,
				"--agent-cert", filepath.Join(certs, "server.pem"), "--agent-key", filepath.Join(certs, "server-key.pem"),
				"--agent-ca", filepath.Join(certs, "ca.pem"), "--node-timeout", "4s", "--heartbeat-interval", "500ms"}, o.replicaArgs...)})
		urls = append(urls, "http://"+listen)
		agentURLs = append(agentURLs, "https://"+agentListen)
	}
	for i, n := range nodes {
		dir := filepath.Join(root, n)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if o.ownImages {
			linkImages(t, cache, dir)
		} else if err := os.Symlink(filepath.Join(cache, "images"), filepath.Join(dir, "images")); err != nil {
			t.Fatal(err)
		}
		listen := freeAddr(t)
		c.agents = append(c.agents, &proc{name: n, bin: bin, logs: filepath.Join(root, n+".log"), env: agentEnv,
			args: append([]string{"agent", "--server", strings.Join(agentURLs, ","), "--name", n, "--data-dir", dir,
				"--listen", listen, "--advertise", "https://" + listen, "--labels", "pool=test,node=" + n,
				"--tls-cert", filepath.Join(certs, "client-agent-"+n+".pem"), "--tls-key", filepath.Join(certs, "client-agent-"+n+"-key.pem"),
				"--tls-ca", filepath.Join(certs, "ca.pem"), "--accel", "tcg", "--log-level", "debug"}, agentArgs...)})
		if o.agentFlags != nil {
			p := c.agents[len(c.agents)-1]
			p.args = append(p.args, o.agentFlags(i)...)
		}
	}
	all := append(slices.Clone(c.replicas), c.agents...)
	t.Cleanup(func() {
		for _, p := range all {
			p.stop()
		}
		for _, pid := range qemusUnder(root) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			for _, p := range all {
				logs, _ := os.ReadFile(p.logs)
				if len(logs) > 12000 {
					logs = logs[len(logs)-12000:]
				}
				t.Logf("--- %s log (tail):\n%s", p.name, logs)
			}
		}
	})
	for _, p := range all {
		p.start(t)
	}
	c.urls = urls
	for _, u := range urls {
		cl, err := client.New(u, "")
		if err != nil {
			t.Fatal(err)
		}
		c.cl = append(c.cl, cl)
	}
	return c
}

// TestClusterEndToEnd runs the multi-node set-up on one machine:
// a real Postgres and Redis, two `tartarus server` replicas sharing them,
// and three `tartarus agent`s with their own data directories running
// real microVMs, all talking over mutual TLS with certificates from
// `tartarus certs dev`. It checks that sandboxes spread across the
// agents; that with one agent killed (-9) the others' sandboxes keep
// answering and the dead node is marked down, and when it comes back it
// kills the VM the cluster declared lost; that with one replica killed
// (-9) every call through the other works; and that restarting Redis and
// then Postgres under a steady load of creates loses and duplicates no
// acknowledged sandbox and orphans no QEMU.
func TestClusterEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	c := newCluster(t, 2, 3)
	ctx, root, cl, pg, redis := context.Background(), c.root, c.cl, c.pg, c.redis
	replicas, agents := c.replicas, c.agents
	waitNodes(t, cl[0], map[string]string{"node-a": "up", "node-b": "up", "node-c": "up"})

	// Spread: three sandboxes, through alternating replicas, on three nodes.
	var sbs []*tartarus.Sandbox
	onNode := map[string]*tartarus.Sandbox{}
	for i := range 3 {
		sb, err := cl[i%2].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 256, TimeoutS: 1800,
			NodeLabels: map[string]string{"pool": "test"}})
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		sbs = append(sbs, sb)
		onNode[sb.Node] = sb
	}
	if len(onNode) != 3 {
		t.Fatalf("sandboxes landed on %d nodes, want 3 (spread): %v", len(onNode), sbs)
	}
	for i, sb := range sbs {
		// Through the other replica than the one that created it.
		if out := execOut(t, cl[(i+1)%2], sb.ID, "echo", "hi from "+sb.Node); out != "hi from "+sb.Node+"\n" {
			t.Fatalf("exec in %s on %s: %q", sb.ID, sb.Node, out)
		}
	}
	// Files through a replica reach the right node.
	if err := cl[1].WriteFile(ctx, sbs[0].ID, "/tmp/hello", 0o644, strings.NewReader("files cross replicas")); err != nil {
		t.Fatal(err)
	}
	if out := execOut(t, cl[0], sbs[0].ID, "cat", "/tmp/hello"); out != "files cross replicas" {
		t.Fatalf("file written through replica 2, read through 1: %q", out)
	}
	// Templates through a replica are the nodes'.
	if imgs, err := cl[1].Templates(ctx); err != nil || len(imgs) == 0 || imgs[0].Name != "base" {
		t.Fatalf("templates through a replica: %+v, %v", imgs, err)
	}
	// A refusal says why.
	if _, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", NodeLabels: map[string]string{"pool": "gpu"}}); err == nil ||
		!strings.Contains(err.Error(), "pool=gpu") {
		t.Fatalf("create in a pool nobody has: %v", err)
	}

	// Kill -9 node-c's agent: the others keep answering; node-c goes down
	// and its sandbox is lost.
	agents[2].kill()
	lost := onNode["node-c"]
	for _, n := range []string{"node-a", "node-b"} {
		for i := range 2 {
			if out := execOut(t, cl[i], onNode[n].ID, "echo", "still"); out != "still\n" {
				t.Fatalf("exec on %s through replica %d with node-c dead: %q", n, i+1, out)
			}
		}
	}
	waitNodes(t, cl[1], map[string]string{"node-a": "up", "node-b": "up", "node-c": "down"})
	if sb, err := cl[0].GetSandbox(ctx, lost.ID); err != nil || sb.State != tartarus.StateFailed || !strings.Contains(sb.Error, "lost") {
		t.Fatalf("sandbox of the dead node: %+v, %v", sb, err)
	}
	// The CLI shows it; and creates with a node label through the CLI.
	if out := c.cli(t, "node", "ls", "--url", c.urls[0]); !strings.Contains(out, "node-c") || !strings.Contains(out, "down (no heartbeat") {
		t.Fatalf("node ls with node-c dead:\n%s", out)
	}
	if id := strings.TrimSpace(c.cli(t, "sandbox", "create", "--url", c.urls[1], "--node-label", "node=node-b", "--memory", "128")); !strings.HasPrefix(id, "sb-") {
		t.Fatalf("create --node-label printed %q", id)
	} else if sb, err := cl[0].GetSandbox(ctx, id); err != nil || sb.Node != "node-b" {
		t.Fatalf("create --node-label node=node-b: %+v, %v", sb, err)
	}
	// Its VM outlived the agent (VMs are not the agent's children)...
	if len(qemusUnder(filepath.Join(root, "node-c"))) == 0 {
		t.Fatal("node-c's VM died with its agent; the drop below would prove nothing")
	}
	// ...until node-c comes back, learns its sandbox was settled as lost,
	// and destroys the VM.
	agents[2].start(t)
	waitNodes(t, cl[0], map[string]string{"node-a": "up", "node-b": "up", "node-c": "up"})
	waitFor(t, "node-c to drop the VM the cluster declared lost", func() bool {
		return len(qemusUnder(filepath.Join(root, "node-c"))) == 0
	})

	// Restarting an agent (an upgrade, say) keeps its sandboxes: the
	// next start adopts their VMs.
	agents[0].stop()
	agents[0].start(t)
	waitFor(t, "node-a's sandbox to answer after its agent restarted", func() bool {
		out, err := execTry(cl[1], onNode["node-a"].ID, "echo", "adopted")
		return err == nil && out == "adopted\n"
	})
	if sb, err := cl[0].GetSandbox(ctx, onNode["node-a"].ID); err != nil || sb.State != tartarus.StateRunning {
		t.Fatalf("node-a's sandbox after its agent restarted: %+v, %v", sb, err)
	}

	// Kill -9 replica 1: everything through replica 2 works, and the
	// agents fail over to it (they stay up).
	replicas[0].kill()
	sb, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 256, TimeoutS: 1800})
	if err != nil {
		t.Fatalf("create through replica 2 with replica 1 dead: %v", err)
	}
	for _, s := range []*tartarus.Sandbox{onNode["node-a"], onNode["node-b"], sb} {
		if out := execOut(t, cl[1], s.ID, "echo", "ok"); out != "ok\n" {
			t.Fatalf("exec through replica 2: %q", out)
		}
	}
	if _, err := cl[1].Pause(ctx, sb.ID); err != nil {
		t.Fatalf("pause through replica 2: %v", err)
	}
	if _, err := cl[1].Resume(ctx, sb.ID); err != nil {
		t.Fatalf("resume through replica 2: %v", err)
	}
	time.Sleep(5 * time.Second) // longer than --node-timeout: agents must heartbeat replica 2
	waitNodes(t, cl[1], map[string]string{"node-a": "up", "node-b": "up", "node-c": "up"})
	replicas[0].start(t)
	waitHealthy(t, cl[0])

	// Restart Redis, then Postgres, under a steady load of creates
	// through both replicas. Calls may fail while Postgres is down; every
	// create that was acknowledged must exist once, run, and answer.
	var mu sync.Mutex
	var acked []string
	var failures []string
	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				sb, err := cl[(w+i)%2].CreateSandbox(cctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 128, TimeoutS: 1800})
				cancel()
				mu.Lock()
				if err == nil {
					acked = append(acked, sb.ID)
				} else {
					failures = append(failures, err.Error())
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(200 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(3 * time.Second)
	redis.Stop()
	time.Sleep(2 * time.Second)
	redis.Start(t)
	time.Sleep(3 * time.Second)
	pg.Stop()
	time.Sleep(2 * time.Second)
	pg.Start(t)
	time.Sleep(5 * time.Second)
	close(stopLoad)
	wg.Wait()
	t.Logf("under restarts: %d creates acknowledged, %d refused or failed (%v)", len(acked), len(failures), firstN(failures, 3))
	if len(acked) < 2 {
		t.Fatalf("only %d creates acknowledged across the restarts", len(acked))
	}

	waitHealthy(t, cl[0])
	waitHealthy(t, cl[1])
	var list *api.SandboxList
	waitFor(t, "the sandbox list through replica 1", func() bool {
		l, err := listAll(ctx, cl[0])
		list = l
		return err == nil
	})
	seen := map[string]int{}
	running := 0
	for _, s := range list.Sandboxes {
		seen[s.ID]++
		if s.State == tartarus.StateRunning || s.State == tartarus.StateCreating {
			running++
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("sandbox %s listed %d times", id, n)
		}
	}
	for _, id := range acked {
		sb, err := cl[1].GetSandbox(ctx, id)
		if err != nil || sb.State != tartarus.StateRunning {
			t.Errorf("acknowledged sandbox %s after the restarts: %+v, %v", id, sb, err)
			continue
		}
		if out := execOut(t, cl[0], id, "echo", "alive"); out != "alive\n" {
			t.Errorf("acknowledged sandbox %s does not answer: %q", id, out)
		}
	}
	// Every QEMU belongs to a sandbox the cluster knows as live, and each
	// of those has one (creates cut off mid-way settle as failed and leave
	// no VM behind).
	waitFor(t, "QEMU processes to match the cluster's live sandboxes", func() bool {
		l, err := listAll(ctx, cl[1])
		if err != nil {
			return false
		}
		live := 0
		for _, s := range l.Sandboxes {
			if s.State == tartarus.StateRunning || s.State == tartarus.StateCreating || s.State == tartarus.StatePaused {
				live++
			}
		}
		return live == len(qemusUnder(root))
	})

	// Clean up through the API: no QEMU is left.
	l, err := listAll(ctx, cl[0])
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range l.Sandboxes {
		if !s.State.Final() {
			if _, err := cl[i%2].DeleteSandbox(ctx, s.ID); err != nil {
				t.Errorf("delete %s: %v", s.ID, err)
			}
		}
	}
	waitFor(t, "every QEMU to be gone after deleting every sandbox", func() bool { return len(qemusUnder(root)) == 0 })
}

// cli runs the tartarus CLI and returns its output.
func (c *clusterEnv) cli(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "TARTARUS_API_KEY=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tartarus %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }

func listAll(ctx context.Context, c *client.Client) (*api.SandboxList, error) {
	sbs, err := c.ListSandboxes(ctx)
	if err != nil {
		return nil, err
	}
	return &api.SandboxList{Sandboxes: sbs}, nil
}

func execOut(t testing.TB, c *client.Client, id string, cmd ...string) string {
	t.Helper()
	out, err := execTry(c, id, cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func execTry(c *client.Client, id string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := c.ExecStream(ctx, id, &api.ExecRequest{Cmd: cmd}, &out, nil)
	if err != nil {
		return "", fmt.Errorf("exec %v in %s: %w", cmd, id, err)
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("exec %v in %s: exit %d", cmd, id, res.ExitCode)
	}
	return out.String(), nil
}

func waitHealthy(t testing.TB, c *client.Client) {
	t.Helper()
	waitFor(t, "a replica to be healthy", func() bool { return c.Health(context.Background()) == nil })
}

// waitNodes waits until the replica lists the nodes in the given states.
func waitNodes(t testing.TB, c *client.Client, want map[string]string) {
	t.Helper()
	var last string
	ok := waitForQuiet(90*time.Second, func() bool {
		nl, err := c.Nodes(context.Background())
		if err != nil {
			last = err.Error()
			return false
		}
		got := map[string]string{}
		for _, n := range nl.Nodes {
			got[n.Name] = n.State
		}
		data, _ := json.Marshal(got)
		last = string(data)
		for n, st := range want {
			if got[n] != st {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("nodes never became %v; last seen %s", want, last)
	}
}

func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	if !waitForQuiet(90*time.Second, ok) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func waitForQuiet(d time.Duration, ok func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if ok() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// qemusUnder lists the live QEMU processes whose command line names dir.
func qemusUnder(dir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(cmdline, []byte("qemu")) || !bytes.Contains(cmdline, []byte(dir)) {
			continue
		}
		// A zombie's cmdline is empty, so this is a live process.
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		pids = append(pids, pid)
	}
	return pids
}

// newServicesCluster starts two replicas (with --sandbox-domain sb.test)
// and two agents that share snapshots on a real SeaweedFS and have
// networks, each agent with its own stand-in internet (namespaces of the
// test's own); node-b offers placement 700 MiB.
func newServicesCluster(t *testing.T) *clusterEnv {
	t.Helper()
	e2eBinary(t) // skips without root, QEMU or templates
	s3 := erebustest.StartSeaweedFS(t)
	ins := []*netnstest.Internet{netnstest.New(t), netnstest.New(t)}
	prefixes := []string{"tcla-", "tclb-"}
	// An agent killed -9 leaves its sandboxes' namespaces; this runs after
	// the cluster has stopped.
	t.Cleanup(func() {
		ents, _ := os.ReadDir("/run/netns")
		for _, e := range ents {
			for _, p := range prefixes {
				if strings.HasPrefix(e.Name(), p) {
					_ = exec.Command("ip", "netns", "del", e.Name()).Run()
				}
			}
		}
	})
	return newClusterWith(t, clusterOpts{replicas: 2, agents: 2,
		agentEnv:  []string{"AWS_ACCESS_KEY_ID=" + s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey},
		agentArgs: []string{"--snapshots", "s3://snapshots/cluster?endpoint=" + s3.Endpoint + "&tls=false", "--network"},
		agentFlags: func(i int) []string {
			f := []string{"--network-uplink-netns", ins[i].Uplink, "--network-dns", ins[i].DNS, "--network-netns-prefix", prefixes[i]}
			if i == 1 {
				// Room for one ember sandbox (512 MiB) and not two.
				f = append(f, "--capacity-memory-mb", "700")
			}
			return f
		},
		replicaArgs: []string{"--sandbox-domain", "sb.test"}})
}

// clusterServices checks what a single node serves beyond the lifecycle
// on a cluster of newServicesCluster: a restricted network made at replica
// 1 and changed at replica 2 holds on the guest, and its log reads at
// replica 1; a guest web server answers through replica 2 by path, by host
// and over an upgraded connection; a checkpoint and a graceful termination
// are followed at either replica; a create of a resource class is sized
// and ended at its maximum duration by its node, and a create queued on
// the full node runs when room frees; and a hibernated sandbox whose node
// died wakes on the other node at a port request, its policy kept. It
// leaves node-a's agent killed.
func clusterServices(t *testing.T, c *clusterEnv) {
	ctx, cl := context.Background(), c.cl
	waitNodes(t, cl[0], map[string]string{"node-a": "up", "node-b": "up"})

	sb, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", MemoryMB: 256, TimeoutS: 1800,
		NodeLabels: map[string]string{"node": "node-a"},
		Network:    &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: []string{"allowed.example"}, PublicPorts: true}})
	if err != nil {
		t.Fatalf("create with a restricted network at replica 1: %v", err)
	}
	id := sb.ID
	fetch := func(t *testing.T, at *client.Client, url string) string {
		t.Helper()
		return strings.TrimSpace(execOut(t, at, id, "python3", "-c", fetchPy, url))
	}
	t.Run("PolicyAcrossReplicas", func(t *testing.T) {
		if got := fetch(t, cl[0], "http://allowed.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("allowed.example: %q", got)
		}
		if got := fetch(t, cl[1], "http://blocked.example/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("blocked.example under the policy of the create: %q", got)
		}
		up, err := cl[1].SetNetwork(ctx, id, &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted,
			Allow: []string{"blocked.example"}, PublicPorts: true})
		if err != nil || up.Network == nil || !slices.Equal(up.Network.Allow, []string{"blocked.example"}) {
			t.Fatalf("update the policy at replica 2: %+v, %v", up, err)
		}
		if got := fetch(t, cl[0], "http://blocked.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("blocked.example once allowed: %q", got)
		}
		if got := fetch(t, cl[0], "http://allowed.example/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("allowed.example once left out: %q", got)
		}
		if got, err := cl[0].GetSandbox(ctx, id); err != nil || got.Network == nil || !slices.Equal(got.Network.Allow, []string{"blocked.example"}) {
			t.Errorf("the sandbox at replica 1 after the update: %+v, %v", got, err)
		}
		log, err := cl[0].NetworkLog(ctx, id)
		if err != nil {
			t.Fatalf("connection log at replica 1: %v", err)
		}
		var allowed, denied int
		for _, r := range log.Records {
			if r.Allowed {
				allowed++
			} else {
				denied++
			}
		}
		if allowed == 0 || denied == 0 {
			t.Errorf("connection log: %d allowed, %d denied; want both: %+v", allowed, denied, log.Records)
		}
	})
	get := func(t *testing.T, base, host, path string) (int, string) {
		t.Helper()
		var last error
		for range 150 { // the guest server takes a moment to listen (python under TCG)
			req, _ := http.NewRequest("GET", base+path, nil)
			if host != "" {
				req.Host = host
			}
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable {
					return resp.StatusCode, string(b)
				}
				last = fmt.Errorf("%d %s", resp.StatusCode, b)
			} else {
				last = err
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("port %s%s: %v", host, path, last)
		return 0, ""
	}
	t.Run("PortsThroughTheOtherReplica", func(t *testing.T) {
		if _, err := cl[0].ExecStream(ctx, id, &api.ExecRequest{Cmd: []string{"sh", "-c", "cat > /tmp/web.py; nohup python3 /tmp/web.py >/dev/null 2>&1 &"},
			Stdin: webPy}, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		if code, body := get(t, c.urls[1], "", "/v1/sandboxes/"+id+"/ports/8000/x/y"); code != 200 || !strings.HasPrefix(body, "guest /x/y") {
			t.Errorf("path route through replica 2: %d %q", code, body)
		}
		host := "8000-" + id + ".sb.test"
		if code, body := get(t, c.urls[1], host, "/z"); code != 200 || body != "guest /z host="+host {
			t.Errorf("host route through replica 2: %d %q", code, body)
		}
		conn, err := net.Dial("tcp", strings.TrimPrefix(c.urls[1], "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v1/sandboxes/%s/ports/8000/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", id)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade through replica 2: %v %v", resp, err)
		}
		for _, line := range []string{"hello\n", "again\n"} {
			fmt.Fprint(conn, line)
			if got, err := br.ReadString('\n'); err != nil || got != "echo "+line {
				t.Errorf("echo: %q %v", got, err)
			}
		}
	})
	t.Run("CheckpointAndTermination", func(t *testing.T) {
		other, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 128, TimeoutS: 1800,
			NodeLabels: map[string]string{"node": "node-b"}})
		if err != nil {
			t.Fatal(err)
		}
		ck, err := cl[0].Checkpoint(ctx, other.ID)
		if err != nil || ck.SandboxID != other.ID || !ck.Restorable {
			t.Fatalf("checkpoint at replica 1: %+v, %v", ck, err)
		}
		cks, err := cl[1].Checkpoints(ctx)
		if err != nil || !slices.ContainsFunc(cks, func(k *tartarus.Checkpoint) bool { return k.ID == ck.ID }) {
			t.Fatalf("checkpoints at replica 2: %+v, %v; want %s", cks, err, ck.ID)
		}
		st, err := cl[0].TerminateSandbox(ctx, other.ID, &tartarus.ShutdownOptions{GracePeriod: 2 * time.Second, Signal: tartarus.Signal("SIGTERM")})
		if err != nil || st.SandboxID != other.ID || st.Reason != tartarus.ReasonUserRequest {
			t.Fatalf("graceful delete at replica 1: %+v, %v", st, err)
		}
		waitFor(t, "the termination to complete, seen at replica 2", func() bool {
			st, err = cl[1].Termination(ctx, other.ID)
			return err == nil && st.Phase == tartarus.PhaseCompleted
		})
		if len(st.Phases) < 3 || st.ExitCode == nil {
			t.Errorf("completed termination: %+v", st)
		}
		waitFor(t, "the sandbox to be terminated at replica 1", func() bool {
			got, err := cl[0].GetSandbox(ctx, other.ID)
			return err == nil && got.State == tartarus.StateTerminated
		})
	})
	t.Run("HeatClassesAndQueue", func(t *testing.T) {
		// ember: 1 vCPU, 512 MiB; its maximum duration (30 s) ends it
		// through node-b's Thanatos with reason timeout.
		classed, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", ResourceClass: "ember",
			NodeLabels: map[string]string{"node": "node-b"}})
		if err != nil || classed.Heat == nil || classed.Heat.Class != "ember" || classed.MemoryMB != 512 || classed.CPUs != 1 {
			t.Fatalf("ember create at replica 2: %+v, %v", classed, err)
		}
		started := time.Now()
		// Under a heavy load the boot may eat most of the 30 s.
		if out, err := execTry(cl[0], classed.ID, "nproc"); err != nil && strings.Contains(err.Error(), "terminating") {
			t.Logf("nproc not checked: the ember sandbox reached its maximum duration first: %v", err)
		} else if strings.TrimSpace(out) != "1" {
			t.Errorf("nproc in an ember sandbox: %q, %v", out, err)
		}
		// node-b is full now: a cold create that may wait is queued.
		queued, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", HeatHint: "cold", QueueTimeoutS: 120,
			NodeLabels: map[string]string{"node": "node-b"}})
		if err != nil || queued.State != tartarus.StateQueued || queued.Queue == nil || queued.Queue.Position != 1 {
			t.Fatalf("create on a full node with queue_timeout_s at replica 1: %+v, %v", queued, err)
		}
		if h, err := cl[1].Heat(ctx); err != nil || h.QueueDepthByHeat["cold"] != 1 || h.ByHeat["cold"] < 1 {
			t.Errorf("heat at replica 2: %+v, %v", h, err)
		}
		waitFor(t, "the queued create to run once the ember sandbox ended", func() bool {
			got, err := cl[1].GetSandbox(ctx, queued.ID)
			return err == nil && got.State == tartarus.StateRunning
		})
		t.Logf("ember sandbox ended and the queued create ran %v after the ember create", time.Since(started))
		if st, err := cl[0].Termination(ctx, classed.ID); err != nil || st.Reason != tartarus.ReasonTimeout || st.Phase != tartarus.PhaseCompleted {
			t.Errorf("termination of the ember sandbox at its maximum duration: %+v, %v", st, err)
		}
		if got, _ := cl[0].GetSandbox(ctx, queued.ID); got.Node != "node-b" || got.Heat == nil || got.Heat.Heat != "cold" {
			t.Errorf("the admitted create: %+v", got)
		}
		if _, err := cl[1].DeleteSandbox(ctx, queued.ID); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("WakeElsewhereOnPort", func(t *testing.T) {
		if h, err := cl[1].Hibernate(ctx, id); err != nil || h.State != tartarus.StateHibernated {
			t.Fatalf("hibernate: %+v, %v", h, err)
		}
		c.agents[0].kill()
		waitNodes(t, cl[1], map[string]string{"node-a": "down", "node-b": "up"})
		start := time.Now()
		if code, body := get(t, c.urls[1], "", "/v1/sandboxes/"+id+"/ports/8000/after-sleep"); code != 200 || !strings.HasPrefix(body, "guest /after-sleep") {
			t.Fatalf("port request to a hibernated sandbox of a dead node: %d %q", code, body)
		}
		t.Logf("woke on the other node and answered in %v", time.Since(start))
		if got, _ := cl[0].GetSandbox(ctx, id); got.Node != "node-b" || got.State != tartarus.StateRunning {
			t.Fatalf("after the port request: %+v, want running on node-b", got)
		}
		// node-b's own stand-in internet has the same names: the policy
		// set at replica 2 before the sleep holds there.
		if got := fetch(t, cl[1], "http://allowed.example/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("allowed.example on node-b: %q", got)
		}
		if got := fetch(t, cl[1], "http://blocked.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("blocked.example on node-b: %q", got)
		}
	})
	if _, err := cl[0].DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "no QEMU left on node-b", func() bool { return len(qemusUnder(filepath.Join(c.root, "node-b"))) == 0 })
}
