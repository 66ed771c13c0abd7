package main

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// devCerts writes a development CA, the server's certificate and agent
// node-1's into a directory, as `tartarus certs dev` does.
func devCerts(t *testing.T) (dir string, ca *cerberus.CertKey) {
	t.Helper()
	dir = t.TempDir()
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
	for base, ck := range map[string]*cerberus.CertKey{"ca": ca, "server": srv, "client-agent-node-1": agent} {
		if err := writePair(dir, base, ck); err != nil {
			t.Fatal(err)
		}
	}
	return dir, ca
}

func TestAgentFlagErrors(t *testing.T) {
	dir, _ := devCerts(t)
	certFlags := []string{"--tls-cert", dir + "/client-agent-node-1.pem", "--tls-key", dir + "/client-agent-node-1-key.pem", "--tls-ca", dir + "/ca.pem"}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{"--server: give the URL", "--tls-cert, --tls-key, --tls-ca", "--advertise"}},
		{"bad urls", append([]string{"--name", "node-1", "--server", "http://a:1,https://b:2/x", "--advertise", "b:1"}, certFlags...),
			[]string{`"http://a:1" is not https://HOST:PORT`, `"https://b:2/x" is not`, `--advertise: "b:1"`}},
		{"bad labels", append([]string{"--name", "node-1", "--server", "https://a:1", "--listen", "127.0.0.1:7701", "--labels", "pool,zone=a,zone=b"}, certFlags...),
			[]string{`"pool" is not key=value`, `"zone" is given twice`}},
		{"certificate of another node", append([]string{"--name", "node-2", "--server", "https://a:1", "--listen", "127.0.0.1:7701"}, certFlags...),
			[]string{"names agent:node-1, not agent:node-2"}},
		{"server certificate", []string{"--name", "node-1", "--server", "https://a:1", "--listen", "127.0.0.1:7701",
			"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server-key.pem", "--tls-ca", dir + "/ca.pem"},
			[]string{"names service:tartarus-server"}},
		{"missing file", []string{"--name", "node-1", "--server", "https://a:1", "--listen", "127.0.0.1:7701",
			"--tls-cert", dir + "/nope.pem", "--tls-key", dir + "/nope-key.pem", "--tls-ca", dir + "/ca.pem"},
			[]string{"--tls-cert/--tls-key", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newAgentCmd()
			cmd.SetArgs(append(tt.args, "--data-dir", t.TempDir()))
			cmd.SetOut(io.Discard)
			err := cmd.ExecuteContext(context.Background())
			if err == nil {
				t.Fatal("the agent started")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// wireServer is the little of the servers' side the command test needs.
type wireServer struct {
	srv        *httptest.Server
	mu         sync.Mutex
	heartbeats []wire.Heartbeat
	pending    []wire.Command
	results    map[string]wire.Result
}

func newWireServer(t *testing.T, dir string) *wireServer {
	t.Helper()
	w := &wireServer{results: map[string]wire.Result{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+wire.PathHeartbeat, func(rw http.ResponseWriter, r *http.Request) {
		var hb wire.Heartbeat
		_ = json.NewDecoder(r.Body).Decode(&hb)
		w.mu.Lock()
		w.heartbeats = append(w.heartbeats, hb)
		w.mu.Unlock()
		_ = json.NewEncoder(rw).Encode(wire.HeartbeatReply{Interval: 50 * time.Millisecond})
	})
	mux.HandleFunc("GET "+wire.PathCommands, func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		cmds := slices.Clone(w.pending)
		w.mu.Unlock()
		if len(cmds) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		_ = json.NewEncoder(rw).Encode(wire.Commands{Commands: cmds})
	})
	mux.HandleFunc("POST "+wire.PathCommands+"/{id}", func(rw http.ResponseWriter, r *http.Request) {
		var res wire.Result
		_ = json.NewDecoder(r.Body).Decode(&res)
		w.mu.Lock()
		w.results[r.PathValue("id")] = res
		w.pending = slices.DeleteFunc(w.pending, func(c wire.Command) bool { return c.ID == r.PathValue("id") })
		w.mu.Unlock()
		rw.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+wire.PathReports, func(rw http.ResponseWriter, r *http.Request) { rw.WriteHeader(http.StatusNoContent) })
	w.srv = httptest.NewUnstartedServer(mux)
	cert, err := tls.LoadX509KeyPair(dir+"/server.pem", dir+"/server-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(dir + "/ca.pem")
	pool.AppendCertsFromPEM(caPEM)
	w.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	return w
}

func (w *wireServer) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		ok := cond()
		w.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestAgentCommand runs `tartarus agent` in-process on the fake runtime
// (no VM) against a stand-in for the servers: it heartbeats, creates a
// sandbox on command, serves an exec to a server's certificate, and after
// a stop and a start still holds the sandbox.
func TestAgentCommand(t *testing.T) {
	certs, _ := devCerts(t)
	data := t.TempDir()
	tpl := filepath.Join(data, "images", "templates", "base")
	if err := os.MkdirAll(tpl, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4"} {
		if err := os.WriteFile(filepath.Join(tpl, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tpl, "manifest.json"), []byte(`{"name":"base","digest":"sha256:abcd1234"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ws := newWireServer(t, certs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()

	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := newAgentCmd()
		cmd.SetOut(io.Discard)
		cmd.SetArgs([]string{"--server", ws.srv.URL, "--name", "node-1", "--data-dir", data, "--listen", listen,
			"--labels", "pool=test", "--tls-cert", certs + "/client-agent-node-1.pem", "--tls-key", certs + "/client-agent-node-1-key.pem",
			"--tls-ca", certs + "/ca.pem", "--runtimes", "fake", "--unsafe-fake-runtime", "--log-level", "warn", "--heartbeat", "50ms"})
		done := make(chan error, 1)
		go func() { done <- cmd.ExecuteContext(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}
	stop := start()
	ws.waitFor(t, "a heartbeat", func() bool { return len(ws.heartbeats) > 0 })
	now := time.Now().UTC()
	ws.mu.Lock()
	hb := ws.heartbeats[0]
	ws.pending = append(ws.pending, wire.Command{ID: "cmd-1", Kind: wire.KindCreate, SandboxID: "sb-e2e",
		Sandbox: &tartarus.Sandbox{ID: "sb-e2e", Tenant: "acme", CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		Create:  &tartarus.CreateRequest{Template: "base"}})
	ws.mu.Unlock()
	if st := hb.Node; !hb.Full || st.Name != "node-1" || st.Address != "https://"+listen || st.Labels["pool"] != "test" ||
		!slices.Equal(st.Templates, []string{"base"}) || len(st.Runtimes) != 1 || st.SharedSnapshots {
		t.Errorf("first heartbeat = %+v", hb)
	}
	ws.waitFor(t, "the create's result", func() bool { _, ok := ws.results["cmd-1"]; return ok })
	if res := ws.results["cmd-1"]; res.Error != nil || len(res.Sandboxes) != 1 || res.Sandboxes[0].Sandbox.State != tartarus.StateRunning {
		t.Fatalf("create result = %+v", res)
	}

	// The servers' certificate execs through the node API.
	srvCert, err := tls.LoadX509KeyPair(certs+"/server.pem", certs+"/server-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(certs + "/ca.pem")
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{srvCert}, RootCAs: pool}}}
	body, _ := json.Marshal(api.ExecRequest{Cmd: []string{"sh", "-c", "echo hi"}})
	req, _ := http.NewRequest(http.MethodPost, "https://"+listen+"/v1/sandboxes/sb-e2e/exec", bytes.NewReader(body))
	req.Header.Set(wire.TenantHeader, "acme")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(out), `"stdout":"hi\n"`) {
		t.Errorf("exec through the node API: %d %s", resp.StatusCode, out)
	}

	// Stopped and started again, it still holds the sandbox, running.
	stop()
	ws.mu.Lock()
	ws.heartbeats = nil
	ws.mu.Unlock()
	stop = start()
	defer stop()
	ws.waitFor(t, "a heartbeat after the restart", func() bool { return len(ws.heartbeats) > 0 })
	ws.mu.Lock()
	defer ws.mu.Unlock()
	hb = ws.heartbeats[0]
	if len(hb.Sandboxes) != 1 || hb.Sandboxes[0].Sandbox.ID != "sb-e2e" || hb.Sandboxes[0].Sandbox.State != tartarus.StateRunning {
		t.Errorf("heartbeat after restart lists %+v", hb.Sandboxes)
	}
}
