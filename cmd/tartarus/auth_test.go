package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
)

// authServer runs setup() with flags, mounted the way the API server mounts
// it, in front of one protected route.
func authServer(t *testing.T, args ...string) (*authSetup, string, *lockedLog) {
	t.Helper()
	cmd := &cobra.Command{Use: "server"}
	opts := addAuthFlags(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	logs := &lockedLog{}
	setup, err := opts.setup(context.Background(), dataDir, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { setup.Close() })
	t.Setenv("TARTARUS_URL", mountAuth(t, setup))
	t.Setenv("TARTARUS_DATA_DIR", dataDir)
	t.Setenv("TARTARUS_API_KEY", "")
	return setup, dataDir, logs
}

// mountAuth serves setup's Guard in front of GET /v1/sandboxes and its own
// routes, and returns the server's URL.
func mountAuth(t *testing.T, setup *authSetup) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /v1/sandboxes", setup.Guard.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := setup.Guard.Authorize(r.Context(), cerberus.ActionRead, cerberus.Resource{Type: cerberus.ResourceTypeSandbox, TenantID: cerberus.IdentityFrom(r.Context()).TenantID})
		if err != nil {
			w.WriteHeader(403)
			return
		}
		w.Write([]byte(`{"sandboxes":[]}`))
	})))
	for p, h := range setup.Routes {
		mux.Handle(p, setup.Guard.Wrap(h))
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// lockedLog is a log sink the server's goroutines and the test share.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "tartarus", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newAPIKeyCmd(), newAuditCmd(), newCertsCmd())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestAuthSetupFirstStartAndCLI(t *testing.T) {
	setup, dataDir, logs := authServer(t)
	adminKey := filepath.Join(dataDir, "admin.key")
	st, err := os.Stat(adminKey)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin.key: %v %v", st, err)
	}
	if !strings.Contains(logs.String(), "first start: made an admin API key") || !strings.Contains(logs.String(), "TARTARUS_API_KEY") {
		t.Fatalf("log does not say how to use the key:\n%s", logs)
	}
	key, _ := os.ReadFile(adminKey)
	if strings.Contains(logs.String(), strings.TrimSpace(string(key))) {
		t.Fatal("the admin key is in the log")
	}
	if setup.Metrics == nil {
		t.Fatal("no metrics collector")
	}

	// The CLI finds admin.key and makes a key for tenant acme.
	secret, err := runCLI(t, "apikey", "create", "--tenant", "acme", "--role", "sandbox-user", "--expires", "30d", "--name", "ci")
	if err != nil {
		t.Fatal(err)
	}
	secret = strings.TrimSpace(secret)
	cred, err := cerberus.ParseAPIKey(secret)
	if err != nil {
		t.Fatalf("create printed %q: %v", secret, err)
	}
	out, err := runCLI(t, "apikey", "ls", "--tenant", "*")
	if err != nil || !strings.Contains(out, cred.KeyID) || !strings.Contains(out, "sandbox-user") || strings.Contains(out, cred.Secret) {
		t.Fatalf("ls: %v\n%s", err, out)
	}

	// The new key works, and may not manage keys.
	t.Setenv("TARTARUS_API_KEY", secret)
	if _, err := runCLI(t, "apikey", "ls"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("sandbox-user listed keys: %v", err)
	}
	t.Setenv("TARTARUS_API_KEY", "")
	if out, err := runCLI(t, "apikey", "revoke", cred.KeyID); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %v %s", err, out)
	}
	t.Setenv("TARTARUS_API_KEY", secret)
	_, err = runCLI(t, "apikey", "ls")
	if err == nil || !strings.Contains(err.Error(), "revoked") || !strings.Contains(err.Error(), "401") {
		t.Fatalf("revoked key: %v", err)
	}
	t.Setenv("TARTARUS_API_KEY", "")

	out, err = runCLI(t, "audit", "tail", "--tenant", "*", "-n", "50", "--json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last cerberus.AuditRecord
	json.Unmarshal([]byte(lines[len(lines)-1]), &last)
	if len(lines) < 5 || last.Result != cerberus.AuditResultDenied || last.Status != 401 {
		t.Fatalf("audit tail:\n%s", out)
	}
	if strings.Contains(out, cred.Secret) {
		t.Fatal("secret in audit")
	}
	if out, err := runCLI(t, "audit", "tail", "--tenant", "*", "--result", "denied"); err != nil || !strings.Contains(out, "revoked_api_key") {
		t.Fatalf("audit tail text: %v\n%s", err, out)
	}
}

