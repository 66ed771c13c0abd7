package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// These tests drive a Cluster on a real Postgres and play the agents'
// side of the protocol by hand over HTTP, so that every message and its
// effect on the database is visible. The agent itself
// (hecatoncheir/link) has its own tests, and the end-to-end test in
// cmd/tartarus runs real agents with real VMs.

type env struct {
	t   *testing.T
	c   *Cluster
	st  *store.Postgres
	srv *httptest.Server
	dsn string
}

// newEnv makes a cluster whose nodes go down only after 10s without a
// heartbeat; quickEnv one where they go down after 300ms.
func newEnv(t *testing.T, adminDSN, db string) *env {
	t.Helper()
	return newEnvWith(t, adminDSN, db, http.DefaultClient, 10*time.Second)
}

func quickEnv(t *testing.T, adminDSN, db string) *env {
	t.Helper()
	return newEnvWith(t, adminDSN, db, http.DefaultClient, 300*time.Millisecond)
}

// newEnvWith makes a cluster env; setup runs on the Cluster before Run.
func newEnvWith(t *testing.T, adminDSN, db string, agents *http.Client, nodeTimeout time.Duration, setup ...func(*Cluster)) *env {
	t.Helper()
	dsn := pgtest.CreateDatabase(t, adminDSN, db)
	ctx := context.Background()
	st, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, err := New(Config{Store: st, NodeTimeout: nodeTimeout, PollInterval: 20 * time.Millisecond,
		CommandWait: 10 * time.Second, AgentClient: agents,
		AgentIdentity: func(r *http.Request) (string, error) {
			if n := r.Header.Get("X-Test-Agent"); n != "" {
				return n, nil
			}
			return "", errors.New("no test identity")
		}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(c)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(srv.Close)
	return &env{t: t, c: c, st: st, srv: srv, dsn: dsn}
}

// call sends one agent request and decodes the answer into out.
func (e *env) call(node, method, path string, in, out any) int {
	e.t.Helper()
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			e.t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, e.srv.URL+path, &body)
	if err != nil {
		e.t.Fatal(err)
	}
	if node != "" {
		req.Header.Set("X-Test-Agent", node)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			e.t.Fatal(err)
		}
	}
	return resp.StatusCode
}

func status(name string, memMB int, labels map[string]string, shared bool) wire.NodeStatus {
	return wire.NodeStatus{Name: name, Address: "https://127.0.0.1:1", Labels: labels, CPUs: 8, MemoryMB: memMB,
		Templates: []string{"base"}, SharedSnapshots: shared,
		Runtimes: []tartarus.Fingerprint{{Runtime: "microvm", Available: true, MaxCPUs: 8, MaxMemoryMB: memMB,
			Capabilities: tartarus.Capabilities{Snapshot: true}}}}
}

func (e *env) beat(st wire.NodeStatus, full bool, sandboxes ...wire.Report) wire.HeartbeatReply {
	e.t.Helper()
	var reply wire.HeartbeatReply
	if code := e.call(st.Name, "POST", wire.PathHeartbeat, wire.Heartbeat{Node: st, Full: full, Sandboxes: sandboxes}, &reply); code != 200 {
		e.t.Fatalf("heartbeat of %s: status %d", st.Name, code)
	}
	return reply
}

