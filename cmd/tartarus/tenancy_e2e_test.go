package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
)

// cliAs runs a client verb with the API key key and returns its stdout,
// stderr and exit code.
func (e *e2e) cliAs(t testing.TB, key string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), "TARTARUS_URL="+e.url, "TARTARUS_DATA_DIR="+t.TempDir(), "TARTARUS_API_KEY="+key)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tartarus %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// httpAs does one API call with key and returns the status and body.
func (e *e2e) httpAs(t testing.TB, key, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestViewerCannotTakeFilesEndToEnd: against a real server and VM, the
// built-in viewer sees its tenant's sandbox but can neither download nor
// list nor upload its files, nor exec in it or fork it; a sandbox-user key
// of the same tenant can do all of it.
func TestViewerCannotTakeFilesEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newE2E(t)
	id := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--template", "base", "--timeout", "600"))
	e.cli(t, 0, "", "exec", id, "--", "sh", "-c", "echo the-secret > /tmp/secret.txt")
	viewer := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--role", "viewer", "--name", "e2e viewer"))
	user := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--role", "sandbox-user", "--name", "e2e user"))

	if out, errOut, code := e.cliAs(t, viewer, "sandbox", "get", id); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("viewer cannot see the sandbox: exit %d %s %s", code, out, errOut)
	}
	local := filepath.Join(t.TempDir(), "stolen.txt")
	if out, errOut, code := e.cliAs(t, viewer, "cp", id+":/tmp/secret.txt", local); code == 0 || strings.Contains(out+errOut, "the-secret") {
		t.Errorf("viewer cp from the sandbox: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if b, err := os.ReadFile(local); err == nil && len(b) > 0 {
		t.Errorf("viewer got the file: %q", b)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/sandboxes/" + id + "/files?path=/tmp/secret.txt"},
		{"GET", "/v1/sandboxes/" + id + "/files?path=/tmp&list=true"},
		{"PUT", "/v1/sandboxes/" + id + "/files?path=/tmp/planted"},
		{"POST", "/v1/sandboxes/" + id + "/exec"},
		{"POST", "/v1/sandboxes/" + id + "/fork"},
		{"POST", "/v1/sandboxes/" + id + "/checkpoint"},
	} {
		status, body := e.httpAs(t, viewer, c.method, c.path)
		if status != http.StatusForbidden || strings.Contains(body, "the-secret") || !strings.Contains(body, "permission_denied") {
			t.Errorf("viewer %s %s: %d %s; want 403 permission_denied", c.method, c.path, status, body)
		}
	}

	if out, errOut, code := e.cliAs(t, user, "cp", id+":/tmp/secret.txt", local); code != 0 {
		t.Fatalf("sandbox-user cp: exit %d %s %s", code, out, errOut)
	}
	if b, _ := os.ReadFile(local); string(b) != "the-secret\n" {
		t.Errorf("sandbox-user downloaded %q", b)
	}
	if out, errOut, code := e.cliAs(t, user, "exec", id, "--", "cat", "/tmp/secret.txt"); code != 0 || out != "the-secret\n" {
		t.Errorf("sandbox-user exec: exit %d %q %s", code, out, errOut)
	}
	e.cli(t, 0, "", "sandbox", "rm", id)
}

