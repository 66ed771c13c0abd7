package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
)

// repoAddr is where the test's Debian package repository answers, in the
// stand-in internet.
var repoAddr = netip.MustParseAddr("203.0.113.20")

// aptRepo makes a flat Debian repository holding one package,
// tartarus-hello (its /usr/bin/tartarus-hello prints "hello from the
// package"), and returns its directory.
func aptRepo(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed")
	}
	root := filepath.Join(t.TempDir(), "pkg")
	for f, body := range map[string]string{
		"DEBIAN/control":         "Package: tartarus-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Tartarus tests <tests@example.invalid>\nDescription: a package the template build test installs\n",
		"usr/bin/tartarus-hello": "#!/bin/sh\necho hello from the package\n",
	} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	repo := t.TempDir()
	deb := filepath.Join(repo, "tartarus-hello_1.0_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	fields, err := exec.Command("dpkg-deb", "-f", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(deb)
	sum := sha256.Sum256(b)
	packages := fmt.Sprintf("%sFilename: ./%s\nSize: %d\nSHA256: %s\n\n", fields, filepath.Base(deb), len(b), hex.EncodeToString(sum[:]))
	psum := sha256.Sum256([]byte(packages))
	release := fmt.Sprintf("Origin: tartarus-test\nLabel: tartarus-test\nSuite: stable\nCodename: stable\nDate: %s\nArchitectures: all amd64\nSHA256:\n %s %d Packages\n",
		time.Now().UTC().Add(-time.Hour).Format(time.RFC1123), hex.EncodeToString(psum[:]), len(packages))
	for f, body := range map[string]string{"Packages": packages, "Release": release} {
		if err := os.WriteFile(filepath.Join(repo, f), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return repo
}

const buildDockerfile = `# A template with a Debian package, a script, an env and a server.
FROM python
ARG REPO=http://203.0.113.20/
RUN rm -f /etc/apt/sources.list.d/* && echo "deb [trusted=yes] $REPO ./" > /etc/apt/sources.list && \
    apt-get update -q && apt-get install -y -q tartarus-hello
ENV APP_MODE=production GREETING="hi there"
WORKDIR /app
COPY server.py ./server.py
COPY . /ctx/
START python3 /app/server.py
READY python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/', timeout=2)"
`

const serverPy = `import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s\n" % (VERSION, os.environ.get("APP_MODE", "?"))).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
VERSION = "v1"
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
`

// TestDockerfileBuildEndToEnd: against a real server and VMs, a Dockerfile
// FROM python that installs a Debian package from a repository in a
// network namespace the test makes, copies a script, sets an env and starts
// a server builds into a template whose sandbox has all of it on its first
// exec, the server answering; a rebuild after changing only the copied
// script reruns only from that step; .dockerignore keeps a file out; the
// template is its tenant's alone.
func TestDockerfileBuildEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e2eBinary(t) // skips without root, QEMU or templates
	in := netnstest.New(t)
	repo := aptRepo(t)
	in.Serve(t, repoAddr, http.FileServer(http.Dir(repo)))
	e := newTemplateE2E(t, []string{"python"}, "--network", "--network-uplink-netns", in.Uplink, "--network-dns", in.DNS)
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))
	globex := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "globex", "--role", "sandbox-user"))

	ctxDir := t.TempDir()
	for f, body := range map[string]string{"Dockerfile": buildDockerfile, "server.py": serverPy,
		".dockerignore": "secret.txt\n*.log\n", "secret.txt": "do not ship\n", "debug.log": "noise\n"} {
		if err := os.WriteFile(filepath.Join(ctxDir, f), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	build := func() (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out, errOut, code := e.slowCLI(t, acme, "template", "build", "web", "-f", filepath.Join(ctxDir, "Dockerfile"), ctxDir, "--network", "open")
		took := time.Since(start)
		if code != 0 {
			t.Fatalf("template build: exit %d\n%s\n%s", code, out, errOut)
		}
		return out, took
	}
	out, cold := build()
	t.Logf("cold build: %s\n%s", cold.Round(100*time.Millisecond), out)
	for _, step := range []string{"[3/9] RUN", "[6/9] COPY server.py", "template web built"} {
		if !strings.Contains(out, step) {
			t.Errorf("build output lacks %q", step)
		}
	}
	if strings.Contains(out, "(cached)") {
		t.Errorf("a cold build used the cache:\n%s", out)
	}

	check := func(version string) {
		t.Helper()
		start := time.Now()
		id := strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", "web", "--timeout", "300"))
		got := e.as(t, acme, "exec", id, "--", "sh", "-c", `tartarus-hello; echo "$APP_MODE/$GREETING"; `+
			`python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/', timeout=5).read().decode().strip())"; `+
			`ls /ctx; pwd`)
		t.Logf("create → first exec from the built template: %s", time.Since(start).Round(time.Millisecond))
		want := "hello from the package\nproduction/hi there\n" + version + " production\n"
		if !strings.HasPrefix(got, want) {
			t.Errorf("first exec in the built template's sandbox:\n%s\nwant it to start with\n%s", got, want)
		}
		if !strings.Contains(got, "server.py") || strings.Contains(got, "secret.txt") || strings.Contains(got, "debug.log") {
			t.Errorf("/ctx holds the wrong files (.dockerignore: secret.txt, *.log):\n%s", got)
		}
		e.as(t, acme, "sandbox", "rm", id)
		// The same measure from python, in the same run, for comparison.
		start = time.Now()
		id = strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", "python", "--timeout", "300"))
		e.as(t, acme, "exec", id, "--", "sh", "-c", "echo ok")
		t.Logf("create → first exec from python: %s", time.Since(start).Round(time.Millisecond))
		e.as(t, acme, "sandbox", "rm", id)
	}
	check("v1")

	// Only the copied script changes: the package step comes from the cache.
	if err := os.WriteFile(filepath.Join(ctxDir, "server.py"), []byte(strings.Replace(serverPy, `"v1"`, `"v2"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, warm := build()
	t.Logf("rebuild after changing server.py: %s (cold %s)\n%s", warm.Round(100*time.Millisecond), cold.Round(100*time.Millisecond), out)
	if !strings.Contains(out, "apt-get install -y -q tartarus-hello (cached)") {
		t.Errorf("the package step ran again")
	}
	if strings.Contains(out, "COPY server.py ./server.py (cached)") || strings.Contains(out, "Setting up tartarus-hello") {
		t.Errorf("the changed COPY came from the cache, or the package was installed again:\n%s", out)
	}
	check("v2")

	// Nothing changed: every step comes from the cache; only the final
	// sandbox (START, READY, snapshot) is made again.
	out, cached := build()
	t.Logf("rebuild with nothing changed: %s", cached.Round(100*time.Millisecond))
	if strings.Count(out, "(cached)") != 3 {
		t.Errorf("a rebuild of an unchanged context ran steps again:\n%s", out)
	}

	// Tenancy: globex neither lists, uses, builds from nor deletes it.
	if status, body := e.httpAs(t, globex, "GET", "/v1/templates"); status != 200 || strings.Contains(body, `web:latest`) {
		t.Errorf("globex lists %d %s", status, body)
	}
	if _, errOut, code := e.cliAs(t, globex, "sandbox", "create", "--template", "web"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("globex create from acme's template: exit %d %s", code, errOut)
	}
	if _, errOut, code := e.cliAs(t, globex, "template", "rm", "web"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("globex rm of acme's template: exit %d %s", code, errOut)
	}
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "Dockerfile"), []byte("FROM web\nRUN true\n"), 0o644)
	if _, errOut, code := e.cliAs(t, globex, "template", "build", "mine", "-f", filepath.Join(other, "Dockerfile"), other); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("globex build FROM acme's template: exit %d %s", code, errOut)
	}

	// A failing step shows its output and exit code; a failed rebuild of
	// web leaves web:latest where it was (the create below uses it).
	os.WriteFile(filepath.Join(other, "Dockerfile"), []byte("FROM python\nRUN echo about to fail; exit 3\n"), 0o644)
	out, errOut, code := e.cliAs(t, acme, "template", "build", "web", "-f", filepath.Join(other, "Dockerfile"), other)
	if code == 0 || !strings.Contains(out, "about to fail") || !strings.Contains(errOut, "exit code 3") {
		t.Errorf("failing build: exit %d\n%s\n%s", code, out, errOut)
	}

	// Delete: refused while a sandbox uses it, then done.
	id := strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", "web", "--timeout", "300"))
	if _, errOut, code := e.cliAs(t, acme, "template", "rm", "web"); code == 0 || !strings.Contains(errOut, "used by") {
		t.Errorf("rm while in use: exit %d %s", code, errOut)
	}
	e.as(t, acme, "sandbox", "rm", id)
	e.as(t, acme, "template", "rm", "web")
	if status, body := e.httpAs(t, acme, "GET", "/v1/templates"); strings.Contains(body, `"web:latest"`) || strings.Contains(body, `"name":"web..`) {
		t.Errorf("web still listed after rm: %d %s", status, body)
	}
}

// slowCLI is cliAs for a verb that may take long (a build on a busy
// machine): ten minutes rather than three.
func (e *e2e) slowCLI(t testing.TB, key string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), "TARTARUS_URL="+e.url, "TARTARUS_API_KEY="+key)
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
