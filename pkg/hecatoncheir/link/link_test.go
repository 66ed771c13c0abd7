package link

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// certs are a development CA and the certificates a cluster uses.
type certs struct {
	ca     *cerberus.CertKey
	pool   *x509.CertPool
	server *cerberus.CertKey // also the servers' client certificate
	agent  *cerberus.CertKey // client and node API server certificate
}

func newCerts(t testing.TB) *certs {
	t.Helper()
	now := time.Now()
	ca, err := cerberus.NewDevCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer([]string{"127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ca.IssueNode("agent:node-1", "", "", []string{"127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &certs{ca: ca, pool: pool, server: srv, agent: agent}
}

func tlsCert(t testing.TB, ck *cerberus.CertKey) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(ck.CertPEM, ck.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// server is the server side of the wire protocol, as far as the tests
// need it: it keeps heartbeats, reports and results, and delivers pending
// commands on every poll until their result arrives.
type server struct {
	t   testing.TB
	srv *httptest.Server

	mu         sync.Mutex
	heartbeats []wire.Heartbeat
	reply      func(n int) wire.HeartbeatReply // answer to heartbeat n (0 first)
	pending    []wire.Command
	delivered  map[string]int
	results    map[string][]wire.Result
	failPosts  int // result posts still to answer 500
	posts      int
	reports    []wire.Report
	kick       chan struct{}
	agentNames []string        // the agents' certificate names, as seen
	had        map[string]bool // command ids polls named in wire.QueryHave
}

func newServer(t testing.TB, c *certs) *server {
	t.Helper()
	s := &server{t: t, delivered: map[string]int{}, results: map[string][]wire.Result{}, kick: make(chan struct{}, 1),
		had: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+wire.PathHeartbeat, s.heartbeat)
	mux.HandleFunc("GET "+wire.PathCommands, s.commands)
	mux.HandleFunc("POST "+wire.PathCommands+"/{id}", s.takeResult)
	mux.HandleFunc("POST "+wire.PathReports, s.report)
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{tlsCert(t, c.server)},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: c.pool}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *server) heartbeat(w http.ResponseWriter, r *http.Request) {
	var hb wire.Heartbeat
	if err := json.NewDecoder(r.Body).Decode(&hb); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.agentNames = append(s.agentNames, r.TLS.PeerCertificates[0].Subject.CommonName)
	n := len(s.heartbeats)
	s.heartbeats = append(s.heartbeats, hb)
	reply := wire.HeartbeatReply{Interval: 20 * time.Millisecond}
	if s.reply != nil {
		reply = s.reply(n)
	}
	s.mu.Unlock()
	_ = json.NewEncoder(w).Encode(reply)
}

func (s *server) commands(w http.ResponseWriter, r *http.Request) {
	wait, err := time.ParseDuration(r.URL.Query().Get("wait"))
	if err != nil {
		http.Error(w, "bad wait", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	for _, id := range strings.Split(r.URL.Query().Get(wire.QueryHave), ",") {
		s.had[id] = true
	}
	s.mu.Unlock()
	// Like a server that ignores QueryHave: pending commands are
	// delivered whether the agent has them or not.
	deadline := time.After(wait)
	for {
		s.mu.Lock()
		cmds := slices.Clone(s.pending)
		for _, c := range cmds {
			s.delivered[c.ID]++
		}
		s.mu.Unlock()
		if len(cmds) > 0 {
			_ = json.NewEncoder(w).Encode(wire.Commands{Commands: cmds})
			return
		}
		select {
		case <-s.kick:
		case <-deadline:
			_ = json.NewEncoder(w).Encode(wire.Commands{})
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (s *server) takeResult(w http.ResponseWriter, r *http.Request) {
	var res wire.Result
	if err := json.NewDecoder(r.Body).Decode(&res); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.posts++
	if s.failPosts > 0 {
		s.failPosts--
		http.Error(w, "database unavailable", http.StatusServiceUnavailable)
		return
	}
	s.results[id] = append(s.results[id], res)
	s.pending = slices.DeleteFunc(s.pending, func(c wire.Command) bool { return c.ID == id })
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) report(w http.ResponseWriter, r *http.Request) {
	var rep wire.Reports
	if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reports = append(s.reports, rep.Sandboxes...)
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// result returns the first result posted for command id, waiting for it.
func (s *server) result(id string) wire.Result {
	s.t.Helper()
	s.waitFor("the result of "+id, func() bool { return len(s.results[id]) > 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.results[id][0]
}

// send queues commands for delivery.
func (s *server) send(cmds ...wire.Command) {
	s.mu.Lock()
	s.pending = append(s.pending, cmds...)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// waitFor polls cond (under the server's lock) until it holds.
func (s *server) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.t.Fatalf("timed out waiting for %s", what)
}

// node is a real node agent over the fake runtime (with snapshots), a
// watched SQLite store and a local snapshot store, and its link.
type node struct {
	agent  *hecatoncheir.Agent
	link   *Link
	store  store.Store
	clock  *clock.Fake // the agent's: expiry
	rt     *fake.Runtime
	blobs  erebus.Store
	gate   chan struct{} // while not nil, boots of sandboxes named sb-slow* wait for it
	starts sync.Map      // id → *atomic.Int32 boots
}

// nodeOpts vary a test node: its name, and a snapshot store shared with
// other nodes (under a key prefix of its own).
type nodeOpts struct {
	name   string
	blobs  erebus.Store
	prefix string
}

func newNode(t testing.TB, c *certs, servers ...string) *node {
	t.Helper()
	return newNodeWith(t, c, nodeOpts{}, servers...)
}

func newNodeWith(t testing.TB, c *certs, o nodeOpts, servers ...string) *node {
	t.Helper()
	if o.name == "" {
		o.name = "node-1"
	}
	dir := t.TempDir()
	sql, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sql.Close() })
	st, changes := Watch(sql)
	n := &node{store: st, clock: clock.NewFake(time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)), gate: make(chan struct{})}
	n.rt, err = fake.New(fake.Config{StateDir: filepath.Join(dir, "vms"),
		Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true},
		StartHook: func(ctx context.Context, id string) error {
			cnt, _ := n.starts.LoadOrStore(id, new(atomic.Int32))
			cnt.(*atomic.Int32).Add(1)
			if strings.HasPrefix(id, "sb-slow") {
				<-n.gate
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if o.blobs == nil {
		if o.blobs, err = erebus.NewLocal(filepath.Join(dir, "snapshots")); err != nil {
			t.Fatal(err)
		}
	}
	n.blobs = o.blobs
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	n.agent, err = hecatoncheir.New(hecatoncheir.Config{Node: o.name, Store: st, Runtimes: []tartarus.Runtime{n.rt},
		Images: catalog{"base": {Name: "base", Digest: "sha256:1234abcd"}}, Clock: n.clock,
		Snapshots: o.blobs, SnapshotPrefix: o.prefix, SnapshotTempDir: filepath.Join(dir, "tmp")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.agent.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.link, err = New(Config{Agent: n.agent, Changes: changes, Servers: servers,
		TLS:       &tls.Config{Certificates: []tls.Certificate{tlsCert(t, c.agent)}, RootCAs: c.pool},
		ClientCAs: c.pool, Address: "https://127.0.0.1:7800", Labels: map[string]string{"pool": "gpu"},
		SharedSnapshots: true, HeartbeatInterval: 20 * time.Millisecond, PollWait: 300 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// run runs the link until the test ends or stop is called.
func (n *node) run(t testing.TB) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = n.link.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			select {
			case <-n.gate:
			default:
				close(n.gate)
			}
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

func (n *node) boots(id string) int32 {
	if c, ok := n.starts.Load(id); ok {
		return c.(*atomic.Int32).Load()
	}
	return 0
}

type catalog map[string]*tartarus.Image

func (c catalog) List(context.Context) ([]*tartarus.Image, error) {
	var out []*tartarus.Image
	for _, img := range c {
		out = append(out, img)
	}
	return out, nil
}

func (c catalog) Get(_ context.Context, name string) (*tartarus.Image, error) {
	if img, ok := c[name]; ok {
		return img, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
}

func createCmd(cmdID, sbID string) wire.Command {
	now := time.Now().UTC()
	return wire.Command{ID: cmdID, Node: "node-1", Kind: wire.KindCreate, SandboxID: sbID, CreatedAt: now,
		Sandbox: &tartarus.Sandbox{ID: sbID, Tenant: "acme", CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		Create:  &tartarus.CreateRequest{Template: "base"}}
}

func TestHeartbeats(t *testing.T) {
	ctx := context.Background()
	c := newCerts(t)
	s := newServer(t, c)
	n := newNode(t, c, s.srv.URL)
	running, err := n.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	asleep, err := n.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.agent.Hibernate(ctx, asleep.ID); err != nil {
		t.Fatal(err)
	}
	s.reply = func(i int) wire.HeartbeatReply {
		return wire.HeartbeatReply{Interval: 20 * time.Millisecond, Resync: i == 2}
	}
	n.run(t)
	s.waitFor("five heartbeats", func() bool { return len(s.heartbeats) >= 5 })

	s.mu.Lock()
	defer s.mu.Unlock()
	first := s.heartbeats[0]
	st := first.Node
	if !first.Full || st.Name != "node-1" || st.Address != "https://127.0.0.1:7800" || st.Labels["pool"] != "gpu" ||
		!st.SharedSnapshots || st.CPUs <= 0 || st.MemoryMB <= 0 || st.Sandboxes != 2 ||
		len(st.Runtimes) != 1 || st.Runtimes[0].Runtime != "fake" || !slices.Equal(st.Templates, []string{"base"}) ||
		st.StartedAt.IsZero() {
		t.Errorf("first heartbeat = %+v", first)
	}
	got := map[string]wire.Report{}
	for _, r := range first.Sandboxes {
		got[r.Sandbox.ID] = r
	}
	if r := got[running.ID]; r.Sandbox.State != tartarus.StateRunning || r.Sleep != nil {
		t.Errorf("running sandbox reported as %+v", r)
	}
	if r := got[asleep.ID]; r.Sandbox.State != tartarus.StateHibernated || r.Sleep == nil || r.Sleep.SnapshotPath == "" {
		t.Errorf("hibernated sandbox reported as %+v", r)
	}
	var full []bool
	for _, hb := range s.heartbeats[:5] {
		full = append(full, hb.Full)
	}
	// The third reply asks for a resync: the fourth heartbeat is full.
	if want := []bool{true, false, false, true, false}; !slices.Equal(full, want) {
		t.Errorf("full heartbeats = %v, want %v", full, want)
	}
	if s.agentNames[0] != "agent:node-1" {
		t.Errorf("the agent presented %q", s.agentNames[0])
	}
}

func TestCreateCommandOnceAndInOrder(t *testing.T) {
	c := newCerts(t)
	s := newServer(t, c)
	n := newNode(t, c, s.srv.URL)
	n.run(t)

	// A slow create is delivered again and again while it boots.
	s.send(createCmd("cmd-1", "sb-slow-1"))
	s.waitFor("redeliveries", func() bool { return s.delivered["cmd-1"] >= 3 })
	// Meanwhile another sandbox's commands are not held up, and run in
	// the order they were sent.
	s.send(createCmd("cmd-2", "sb-quick"),
		wire.Command{ID: "cmd-3", Kind: wire.KindPause, SandboxID: "sb-quick"},
		wire.Command{ID: "cmd-4", Kind: wire.KindHibernate, SandboxID: "sb-quick"},
		wire.Command{ID: "cmd-5", Kind: wire.KindWake, SandboxID: "sb-quick"})
	s.waitFor("sb-quick's commands", func() bool { return len(s.results["cmd-5"]) > 0 })
	s.mu.Lock()
	if len(s.results["cmd-1"]) != 0 {
		t.Errorf("slow create finished early")
	}
	for id, want := range map[string]tartarus.State{"cmd-2": tartarus.StateRunning, "cmd-3": tartarus.StatePaused,
		"cmd-4": tartarus.StateHibernated, "cmd-5": tartarus.StatePaused} {
		res := s.results[id]
		if len(res) != 1 || res[0].Error != nil || len(res[0].Sandboxes) != 1 || res[0].Sandboxes[0].Sandbox.State != want {
			t.Errorf("%s: results %+v, want one with the sandbox %s", id, res, want)
		}
	}
	if r := s.results["cmd-4"]; len(r) == 1 && len(r[0].Sandboxes) == 1 && r[0].Sandboxes[0].Sleep == nil {
		t.Errorf("hibernate result has no sleep record")
	}
	s.mu.Unlock()

	close(n.gate)
	s.waitFor("the slow create's result", func() bool { return len(s.results["cmd-1"]) > 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	res := s.results["cmd-1"]
	if len(res) != 1 || res[0].Error != nil || res[0].Sandboxes[0].Sandbox.ID != "sb-slow-1" ||
		res[0].Sandboxes[0].Sandbox.State != tartarus.StateRunning || res[0].Sandboxes[0].Sandbox.Tenant != "acme" {
		t.Errorf("create result = %+v", res)
	}
	if !s.had["cmd-1"] {
		t.Errorf("no poll said the agent had cmd-1 while it ran")
	}
	if b := n.boots("sb-slow-1"); b != 1 {
		t.Errorf("sb-slow-1 booted %d times for %d deliveries", b, s.delivered["cmd-1"])
	}
}

func TestForkAndAdoptCommands(t *testing.T) {
	ctx := context.Background()
	c := newCerts(t)
	s := newServer(t, c)
	n1 := newNodeWith(t, c, nodeOpts{name: "node-1", prefix: "nodes/node-1/"}, s.srv.URL)
	stop1 := n1.run(t)
	s.send(createCmd("cmd-1", "sb-parent"),
		wire.Command{ID: "cmd-2", Kind: wire.KindFork, SandboxID: "sb-parent", ForkIDs: []string{"sb-copy-1", "sb-copy-2"}})
	fork := s.result("cmd-2")
	var ids []string
	for _, r := range fork.Sandboxes {
		ids = append(ids, r.Sandbox.ID)
	}
	if fork.Error != nil || !slices.Equal(ids, []string{"sb-parent", "sb-copy-1", "sb-copy-2"}) {
		t.Errorf("fork result = %+v", fork)
	}
	s.send(wire.Command{ID: "cmd-3", Kind: wire.KindHibernate, SandboxID: "sb-copy-2"})
	res := s.result("cmd-3")
	if res.Error != nil || len(res.Sandboxes) != 1 || res.Sandboxes[0].Sleep == nil {
		t.Fatalf("hibernate result = %+v", res)
	}
	slept := res.Sandboxes[0]

	// node-1 goes away; node-2, sharing the snapshot store, adopts the
	// hibernated copy from the server's record of it.
	stop1()
	n2 := newNodeWith(t, c, nodeOpts{name: "node-2", blobs: n1.blobs, prefix: "nodes/node-2/"}, s.srv.URL)
	n2.run(t)
	s.send(wire.Command{ID: "cmd-4", Node: "node-2", Kind: wire.KindAdopt, SandboxID: "sb-copy-2",
		Sandbox: &slept.Sandbox, Sleep: slept.Sleep})
	adopt := s.result("cmd-4")
	if adopt.Error != nil || len(adopt.Sandboxes) != 1 || adopt.Sandboxes[0].Sandbox.Node != "node-2" ||
		adopt.Sandboxes[0].Sandbox.State != tartarus.StateRunning {
		t.Fatalf("adopt result = %+v", adopt)
	}
	if _, err := n2.agent.Exec(ctx, "sb-copy-2", &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
		t.Errorf("exec in the adopted sandbox: %v", err)
	}
}

func TestCommandErrorsAndDestroyOfUnknown(t *testing.T) {
	c := newCerts(t)
	s := newServer(t, c)
	n := newNode(t, c, s.srv.URL)
	n.run(t)
	s.send(wire.Command{ID: "cmd-1", Kind: wire.KindPause, SandboxID: "sb-nowhere"},
		wire.Command{ID: "cmd-2", Kind: wire.KindDestroy, SandboxID: "sb-nowhere",
			Sandbox: &tartarus.Sandbox{ID: "sb-nowhere", State: tartarus.StateRunning}},
		wire.Command{ID: "cmd-3", Kind: "teleport", SandboxID: "sb-x"},
		wire.Command{ID: "cmd-4", Kind: wire.KindCreate, SandboxID: "sb-y"})
	s.waitFor("four results", func() bool { return len(s.results) == 4 })
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, code := range map[string]string{"cmd-1": "not_found", "cmd-3": "not_implemented", "cmd-4": "invalid_argument"} {
		if r := s.results[id][0]; r.Error == nil || r.Error.Code != code {
			t.Errorf("%s: error %+v, want %s", id, r.Error, code)
		}
	}
	if r := s.results["cmd-2"][0]; r.Error != nil || len(r.Sandboxes) != 1 || r.Sandboxes[0].Sandbox.State != tartarus.StateTerminated {
		t.Errorf("destroy of an unknown sandbox: %+v, want done, terminated", r)
	}
}

func TestResultPostRetried(t *testing.T) {
	c := newCerts(t)
	s := newServer(t, c)
	s.failPosts = 2
	n := newNode(t, c, s.srv.URL)
	n.run(t)
	s.send(createCmd("cmd-1", "sb-1"))
	s.waitFor("the result", func() bool { return len(s.results["cmd-1"]) > 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.posts != 3 || len(s.results["cmd-1"]) != 1 {
		t.Errorf("%d posts, %d results; want 3 posts (two refused), one result", s.posts, len(s.results["cmd-1"]))
	}
	if b := n.boots("sb-1"); b != 1 {
		t.Errorf("sb-1 booted %d times", b)
	}
}

func TestReportsOfExpiry(t *testing.T) {
	ctx := context.Background()
	c := newCerts(t)
	s := newServer(t, c)
	n := newNode(t, c, s.srv.URL)
	n.run(t)
	sb, err := n.agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 60})
	if err != nil {
		t.Fatal(err)
	}
	n.clock.Advance(2 * time.Minute)
	if ids, err := n.agent.Expire(ctx); err != nil || !slices.Equal(ids, []string{sb.ID}) {
		t.Fatalf("Expire: %v, %v", ids, err)
	}
	s.waitFor("the expiry's report", func() bool {
		for _, r := range s.reports {
			if r.Sandbox.ID == sb.ID && r.Sandbox.State == tartarus.StateTerminated {
				return true
			}
		}
		return false
	})
}

func TestDrop(t *testing.T) {
	ctx := context.Background()
	c := newCerts(t)
	s := newServer(t, c)
	n := newNode(t, c, s.srv.URL)
	sb, err := n.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	s.reply = func(i int) wire.HeartbeatReply {
		return wire.HeartbeatReply{Interval: 20 * time.Millisecond,
			Drop: []wire.Drop{{SandboxID: sb.ID, Reason: "declared lost"}}}
	}
	n.run(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := n.store.Get(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == tartarus.StateTerminated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox still %s after its drop", got.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if list, _ := n.rt.List(ctx); len(list) != 0 {
		t.Errorf("instances left after drop: %v", list)
	}
	s.waitFor("more heartbeats", func() bool { return len(s.heartbeats) >= 6 })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.reports {
		if r.Sandbox.ID == sb.ID && r.Sandbox.State.Final() {
			t.Errorf("the drop was reported as news: %+v", r.Sandbox)
		}
	}
}

func TestFailover(t *testing.T) {
	c := newCerts(t)
	s := newServer(t, c)
	// A server that is gone: its port refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://" + ln.Addr().String()
	ln.Close()
	n := newNode(t, c, dead, s.srv.URL)
	n.run(t)
	s.send(createCmd("cmd-1", "sb-1"))
	s.waitFor("heartbeats and the result through the second server", func() bool {
		return len(s.heartbeats) >= 2 && len(s.results["cmd-1"]) == 1
	})
}

func TestNodeAPI(t *testing.T) {
	ctx := context.Background()
	c := newCerts(t)
	n := newNode(t, c, "https://127.0.0.1:1")
	sb, err := n.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(n.link.Handler())
	// As `tartarus agent` serves it, but letting a request without a
	// certificate through the handshake, to see the handler refuse it.
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{tlsCert(t, c.agent)},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.pool}
	srv.StartTLS()
	defer srv.Close()

	other, err := c.ca.IssueClient("service:deployer", "", "", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		cert   *cerberus.CertKey
		tenant string
		status int
	}{
		{"server certificate", c.server, "acme", http.StatusOK},
		{"another service (a tenant's client certificate, say)", other, "acme", http.StatusForbidden},
		{"agent certificate", c.agent, "acme", http.StatusForbidden},
		{"no certificate", nil, "acme", http.StatusUnauthorized},
		{"no tenant", c.server, "", http.StatusBadRequest},
		{"another tenant", c.server, "umbrella", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: c.pool}
			if tt.cert != nil {
				cfg.Certificates = []tls.Certificate{tlsCert(t, tt.cert)}
			}
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
			body, _ := json.Marshal(api.ExecRequest{Cmd: []string{"sh", "-c", "echo hi"}})
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/sandboxes/"+sb.ID+"/exec", bytes.NewReader(body))
			if tt.tenant != "" {
				req.Header.Set(wire.TenantHeader, tt.tenant)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, out, tt.status)
			}
			if tt.status != http.StatusOK {
				return
			}
			var res api.ExecResponse
			if err := json.Unmarshal(out, &res); err != nil || res.ExitCode != 0 || res.Stdout != "hi\n" {
				t.Errorf("exec answered %s (%v)", out, err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	a := &hecatoncheir.Agent{}
	pool := x509.NewCertPool()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no servers", Config{Agent: a, ClientCAs: pool}, "no server URL"},
		{"bad server", Config{Agent: a, ClientCAs: pool, Servers: []string{"ftp://x"}}, "want https://HOST:PORT"},
		{"path", Config{Agent: a, ClientCAs: pool, Servers: []string{"https://x:1/api"}}, "want https://HOST:PORT"},
		{"bad label", Config{Agent: a, ClientCAs: pool, Servers: []string{"https://x:1"}, Labels: map[string]string{"a=b": "c"}}, "label"},
		{"no agent or CAs", Config{Servers: []string{"https://x:1"}}, "no node agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate: %v, want %q", err, tt.want)
			}
		})
	}
	if err := (&Config{Agent: a, ClientCAs: pool, Servers: []string{"https://x:1/"}}).Validate(); err != nil {
		t.Errorf("good config: %v", err)
	}
}

// BenchmarkCommandRoundTrip measures one command from the moment a server
// has it pending to the moment its result is recorded: the long poll over
// mutual TLS on loopback, the agent pausing or resuming a fake-runtime
// sandbox (no VM), and the result's post.
func BenchmarkCommandRoundTrip(b *testing.B) {
	c := newCerts(b)
	s := newServer(b, c)
	n := newNode(b, c, s.srv.URL)
	sb, err := n.agent.Create(context.Background(), "acme", &tartarus.CreateRequest{})
	if err != nil {
		b.Fatal(err)
	}
	n.run(b)
	b.ResetTimer()
	for i := range b.N {
		kind := wire.KindPause
		if i%2 == 1 {
			kind = wire.KindResume
		}
		id := "cmd-" + strconv.Itoa(i)
		s.send(wire.Command{ID: id, Kind: kind, SandboxID: sb.ID})
		for {
			s.mu.Lock()
			done := len(s.results[id]) > 0
			s.mu.Unlock()
			if done {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
}
