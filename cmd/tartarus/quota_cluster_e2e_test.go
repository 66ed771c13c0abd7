package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/cluster/clustertest"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
)

// TestQuotaAcrossReplicasEndToEnd: two `tartarus server` replicas with
// authentication on share a real Postgres (and Redis) and one agent runs
// real microVMs. Tenant default may hold one sandbox: created through the
// first replica, the second replica refuses the next with 429
// quota_exceeded, because both count from the shared store.
func TestQuotaAcrossReplicasEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	bin, cache := e2eBinary(t)
	root := t.TempDir()
	pg := pgtest.StartPostgresServer(t)
	redis := clustertest.StartRedis(t)
	certs := filepath.Join(root, "certs")
	if out, err := exec.Command(bin, "certs", "dev", "--dir", certs, "--host", "127.0.0.1", "--client", "agent:node-a").CombinedOutput(); err != nil {
		t.Fatalf("certs dev: %v\n%s", err, out)
	}
	policy := filepath.Join(root, "policy.yaml")
	if err := os.WriteFile(policy, []byte(cerberus.DefaultPolicyYAML+"\nquotas:\n  tenants:\n    default: {running_sandboxes: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var replicas []*proc
	var urls, agentURLs []string
	for _, name := range []string{"replica-1", "replica-2"} {
		listen, agentListen := freeAddr(t), freeAddr(t)
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, &proc{name: name, bin: bin, logs: filepath.Join(root, name+".log"),
			args: []string{"server", "--listen", listen, "--data-dir", dir, "--auth-policy", policy, "--log-level", "debug",
				"--database", pg.DSN, "--redis", redis.URL, "--agent-listen", agentListen,
				"--agent-cert", filepath.Join(certs, "server.pem"), "--agent-key", filepath.Join(certs, "server-key.pem"),
				"--agent-ca", filepath.Join(certs, "ca.pem"), "--node-timeout", "4s", "--heartbeat-interval", "500ms"}})
		urls = append(urls, "http://"+listen)
		agentURLs = append(agentURLs, "https://"+agentListen)
	}
	adir := filepath.Join(root, "node-a")
	if err := os.MkdirAll(adir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(cache, "images"), filepath.Join(adir, "images")); err != nil {
		t.Fatal(err)
	}
	alisten := freeAddr(t)
	agent := &proc{name: "node-a", bin: bin, logs: filepath.Join(root, "node-a.log"),
		args: []string{"agent", "--server", strings.Join(agentURLs, ","), "--name", "node-a", "--data-dir", adir,
			"--listen", alisten, "--advertise", "https://" + alisten,
			"--tls-cert", filepath.Join(certs, "client-agent-node-a.pem"), "--tls-key", filepath.Join(certs, "client-agent-node-a-key.pem"),
			"--tls-ca", filepath.Join(certs, "ca.pem"), "--accel", "tcg", "--log-level", "debug"}}
	all := append(append([]*proc{}, replicas...), agent)
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
				if len(logs) > 8000 {
					logs = logs[len(logs)-8000:]
				}
				t.Logf("--- %s log (tail):\n%s", p.name, logs)
			}
		}
	})
	// The first replica makes the admin key (in Postgres, and its
	// admin.key); the second finds it there.
	replicas[0].start(t)
	keyFile := filepath.Join(root, "replica-1", "admin.key")
	waitFor(t, "the first replica's admin.key", func() bool { _, err := os.Stat(keyFile); return err == nil })
	b, _ := os.ReadFile(keyFile)
	key := strings.TrimSpace(string(b))
	replicas[1].start(t)
	agent.start(t)
	var cl []*client.Client
	for _, u := range urls {
		c, err := client.New(u, key)
		if err != nil {
			t.Fatal(err)
		}
		waitHealthy(t, c)
		cl = append(cl, c)
	}
	waitNodes(t, cl[0], map[string]string{"node-a": "up"})
	waitNodes(t, cl[1], map[string]string{"node-a": "up"})

	post := func(url string) (int, string) {
		req, _ := http.NewRequest("POST", url+"/v1/sandboxes", strings.NewReader(`{"template":"base","timeout_s":300}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		c := &http.Client{Timeout: 3 * time.Minute}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := post(urls[0]); status != http.StatusCreated {
		t.Fatalf("create through replica 1: %d %s", status, body)
	}
	status, body := post(urls[1])
	if status != http.StatusTooManyRequests || !strings.Contains(body, "quota_exceeded") || !strings.Contains(body, "running_sandboxes") ||
		!strings.Contains(body, "limit 1") || !strings.Contains(body, "in use 1") {
		t.Errorf("create through replica 2 at the quota: %d %s; want 429 quota_exceeded naming running_sandboxes", status, body)
	}
	req, _ := http.NewRequest("GET", urls[1]+"/v1/quotas", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rep olympus.QuotaReport
	err = json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	if err != nil || rep.Usage.RunningSandboxes != 1 || rep.Limits.RunningSandboxes != 1 {
		t.Errorf("replica 2's GET /v1/quotas: %+v %v", rep, err)
	}
}
