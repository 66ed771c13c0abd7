package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestE2BSDKEndToEnd runs E2B's own JavaScript SDK (the `e2b` package
// pinned in test/e2b/package.json, installed from npm into a cache
// directory) against a real server's E2B listener over TLS, with real
// microVMs: test/e2b/sdk.test.mjs uses only the SDK's public API and
// checks every result. With TARTARUS_E2B_BENCH=1 it also measures the
// same operations through the SDK and through Tartarus's own API, in the
// same run, and logs a table (docs/BENCHMARKS.md).
func TestE2BSDKEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("TARTARUS_E2E") == "1" {
			t.Fatal("TARTARUS_E2E=1 but node is not installed (scripts/deps.sh --test installs it)")
		}
		t.Skip("node is not installed")
	}
	bench := os.Getenv("TARTARUS_E2B_BENCH") == "1"
	dir := e2bSDK(t)

	// The E2B listener serves TLS with a certificate of a CA the test
	// makes; node trusts it through NODE_EXTRA_CA_CERTS.
	certs := t.TempDir()
	now := time.Now()
	ca, err := cerberus.NewDevCA("e2b test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer([]string{"127.0.0.1", "*." + e2bTestDomain, "api." + e2bTestDomain}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := writePair(certs, "ca", ca); err != nil {
		t.Fatal(err)
	}
	if err := writePair(certs, "server", srv); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	e := newE2E(t, "--e2b-addr", addr, "--e2b-domain", e2bTestDomain,
		"--e2b-tls-cert", filepath.Join(certs, "server.pem"), "--e2b-tls-key", filepath.Join(certs, "server-key.pem"))
	key := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--role", "sandbox-user", "--format", "e2b", "--name", "e2b sdk"))
	if !strings.HasPrefix(key, "e2b_") {
		t.Fatalf("apikey create --format e2b printed %q", key)
	}
	other := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "e2b-other", "--role", "sandbox-user"))

	url := "https://" + addr
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "sdk.test.mjs")
	cmd.Dir = dir
	// E2B_SANDBOX_URL sends every envd call to the one listener with the
	// E2b-Sandbox-Id header, so no DNS name is needed.
	cmd.Env = append(os.Environ(), "E2B_API_URL="+url, "E2B_SANDBOX_URL="+url, "E2B_API_KEY="+key,
		"OTHER_TENANT_KEY="+other, "RUN="+rand.Text()[:10], "NODE_EXTRA_CA_CERTS="+filepath.Join(certs, "ca.pem"))
	if bench {
		cmd.Env = append(cmd.Env, "BENCH=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var sdkBench map[string][]float64
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if j, ok := strings.CutPrefix(line, "bench "); ok {
			if err := json.Unmarshal([]byte(j), &sdkBench); err != nil {
				t.Errorf("bench line: %v", err)
			}
			continue
		}
		t.Log(line)
	}
	if err := cmd.Wait(); err != nil {
		logs, _ := os.ReadFile(e.logs)
		t.Fatalf("sdk.test.mjs: %v\nstderr: %s\nserver log (tail): %s", err, stderr.String(), tail(logs, 4000))
	}
	if bench {
		nativeBench(t, e, sdkBench)
	}
	hostRouting(t, e, addr, key, filepath.Join(certs, "ca.pem"))
}

// e2bTestDomain is the E2B sandbox domain of the test; no DNS knows it:
// the test dials the listener itself.
const e2bTestDomain = "e2b.test"