// TestTemplatesBelongToTheirTenantEndToEnd: a template made from tenant
// acme's data (the manifest `tartarus migrate --tenant acme` writes) is
// listed and usable by acme only; globex gets 404 for it as for another
// tenant's sandbox, until an operator publishes it. Built-in templates stay
// everyone's.
func TestTemplatesBelongToTheirTenantEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newE2E(t)
	// The acme template: the base template's files with an owner, made in
	// the data directory the way migrate makes one.
	name := "private-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	tdir := filepath.Join(e.data, "images", "templates", name)
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tdir) }) // the images directory is the shared cache
	base := filepath.Join(e.data, "images", "templates", "base")
	for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4"} {
		if err := os.Link(filepath.Join(base, f), filepath.Join(tdir, f)); err != nil {
			t.Fatal(err)
		}
	}
	manifest := `{"name":"` + name + `","description":"migrated from container web","digest":"sha256:0","tenant":"acme",
		"container":{"source_id":"web","env":["SECRET=acme-only"]}}`
	if err := os.WriteFile(filepath.Join(tdir, "manifest.json"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))
	globex := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "globex", "--role", "sandbox-user"))

	lists := func(key string) (own, builtin bool) {
		status, body := e.httpAs(t, key, "GET", "/v1/templates")
		if status != 200 {
			t.Fatalf("GET /v1/templates: %d %s", status, body)
		}
		return strings.Contains(body, `"`+name+`"`), strings.Contains(body, `"base"`)
	}
	if own, builtin := lists(acme); !own || !builtin {
		t.Errorf("acme lists its template %v, base %v; want both", own, builtin)
	}
	if own, builtin := lists(globex); own || !builtin {
		t.Errorf("globex lists acme's template %v, base %v; want base only", own, builtin)
	}
	out, errOut, code := e.cliAs(t, globex, "sandbox", "create", "--template", name, "--timeout", "300")
	if code == 0 || !strings.Contains(errOut, "not found") || strings.Contains(out+errOut, "acme") {
		t.Errorf("globex create from acme's template: exit %d %q %q; want not found, naming no tenant", code, out, errOut)
	}
	out, errOut, code = e.cliAs(t, acme, "sandbox", "create", "--template", name, "--timeout", "300")
	if code != 0 {
		t.Fatalf("acme create from its template: exit %d %s %s", code, out, errOut)
	}
	sb := strings.TrimSpace(out)
	if out, _, code := e.cliAs(t, acme, "exec", sb, "--", "echo", "ok"); code != 0 || out != "ok\n" {
		t.Errorf("acme exec in the sandbox from its template: %d %q", code, out)
	}
	if _, _, code := e.cliAs(t, acme, "sandbox", "rm", sb); code != 0 {
		t.Errorf("rm: exit %d", code)
	}

	// Published: every tenant may list and use it.
	if out := e.cli(t, 0, "", "template", "publish", name, "--data-dir", e.data); !strings.Contains(out, "every tenant") {
		t.Errorf("publish printed %q", out)
	}
	if own, _ := lists(globex); !own {
		t.Error("globex does not list the published template")
	}
	out, errOut, code = e.cliAs(t, globex, "sandbox", "create", "--template", name, "--timeout", "300")
	if code != 0 {
		t.Fatalf("globex create from the published template: exit %d %s %s", code, out, errOut)
	}
	e.cliAs(t, globex, "sandbox", "rm", strings.TrimSpace(out))
	e.cli(t, 0, "", "template", "unpublish", name, "--data-dir", e.data)
	if own, _ := lists(globex); own {
		t.Error("globex still lists the unpublished template")
	}
}

// quotaPolicy is the built-in policy plus quotas for tenant acme.
const quotaPolicy = `
quotas:
  tenants:
    acme: {running_sandboxes: 1, memory_mb: 1024}
`