func TestAuthSetupPolicyFileReload(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	base := strings.Replace(cerberus.DefaultPolicyYAML, "bindings: []", "bindings:", 1)
	os.WriteFile(pol, []byte(base), 0o644)
	_, _, logs := authServer(t, "--auth-policy", pol, "--auth-policy-poll", "20ms")
	secret, err := runCLI(t, "apikey", "create", "--tenant", "acme", "--role", "viewer")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pol, []byte(base+"  - identity: user:x\n    roles: [nope]\n"), 0o644)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "policy file rejected") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `names unknown role \"nope\"`) {
		t.Fatalf("rejection not logged:\n%s", logs)
	}
	// The old policy still lets the viewer read.
	req, _ := http.NewRequest("GET", os.Getenv("TARTARUS_URL")+"/v1/sandboxes", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after bad reload: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestAuthSetupOffAndBadFlags(t *testing.T) {
	cmd := &cobra.Command{Use: "server"}
	opts := addAuthFlags(cmd)
	cmd.ParseFlags([]string{"--auth=off"})
	var logs bytes.Buffer
	s, err := opts.setup(context.Background(), t.TempDir(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil || s.Guard == nil || !strings.Contains(logs.String(), "AUTHENTICATION IS OFF") {
		t.Fatalf("off: %v\n%s", err, logs.String())
	}
	cmd = &cobra.Command{Use: "server"}
	opts = addAuthFlags(cmd)
	cmd.ParseFlags([]string{"--auth=maybe", "--oidc-issuer=https://x", "--tls-client-ca=ca.pem"})
	_, err = opts.setup(context.Background(), t.TempDir(), slog.New(slog.DiscardHandler))
	for _, want := range []string{"--auth must be", "--oidc-audience", "--tls-client-ca needs"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

func TestCertsDevAndTLSSetup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if _, err := runCLI(t, "certs", "dev", "--dir", dir, "--client", "service:ci@acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "certs", "client", "--dir", dir, "agent:node-1"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client-service-ci.pem", "client-agent-node-1-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := &cobra.Command{Use: "server"}
	opts := addAuthFlags(cmd)
	cmd.ParseFlags([]string{"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server-key.pem", "--tls-client-ca", dir + "/ca.pem"})
	s, err := opts.setup(context.Background(), t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.TLS == nil || s.TLS.ClientCAs == nil || len(s.TLS.Certificates) != 1 {
		t.Fatalf("tls config %+v", s.TLS)
	}
}

func TestAuditTailFollow(t *testing.T) {
	authServer(t)
	root := &cobra.Command{Use: "tartarus", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newAuditCmd())
	out := &lockedLog{}
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs([]string{"audit", "tail", "-f", "--tenant", "*", "--interval", "20ms"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	for i := range 3 {
		req, _ := http.NewRequest("GET", os.Getenv("TARTARUS_URL")+"/v1/sandboxes", nil)
		req.Header.Set("User-Agent", "follow-test-"+string(rune('a'+i)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		time.Sleep(30 * time.Millisecond)
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "missing_credentials") < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "missing_credentials"); n != 3 {
		t.Fatalf("tail -f printed %d of 3 new entries:\n%s", n, out.String())
	}
}

// TestAuthSetupSharedDatabase starts two replicas' auth on one Postgres at
// the same time, as `tartarus server --database postgres://…` does: one
// admin key is made, a key made through one replica works on the other,
// revocations reach both, and `apikey --database` changes the shared keys
// without a server.
func TestAuthSetupSharedDatabase(t *testing.T) {
	dsn := pgtest.CreateDatabase(t, pgtest.StartPostgres(t), "auth")
	type replica struct {
		dir   string
		logs  *lockedLog
		setup *authSetup
		err   error
		url   string
	}
	reps := []*replica{{dir: t.TempDir(), logs: &lockedLog{}}, {dir: t.TempDir(), logs: &lockedLog{}}}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range reps {
		wg.Go(func() {
			opts := addAuthFlags(&cobra.Command{Use: "server"})
			opts.database = dsn
			<-start
			r.setup, r.err = opts.setup(context.Background(), r.dir, slog.New(slog.NewTextHandler(r.logs, nil)))
		})
	}
	close(start)
	wg.Wait()
	for _, r := range reps {
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.setup.Close() })
		r.url = mountAuth(t, r.setup)
	}

	// Exactly one replica made the admin key; the other says so.
	var maker, other *replica
	for _, r := range reps {
		if _, err := os.Stat(filepath.Join(r.dir, "admin.key")); err == nil {
			if maker != nil {
				t.Fatal("both replicas wrote an admin.key")
			}
			maker = r
		} else {
			other = r
		}
	}
	if maker == nil {
		t.Fatal("no replica made the admin key")
	}
	if !strings.Contains(maker.logs.String(), "first start: made an admin API key") {
		t.Fatalf("maker's log:\n%s", maker.logs)
	}
	if !strings.Contains(other.logs.String(), "an admin key already exists in the database") {
		t.Fatalf("other replica's log does not say the admin key exists:\n%s", other.logs)
	}

	get := func(url, key string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", url+"/v1/sandboxes", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	// Made through the maker with its admin.key; works on the other at once.
	t.Setenv("TARTARUS_URL", maker.url)
	t.Setenv("TARTARUS_DATA_DIR", maker.dir)
	t.Setenv("TARTARUS_API_KEY", "")
	secret, err := runCLI(t, "apikey", "create", "--tenant", "acme", "--role", "sandbox-user")
	if err != nil {
		t.Fatal(err)
	}
	secret = strings.TrimSpace(secret)
	cred, _ := cerberus.ParseAPIKey(secret)
	if code := get(other.url, secret); code != 200 {
		t.Fatalf("key made on one replica, used on the other: %d", code)
	}
	if code := get(maker.url, secret); code != 200 {
		t.Fatalf("key on its own replica: %d", code)
	}

	// Revoked through the other replica: refused there at once, and on the
	// maker (which has the key cached) within its cache TTL.
	t.Setenv("TARTARUS_URL", other.url)
	if _, err := runCLI(t, "apikey", "revoke", cred.KeyID); err != nil {
		t.Fatal(err)
	}
	if code := get(other.url, secret); code != 401 {
		t.Fatalf("revoked key on the replica that revoked it: %d", code)
	}
	deadline := time.Now().Add(10 * cerberus.DefaultKeyCacheTTL)
	for get(maker.url, secret) != 401 {
		if time.Now().After(deadline) {
			t.Fatal("revoked key still works on the other replica")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// apikey --database: no server, no key; both replicas see the change.
	t.Setenv("TARTARUS_URL", "http://127.0.0.1:1") // nothing listens: the verbs must not need it
	if _, err := runCLI(t, "apikey", "create", "--database", dsn, "--role", "viewer"); err == nil || !strings.Contains(err.Error(), "--tenant is required") {
		t.Fatalf("create --database without --tenant: %v", err)
	}
	dbSecret, err := runCLI(t, "apikey", "create", "--database", dsn, "--tenant", "acme", "--role", "viewer", "--expires", "1d", "--name", "ops")
	if err != nil {
		t.Fatal(err)
	}
	dbSecret = strings.TrimSpace(dbSecret)
	dbCred, err := cerberus.ParseAPIKey(dbSecret)
	if err != nil {
		t.Fatalf("create --database printed %q: %v", dbSecret, err)
	}
	for _, r := range reps {
		if code := get(r.url, dbSecret); code != 200 {
			t.Fatalf("key made with --database on a replica: %d", code)
		}
	}
	out, err := runCLI(t, "apikey", "ls", "--database", dsn)
	if err != nil || !strings.Contains(out, dbCred.KeyID) || !strings.Contains(out, cred.KeyID) || !strings.Contains(out, "revoked") ||
		!strings.Contains(out, cerberus.AdminRole) || strings.Contains(out, dbCred.Secret) {
		t.Fatalf("ls --database: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "apikey", "revoke", "--database", dsn, cerberus.KeyPrefix+dbCred.KeyID); err != nil || !strings.Contains(out, "revoked "+dbCred.KeyID) {
		t.Fatalf("revoke --database: %v %s", err, out)
	}
	if _, err := runCLI(t, "apikey", "ls", "--database", filepath.Join(t.TempDir(), "state.db")); err == nil || !strings.Contains(err.Error(), "postgres://") {
		t.Fatalf("--database with a SQLite path: %v", err)
	}
}