// hostRouting checks the routing by host name that the SDK uses without
// E2B_SANDBOX_URL (https://49983-SANDBOXID.DOMAIN for envd, other ports
// to the port proxy), over TLS with SNI, on a real sandbox.
func hostRouting(t *testing.T, e *e2e, addr, key, caFile string) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	call := func(method, url, ct, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-API-Key", key)
		req.Header.Set("X-Access-Token", key)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	code, body := call("POST", "https://api."+e2bTestDomain+"/v2/sandboxes", "application/json", `{"templateID":"base","timeout":120}`)
	var sb struct {
		SandboxID string `json:"sandboxID"`
		Domain    string `json:"domain"`
	}
	if err := json.Unmarshal([]byte(body), &sb); code != 201 || err != nil || sb.Domain != e2bTestDomain {
		t.Fatalf("create through api.%s: %d %s", e2bTestDomain, code, body)
	}
	envd := "https://49983-" + sb.SandboxID + "." + e2bTestDomain
	if code, body := call("GET", envd+"/health", "", ""); code != 204 {
		t.Errorf("envd health by host: %d %s", code, body)
	}
	if code, body := call("POST", envd+"/filesystem.Filesystem/Stat", "application/json", `{"path":"/etc/hostname"}`); code != 200 || !strings.Contains(body, `"path":"/etc/hostname"`) {
		t.Errorf("envd Stat by host: %d %s", code, body)
	}
	// Other ports reach the native port proxy, which on this server
	// (started without --network) says it cannot (with networking and
	// nothing listening it would answer 503).
	if code, body := call("GET", "https://8080-"+sb.SandboxID+"."+e2bTestDomain+"/", "", ""); code != 501 || !strings.Contains(body, "networking") {
		t.Errorf("port 8080 by host: %d %s, want 501 from the port proxy", code, body)
	}
	if code, body := call("DELETE", "https://api."+e2bTestDomain+"/sandboxes/"+sb.SandboxID, "", ""); code != 204 {
		t.Errorf("kill: %d %s", code, body)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// nativeBench measures, through Tartarus's own API, what sdk.test.mjs
// measured through the E2B SDK, and logs both.
func nativeBench(t *testing.T, e *e2e, sdk map[string][]float64) {
	keyData, err := os.ReadFile(filepath.Join(e.data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(e.url, strings.TrimSpace(string(keyData)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ms := func(t0 time.Time) float64 { return float64(time.Since(t0).Microseconds()) / 1000 }
	native := map[string][]float64{}
	trueCmd := &api.ExecRequest{Cmd: []string{"true"}}
	for range 3 {
		t0 := time.Now()
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", TimeoutS: 120})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, sb.ID, trueCmd); err != nil {
			t.Fatal(err)
		}
		native["create_first_command_ms"] = append(native["create_first_command_ms"], ms(t0))
		if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
	}
	sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", TimeoutS: 300})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		t0 := time.Now()
		if _, err := c.Exec(ctx, sb.ID, trueCmd); err != nil {
			t.Fatal(err)
		}
		native["command_rtt_ms"] = append(native["command_rtt_ms"], ms(t0))
	}
	// The SDK runs every command as a login shell; this row shows what
	// that costs on its own.
	login := &api.ExecRequest{Cmd: []string{"/bin/bash", "-l", "-c", "true"}}
	for range 20 {
		t0 := time.Now()
		if _, err := c.Exec(ctx, sb.ID, login); err != nil {
			t.Fatal(err)
		}
		native["command_rtt_login_shell_ms"] = append(native["command_rtt_login_shell_ms"], ms(t0))
	}
	mb := make([]byte, 1<<20)
	for i := range mb {
		mb[i] = byte(i % 251)
	}
	for range 5 {
		t0 := time.Now()
		if err := c.WriteFile(ctx, sb.ID, "/tmp/bench.bin", 0o644, bytes.NewReader(mb)); err != nil {
			t.Fatal(err)
		}
		native["write_1mb_ms"] = append(native["write_1mb_ms"], ms(t0))
		t0 = time.Now()
		rc, err := c.ReadFile(ctx, sb.ID, "/tmp/bench.bin")
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || n != int64(len(mb)) {
			t.Fatalf("read back %d bytes: %v", n, err)
		}
		native["read_1mb_ms"] = append(native["read_1mb_ms"], ms(t0))
	}
	_, _ = c.DeleteSandbox(ctx, sb.ID)
	load, _ := os.ReadFile("/proc/loadavg")
	var b strings.Builder
	fmt.Fprintf(&b, "E2B SDK vs native API (ms; median / p99 (max of the runs) / runs), load average %s\n", strings.TrimSpace(string(load)))
	for _, k := range []string{"create_first_command_ms", "command_rtt_ms", "command_rtt_login_shell_ms", "write_1mb_ms", "read_1mb_ms"} {
		fmt.Fprintf(&b, "%-26s e2b %s   native %s\n", k, stats(sdk[k]), stats(native[k]))
	}
	t.Log(b.String())
}

// stats is "median / p99 / n" of samples (p99 is the largest of so few).
func stats(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	p99 := s[min(len(s)-1, int(float64(len(s))*0.99))]
	return fmt.Sprintf("%.1f / %.1f / %d", s[len(s)/2], p99, len(s))
}

// e2bSDK installs test/e2b's pinned packages (npm ci) into a cache
// directory named by the lock file's hash, once, and copies the test
// script there; it returns the directory.
func e2bSDK(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "..", "..", "test", "e2b")
	lock, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(lock)
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "tartarus", "e2b-sdk-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"package.json", "package-lock.json", "sdk.test.mjs"} {
		data, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b", "package.json")); err == nil {
		return dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		msg := fmt.Sprintf("npm ci in %s: %v\n%s", dir, err, out)
		if os.Getenv("TARTARUS_E2E") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}