// TestQuotaEndToEnd: against a real server and VMs, with quotas in the
// policy file, a tenant at its quota gets 429 quota_exceeded naming it,
// its limit and its use; another tenant is unaffected; `tartarus quota`
// shows it.
func TestQuotaEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte(cerberus.DefaultPolicyYAML+quotaPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newE2E(t, "--auth-policy", policy)
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))
	globex := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "globex", "--role", "sandbox-user"))

	out, errOut, code := e.cliAs(t, acme, "sandbox", "create", "--template", "base", "--timeout", "300")
	if code != 0 {
		t.Fatalf("acme's first sandbox: exit %d %s %s", code, out, errOut)
	}
	first := strings.TrimSpace(out)
	out, errOut, code = e.cliAs(t, acme, "sandbox", "create", "--template", "base", "--timeout", "300")
	if code == 0 || !strings.Contains(errOut, "429 quota_exceeded") || !strings.Contains(errOut, "running_sandboxes") ||
		!strings.Contains(errOut, "limit 1") || !strings.Contains(errOut, "in use 1") {
		t.Errorf("acme's second sandbox: exit %d %q %q; want 429 quota_exceeded naming running_sandboxes, limit 1, in use 1", code, out, errOut)
	}
	out, errOut, code = e.cliAs(t, globex, "sandbox", "create", "--template", "base", "--timeout", "300")
	if code != 0 {
		t.Fatalf("globex while acme is at its quota: exit %d %s %s", code, out, errOut)
	}
	other := strings.TrimSpace(out)
	out, errOut, code = e.cliAs(t, acme, "quota")
	if code != 0 || !strings.Contains(out, "tenant acme") || !regexpMatch(`running_sandboxes\s+1\s+1`, out) || !regexpMatch(`memory_mb\s+\d+\s+1024`, out) {
		t.Errorf("tartarus quota: exit %d\n%s%s", code, out, errOut)
	}
	// Freed, it may create again.
	e.cliAs(t, acme, "sandbox", "rm", first)
	out, errOut, code = e.cliAs(t, acme, "sandbox", "create", "--template", "base", "--timeout", "300")
	if code != 0 {
		t.Fatalf("acme after removing its sandbox: exit %d %s %s", code, out, errOut)
	}
	e.cliAs(t, acme, "sandbox", "rm", strings.TrimSpace(out))
	e.cliAs(t, globex, "sandbox", "rm", other)
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// dirSize is the bytes of the files under dir.
func dirSize(t testing.TB, dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestAuditFloodEndToEnd: 100,000 requests with random bogus API keys
// against a real server cost a bounded amount of audit log and server log,
// leave the entry written before them in place, and leave a chain that
// `tartarus audit verify` passes; editing one line is then reported.
func TestAuditFloodEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	e := newE2E(t)
	e.cli(t, 0, "", "sandbox", "ls") // an authenticated entry before the flood
	auditDir := filepath.Join(e.data, "audit")
	before := dirSize(t, auditDir)
	logBefore := dirSize(t, e.logs)

	const n, workers = 100_000, 8
	var wg sync.WaitGroup
	var unexpected atomic.Int64
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				req, _ := http.NewRequest("GET", e.url+"/v1/sandboxes", nil)
				req.Header.Set("Authorization", fmt.Sprintf("Bearer tk_%012x_%032x", i, i))
				resp, err := c.Do(req)
				if err != nil {
					unexpected.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					unexpected.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if u := unexpected.Load(); u > 0 {
		t.Errorf("%d of %d bogus requests were not answered 401", u, n)
	}
	grew, logGrew := dirSize(t, auditDir)-before, dirSize(t, e.logs)-logBefore
	t.Logf("%d bogus requests in %s: audit log +%d bytes, server log +%d bytes", n, took.Round(time.Millisecond), grew, logGrew)
	// Bounded by the global gate (burst 200 + 20/s) at ~400 bytes a line,
	// not by the number of requests.
	if limit := int64((200 + 20*took.Seconds() + 20) * 600); grew > limit {
		t.Errorf("the audit log grew %d bytes, more than %d", grew, limit)
	}
	if limit := int64((200 + 20*took.Seconds() + 20) * 600); logGrew > limit {
		t.Errorf("the server log grew %d bytes, more than %d", logGrew, limit)
	}
	out := e.cli(t, 0, "", "audit", "verify", "--dir", auditDir)
	if !strings.Contains(out, "chain:     intact") || !strings.Contains(out, "seq 1..") {
		t.Errorf("audit verify after the flood:\n%s", out)
	}
	b, err := os.ReadFile(filepath.Join(auditDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	if !strings.Contains(first, `"seq":1,`) || !strings.Contains(first, `"result":"success"`) {
		t.Errorf("the entry before the flood is not the log's first: %.300s", first)
	}
	// Edit one line in the middle: verify reports it.
	lines := strings.SplitAfter(string(b), "\n")
	mid := len(lines) / 2
	lines[mid] = strings.Replace(lines[mid], `"denied"`, `"success"`, 1)
	if err := os.WriteFile(filepath.Join(auditDir, "audit.log"), []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cli(t, 1, "", "audit", "verify", "--dir", auditDir)
}