// keepBeating heartbeats st every 50ms until the returned func is called,
// so that a node of a quickEnv stays up however slow the machine is.
func (e *env) keepBeating(st wire.NodeStatus) func() {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			data, _ := json.Marshal(wire.Heartbeat{Node: st})
			if req, err := http.NewRequest("POST", e.srv.URL+wire.PathHeartbeat, bytes.NewReader(data)); err == nil {
				req.Header.Set("X-Test-Agent", st.Name)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() { close(stop); <-done }
}

// sleptOnDownNode creates a sandbox on node st (which must share its
// snapshots), has the node report it hibernated as snapshot snap, and lets
// the node go down: the sandbox is left unassigned. It returns the
// sandbox, its hibernated form and its sleep record.
func (e *env) sleptOnDownNode(st wire.NodeStatus, snap string) (*tartarus.Sandbox, tartarus.Sandbox, *hypnos.SleepRecord) {
	e.t.Helper()
	e.beat(st, true)
	stop := e.keepBeating(st)
	sb := e.createOn(st.Name)
	slept := *sb
	slept.State, slept.UpdatedAt = tartarus.StateHibernated, time.Now().UTC()
	rec := &hypnos.SleepRecord{SandboxID: sb.ID, SnapshotID: snap, SnapshotPath: "nodes/" + st.Name + "/sleep-microvm/" + snap + "/data"}
	e.call(st.Name, "POST", wire.PathReports, wire.Reports{Sandboxes: []wire.Report{{Sandbox: slept, Sleep: rec}}}, nil)
	stop()
	time.Sleep(400 * time.Millisecond)
	if err := e.c.Sweep(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	if got, err := e.c.Get(context.Background(), sb.ID); err != nil || got.Node != "" || got.State != tartarus.StateHibernated {
		e.t.Fatalf("hibernated sandbox of a down node: %+v, %v; want hibernated and unassigned", got, err)
	}
	return sb, slept, rec
}

func (e *env) poll(node string) []wire.Command {
	e.t.Helper()
	var cmds wire.Commands
	if code := e.call(node, "GET", wire.PathCommands+"?wait=2s", nil, &cmds); code != 200 {
		e.t.Fatalf("poll of %s: status %d", node, code)
	}
	return cmds.Commands
}

// finish posts the agent's result: the command's sandbox now in state to.
func (e *env) finish(cmd wire.Command, sb *tartarus.Sandbox, to tartarus.State) {
	e.t.Helper()
	done := *sb
	done.State, done.UpdatedAt = to, time.Now().UTC()
	if code := e.call(cmd.Node, "POST", wire.PathCommands+"/"+cmd.ID, wire.Result{Sandboxes: []wire.Report{{Sandbox: done}}}, nil); code != http.StatusNoContent {
		e.t.Fatalf("result of %s: status %d", cmd.ID, code)
	}
}

type created struct {
	sb  *tartarus.Sandbox
	err error
}

func (e *env) create(req *tartarus.CreateRequest) chan created {
	ch := make(chan created, 1)
	go func() {
		sb, err := e.c.Create(context.Background(), "t1", req)
		ch <- created{sb, err}
	}()
	return ch
}

// createOn drives one create through the agent that receives it and
// returns the sandbox and its node.
func (e *env) createOn(nodes ...string) *tartarus.Sandbox {
	e.t.Helper()
	ch := e.create(&tartarus.CreateRequest{Template: "base", MemoryMB: 1024})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			var cmds wire.Commands
			e.call(n, "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
			for _, cmd := range cmds.Commands {
				if cmd.Kind == wire.KindCreate {
					e.finish(cmd, cmd.Sandbox, tartarus.StateRunning)
					r := <-ch
					if r.err != nil {
						e.t.Fatal(r.err)
					}
					return r.sb
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatal("no create command reached any node")
	return nil
}

func TestCluster(t *testing.T) {
	admin := pgtest.StartPostgres(t)

	t.Run("heartbeat registers and unknown nodes are asked for a full list", func(t *testing.T) {
		e := newEnv(t, admin, "register")
		if r := e.beat(status("a", 4096, nil, false), false); !r.Resync || r.Interval <= 0 {
			t.Fatalf("first partial heartbeat: %+v, want resync and an interval", r)
		}
		if r := e.beat(status("a", 4096, nil, false), true); r.Resync {
			t.Fatalf("full heartbeat: %+v", r)
		}
		nodes, err := e.c.Nodes(context.Background())
		if err != nil || len(nodes) != 1 || nodes[0].State != "up" || nodes[0].MemoryMB != 4096 {
			t.Fatalf("nodes = %+v, %v", nodes, err)
		}
		// Another agent's certificate cannot speak for a.
		if code := e.call("b", "POST", wire.PathHeartbeat, wire.Heartbeat{Node: status("a", 1, nil, false)}, nil); code != http.StatusForbidden {
			t.Fatalf("heartbeat for another node: %d, want 403", code)
		}
		if code := e.call("", "POST", wire.PathHeartbeat, wire.Heartbeat{Node: status("a", 1, nil, false)}, nil); code != http.StatusUnauthorized {
			t.Fatalf("heartbeat without identity: %d, want 401", code)
		}
		bad := status("a", 1, nil, false)
		bad.Address = "http://plain"
		if code := e.call("a", "POST", wire.PathHeartbeat, wire.Heartbeat{Node: bad}, nil); code != http.StatusBadRequest {
			t.Fatalf("heartbeat with a plain-http address: %d, want 400", code)
		}
	})

	t.Run("creates spread over nodes and wait for the agent", func(t *testing.T) {
		e := newEnv(t, admin, "spread")
		e.beat(status("a", 4096, nil, false), true)
		e.beat(status("b", 4096, nil, false), true)
		first := e.createOn("a", "b")
		second := e.createOn("a", "b")
		if first.State != tartarus.StateRunning || second.State != tartarus.StateRunning {
			t.Fatalf("states %s, %s", first.State, second.State)
		}
		if first.Node == second.Node {
			t.Fatalf("both sandboxes on %s; spread wants two nodes", first.Node)
		}
		if first.Runtime != "microvm" {
			t.Fatalf("runtime %q, want the node's default", first.Runtime)
		}
	})

	t.Run("refusal explains itself", func(t *testing.T) {
		e := newEnv(t, admin, "refuse")
		e.beat(status("a", 4096, map[string]string{"pool": "cpu"}, false), true)
		_, err := e.c.Create(context.Background(), "t1", &tartarus.CreateRequest{Template: "base", MemoryMB: 1024,
			NodeLabels: map[string]string{"pool": "gpu"}})
		if !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.Contains(err.Error(), "pool=gpu") {
			t.Fatalf("err = %v, want resource exhausted naming pool=gpu", err)
		}
		_, err = e.c.Create(context.Background(), "t1", &tartarus.CreateRequest{Template: "python"})
		if !errors.Is(err, tartarus.ErrNotFound) || !strings.Contains(err.Error(), "python") {
			t.Fatalf("err = %v, want not found naming the template", err)
		}
	})

	t.Run("a command is delivered until its result comes, and counts once", func(t *testing.T) {
		e := newEnv(t, admin, "durable")
		e.beat(status("a", 4096, nil, false), true)
		ch := e.create(&tartarus.CreateRequest{Template: "base"})
		cmds := e.poll("a")
		again := e.poll("a") // the agent restarted before answering
		if len(cmds) != 1 || len(again) != 1 || cmds[0].ID != again[0].ID {
			t.Fatalf("deliveries %+v then %+v, want the same command twice", cmds, again)
		}
		var held wire.Commands // the agent says it has the command in hand
		if code := e.call("a", "GET", wire.PathCommands+"?wait=300ms&"+wire.QueryHave+"="+cmds[0].ID, nil, &held); code != 200 || len(held.Commands) != 0 {
			t.Fatalf("poll naming the command in hand: %d %+v, want it left out", code, held.Commands)
		}
		if cmds[0].Create == nil || cmds[0].Sandbox == nil || cmds[0].Sandbox.ID != cmds[0].SandboxID {
			t.Fatalf("create command without its sandbox: %+v", cmds[0])
		}
		e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
		e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning) // a duplicate (the first answer was lost) is harmless
		r := <-ch
		if r.err != nil || r.sb.State != tartarus.StateRunning {
			t.Fatalf("create = %+v, %v", r.sb, r.err)
		}
		if left := e.poll("a"); len(left) != 0 {
			t.Fatalf("commands left after the result: %+v", left)
		}
		// A node's error comes back with its class.
		go func() {
			for _, cmd := range e.poll("a") {
				_ = e.call("a", "POST", wire.PathCommands+"/"+cmd.ID, wire.Result{Error: &wire.Error{Code: "failed_precondition", Message: "sandbox is paused"}}, nil)
			}
		}()
		if _, err := e.c.Hibernate(context.Background(), r.sb.ID); !errors.Is(err, tartarus.ErrFailedPrecondition) {
			t.Fatalf("hibernate err = %v, want failed precondition", err)
		}
	})

	t.Run("a quiet node goes down and its sandboxes are settled", func(t *testing.T) {
		e := quickEnv(t, admin, "down")
		a := status("a", 4096, nil, true)
		e.beat(a, true)
		stopA := e.keepBeating(a)
		running := e.createOn("a")
		sleeping := e.createOn("a")
		rec := &hypnos.SleepRecord{SandboxID: sleeping.ID, SnapshotID: "snap-1", SnapshotPath: "sleep-microvm/snap-1"}
		slept := *sleeping
		slept.State, slept.UpdatedAt, slept.SnapshotBytes = tartarus.StateHibernated, time.Now().UTC(), 1234
		if code := e.call("a", "POST", wire.PathReports, wire.Reports{Node: "a", Sandboxes: []wire.Report{{Sandbox: slept, Sleep: rec}}}, nil); code != http.StatusNoContent {
			t.Fatalf("report: %d", code)
		}
		stopA()
		pending := e.create(&tartarus.CreateRequest{Template: "base"}) // a never answers it
		time.Sleep(400 * time.Millisecond)
		if err := e.c.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		n, _ := e.st.Node(context.Background(), "a")
		if n.State != store.NodeDown {
			t.Fatalf("node state %s, want down", n.State)
		}
		if r := <-pending; !errors.Is(r.err, tartarus.ErrUnavailable) {
			t.Fatalf("create on a node that went down: %v, want unavailable", r.err)
		}
		got, _ := e.c.Get(context.Background(), running.ID)
		if got.State != tartarus.StateFailed || !strings.Contains(got.Error, "lost") {
			t.Fatalf("running sandbox after its node went down: %s %q", got.State, got.Error)
		}
		kept, _ := e.c.Get(context.Background(), sleeping.ID)
		if kept.State != tartarus.StateHibernated || kept.Node != "" {
			t.Fatalf("hibernated sandbox with a shared snapshot: %s on %q, want hibernated and unassigned", kept.State, kept.Node)
		}
		// A late report from the lost node changes nothing.
		late := *running
		late.UpdatedAt = time.Now().UTC()
		e.call("a", "POST", wire.PathReports, wire.Reports{Sandboxes: []wire.Report{{Sandbox: late}}}, nil)
		if got, _ := e.c.Get(context.Background(), running.ID); got.State != tartarus.StateFailed {
			t.Fatalf("late report revived a lost sandbox: %s", got.State)
		}

		// Waking the unassigned sandbox adopts it on a node with shared
		// snapshots.
		e.beat(status("b", 4096, nil, false), true) // local snapshots only: cannot adopt
		e.beat(status("c", 4096, nil, true), true)
		defer e.keepBeating(status("b", 4096, nil, false))()
		defer e.keepBeating(status("c", 4096, nil, true))()
		woke := make(chan created, 1)
		go func() {
			sb, err := e.c.Wake(context.Background(), sleeping.ID)
			woke <- created{sb, err}
		}()
		var adopt wire.Command
		for adopt.ID == "" {
			for _, n := range []string{"b", "c"} {
				var cmds wire.Commands
				e.call(n, "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
				for _, c := range cmds.Commands {
					if c.Kind == wire.KindAdopt {
						adopt = c
					}
				}
			}
		}
		if adopt.Node != "c" || adopt.Sleep == nil || adopt.Sleep.SnapshotID != "snap-1" || adopt.Sandbox == nil {
			t.Fatalf("adopt command %+v", adopt)
		}
		e.finish(adopt, adopt.Sandbox, tartarus.StateRunning)
		w := <-woke
		if w.err != nil || w.sb.State != tartarus.StateRunning || w.sb.Node != "c" {
			t.Fatalf("wake = %+v, %v", w.sb, w.err)
		}

		// a comes back: it must drop both, keeping the snapshot c woke from.
		r := e.beat(a, false)
		if !r.Resync {
			t.Fatal("a node back from down was not asked for a full list")
		}
		r = e.beat(a, true, wire.Report{Sandbox: *running}, wire.Report{Sandbox: slept, Sleep: rec})
		drops := map[string]wire.Drop{}
		for _, d := range r.Drop {
			drops[d.SandboxID] = d
		}
		if d, ok := drops[running.ID]; !ok || d.KeepSnapshot {
			t.Fatalf("drops %+v: want %s dropped with its snapshot", r.Drop, running.ID)
		}
		if d, ok := drops[sleeping.ID]; !ok || !d.KeepSnapshot {
			t.Fatalf("drops %+v: want %s dropped keeping the shared snapshot", r.Drop, sleeping.ID)
		}
	})

	t.Run("a node back before anyone woke its hibernated sandbox reclaims it", func(t *testing.T) {
		e := quickEnv(t, admin, "reclaim")
		a := status("a", 4096, nil, true)
		sb, slept, rec := e.sleptOnDownNode(a, "snap-2")
		r := e.beat(a, true, wire.Report{Sandbox: slept, Sleep: rec})
		if len(r.Drop) != 0 {
			t.Fatalf("drops %+v, want none: a reclaims its sandbox", r.Drop)
		}
		if got, _ := e.c.Get(context.Background(), sb.ID); got.Node != "a" || got.State != tartarus.StateHibernated {
			t.Fatalf("after a came back: %s on %q, want hibernated on a", got.State, got.Node)
		}
	})

	t.Run("a node refusing to adopt passes the sandbox to another", func(t *testing.T) {
		e := quickEnv(t, admin, "refuse-adopt")
		a := status("a", 4096, nil, true)
		sb, _, _ := e.sleptOnDownNode(a, "snap-4")
		c, d := status("c", 4096, nil, true), status("d", 4096, nil, true)
		e.beat(c, true)
		e.beat(d, true)
		defer e.keepBeating(c)()
		defer e.keepBeating(d)()
		woke := make(chan created, 1)
		go func() {
			sb, err := e.c.Wake(context.Background(), sb.ID)
			woke <- created{sb, err}
		}()
		var nodes []string
		for len(nodes) < 2 {
			for _, n := range []string{"c", "d"} {
				var cmds wire.Commands
				e.call(n, "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
				for _, cmd := range cmds.Commands {
					nodes = append(nodes, n)
					if len(nodes) == 1 { // the first node refuses
						e.call(n, "POST", wire.PathCommands+"/"+cmd.ID, wire.Result{Error: &wire.Error{Code: "failed_precondition", Message: "another build"}}, nil)
					} else {
						e.finish(cmd, cmd.Sandbox, tartarus.StateRunning)
					}
				}
			}
		}
		w := <-woke
		if nodes[0] == nodes[1] || w.err != nil || w.sb.Node != nodes[1] || w.sb.State != tartarus.StateRunning {
			t.Fatalf("adopt went to %v; wake = %+v, %v", nodes, w.sb, w.err)
		}
	})

	t.Run("destroying an unassigned hibernated sandbox discards its shared snapshot", func(t *testing.T) {
		e := quickEnv(t, admin, "discard")
		a := status("a", 4096, nil, true)
		sb, _, _ := e.sleptOnDownNode(a, "snap-3")
		c := status("c", 4096, nil, true)
		e.beat(c, true)
		defer e.keepBeating(c)()
		done := make(chan created, 1)
		go func() {
			sb, err := e.c.Destroy(context.Background(), sb.ID)
			done <- created{sb, err}
		}()
		cmds := e.poll("c")
		if len(cmds) != 1 || cmds[0].Kind != wire.KindDiscard || cmds[0].Sleep == nil || cmds[0].Sleep.SnapshotID != "snap-3" {
			t.Fatalf("commands to c: %+v, want one discard of snap-3", cmds)
		}
		e.call("c", "POST", wire.PathCommands+"/"+cmds[0].ID, wire.Result{}, nil)
		if r := <-done; r.err != nil || r.sb.State != tartarus.StateTerminated {
			t.Fatalf("destroy: %+v, %v", r.sb, r.err)
		}
	})

	t.Run("a stream to a node that goes down is cut with the reason", func(t *testing.T) {
		started := make(chan struct{}, 1)
		hang := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get(wire.TenantHeader) != "t1" {
				http.Error(w, "no tenant", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			started <- struct{}{}
			<-r.Context().Done() // a node that stopped answering
		}))
		defer hang.Close()
		e := newEnvWith(t, admin, "kill", hang.Client(), 300*time.Millisecond)
		a := status("a", 4096, nil, false)
		a.Address = hang.URL
		e.beat(a, true)
		stopA := e.keepBeating(a)
		sb := e.createOn("a")
		errc := make(chan error, 1)
		go func() {
			_, err := e.c.Exec(context.Background(), sb.ID, &tartarus.ExecRequest{Cmd: []string{"sleep", "1000"}})
			errc <- err
		}()
		<-started
		stopA()
		time.Sleep(400 * time.Millisecond) // a's heartbeats stopped
		if err := e.c.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, tartarus.ErrUnavailable) || !strings.Contains(err.Error(), "node a went down") {
				t.Fatalf("exec cut by the node going down: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("exec to a dead node still hangs after it was marked down")
		}
	})

	t.Run("a create sent again with its Idempotency-Key makes nothing new", func(t *testing.T) {
		e := newEnv(t, admin, "idem")
		e.beat(status("a", 4096, nil, false), true)
		req := func() *tartarus.CreateRequest {
			return &tartarus.CreateRequest{Template: "base", IdempotencyKey: "k-1"}
		}
		first := e.create(req())
		cmds := e.poll("a")
		again := e.create(req()) // the client lost the first answer and retries at once
		time.Sleep(100 * time.Millisecond)
		e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
		r1, r2 := <-first, <-again
		if r1.err != nil || r2.err != nil || r1.sb.ID != r2.sb.ID || r2.sb.State != tartarus.StateRunning {
			t.Fatalf("first %+v %v, again %+v %v: want the same running sandbox", r1.sb, r1.err, r2.sb, r2.err)
		}
		if left := e.poll("a"); len(left) != 0 {
			t.Fatalf("the retry made commands: %+v", left)
		}
		// Another tenant's key is its own.
		other := make(chan created, 1)
		go func() {
			sb, err := e.c.Create(context.Background(), "t2", req())
			other <- created{sb, err}
		}()
		if cmds := e.poll("a"); len(cmds) != 1 {
			r := <-other
			t.Fatalf("another tenant's create with the same key: %d commands, want 1 (create: %+v %v)", len(cmds), r.sb, r.err)
		} else {
			e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
		}
		if r := <-other; r.err != nil || r.sb.ID == r1.sb.ID {
			t.Fatalf("other tenant: %+v %v", r.sb, r.err)
		}
		if _, err := e.c.Create(context.Background(), "t1", &tartarus.CreateRequest{IdempotencyKey: "has space"}); !errors.Is(err, tartarus.ErrInvalid) {
			t.Fatalf("bad key: %v", err)
		}
	})

	t.Run("only a down node without live sandboxes can be forgotten", func(t *testing.T) {
		e := quickEnv(t, admin, "forget")
		a, b := status("a", 4096, nil, false), status("b", 4096, nil, false)
		e.beat(a, true)
		e.beat(b, true)
		stopA := e.keepBeating(a)
		sb := e.createOn("a")
		stopA()
		ctx := context.Background()
		if err := e.c.ForgetNode(ctx, "b"); !errors.Is(err, tartarus.ErrFailedPrecondition) || !strings.Contains(err.Error(), "is up") {
			t.Fatalf("forget an up node: %v", err)
		}
		time.Sleep(400 * time.Millisecond)
		if err := e.c.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if err := e.c.ForgetNode(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("forget an unknown node: %v", err)
		}
		// a's sandbox was settled as lost when it went down, so a holds
		// nothing live any more.
		if got, _ := e.c.Get(ctx, sb.ID); got.State != tartarus.StateFailed {
			t.Fatalf("sandbox of a down node: %s", got.State)
		}
		if err := e.c.ForgetNode(ctx, "a"); err != nil {
			t.Fatalf("forget a down node: %v", err)
		}
		nodes, _ := e.c.Nodes(ctx)
		for _, n := range nodes {
			if n.Name == "a" {
				t.Fatalf("forgotten node still listed: %+v", n)
			}
		}
		// Coming back, it registers anew.
		if r := e.beat(a, false); !r.Resync {
			t.Fatalf("a forgotten node's heartbeat: %+v, want a resync", r)
		}
	})

	t.Run("creates take the node's warm sandboxes, each once", func(t *testing.T) {
		e := newEnv(t, admin, "warm")
		a := status("a", 4096, nil, false)
		a.Warm = map[string][]string{"microvm/base/256/1": {"sb-warm1", "sb-warm2"}, "microvm/base/512/1": {"sb-big"}}
		e.beat(a, true)
		var ids []string
		for range 3 {
			ch := e.create(&tartarus.CreateRequest{Template: "base"})
			cmds := e.poll("a")
			if len(cmds) != 1 || cmds[0].SandboxID != cmds[0].Sandbox.ID {
				t.Fatalf("create commands %+v", cmds)
			}
			e.finish(cmds[0], cmds[0].Sandbox, tartarus.StateRunning)
			r := <-ch
			if r.err != nil || r.sb.ID != cmds[0].SandboxID {
				t.Fatalf("create = %+v, %v", r.sb, r.err)
			}
			ids = append(ids, r.sb.ID)
		}
		if ids[0] != "sb-warm1" || ids[1] != "sb-warm2" || strings.HasPrefix(ids[2], "sb-warm") || ids[2] == "sb-big" {
			t.Fatalf("sandbox ids %v: want the two warm ones of this shape, then a new one", ids)
		}
	})

	t.Run("fork records the copies", func(t *testing.T) {
		e := newEnv(t, admin, "fork")
		e.beat(status("a", 4096, nil, false), true)
		parent := e.createOn("a")
		type forked struct {
			sbs []*tartarus.Sandbox
			err error
		}
		ch := make(chan forked, 1)
		go func() {
			sbs, err := e.c.Fork(context.Background(), parent.ID, 2)
			ch <- forked{sbs, err}
		}()
		cmds := e.poll("a")
		if len(cmds) != 1 || cmds[0].Kind != wire.KindFork || len(cmds[0].ForkIDs) != 2 {
			t.Fatalf("fork command %+v", cmds)
		}
		res := wire.Result{Sandboxes: []wire.Report{{Sandbox: *parent}}}
		for _, id := range cmds[0].ForkIDs {
			cp := *parent
			cp.ID, cp.UpdatedAt = id, time.Now().UTC()
			res.Sandboxes = append(res.Sandboxes, wire.Report{Sandbox: cp})
		}
		e.call("a", "POST", wire.PathCommands+"/"+cmds[0].ID, res, nil)
		f := <-ch
		if f.err != nil || len(f.sbs) != 2 || f.sbs[0].ID != cmds[0].ForkIDs[0] || f.sbs[1].Node != "a" {
			t.Fatalf("fork = %+v, %v", f.sbs, f.err)
		}
		if _, err := e.c.Fork(context.Background(), parent.ID, 17); !errors.Is(err, tartarus.ErrInvalid) {
			t.Fatalf("fork of 17: %v", err)
		}
	})
}

func TestAgentName(t *testing.T) {
	for _, tc := range []struct {
		typ, name string
		ok        bool
	}{
		{"agent", "node-a", true},
		{"service", "node-a", false},
		{"agent", "Node-A", false},
		{"agent", "", false},
	} {
		_, err := AgentName(tc.typ, tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("AgentName(%q, %q) = %v", tc.typ, tc.name, err)
		}
	}
}

// TestDatabaseOutageIsNotANodeOutage stops Postgres for longer than the
// node timeout: heartbeats cannot land meanwhile, and no node may be
// marked down for that once the database is back.
func TestDatabaseOutageIsNotANodeOutage(t *testing.T) {
	pg := pgtest.StartPostgresServer(t)
	e := quickEnv(t, pg.DSN, "outage")
	a := status("a", 4096, nil, false)
	e.beat(a, true)
	stopA := e.keepBeating(a)
	sb := e.createOn("a")
	stopA()
	e.beat(a, false)
	pg.Stop()
	time.Sleep(time.Second) // > NodeTimeout (300ms), while replicas sweep
	pg.Start(t)
	for range 5 {
		_ = e.c.Sweep(context.Background())
		time.Sleep(20 * time.Millisecond)
	}
	if n, err := e.st.Node(context.Background(), "a"); err != nil || n.State != store.NodeUp {
		if n == nil {
			t.Fatal(err)
		}
		t.Fatalf("node after a database outage: %v (%s), %v; want still up", n.State, n.DownReason, err)
	}
	if got, _ := e.c.Get(context.Background(), sb.ID); got.State != tartarus.StateRunning {
		t.Fatalf("sandbox after a database outage: %s", got.State)
	}
	// A node that really stops heartbeating still goes down.
	time.Sleep(400 * time.Millisecond)
	if err := e.c.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.st.Node(context.Background(), "a"); n.State != store.NodeDown {
		t.Fatalf("node that stopped heartbeating: %s, want down", n.State)
	}
}
