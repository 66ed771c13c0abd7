package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// newTemplateE2E starts a server like newE2E, but over an images directory
// of its own: the tests here add templates, and the shared cache is only
// read. The cache's built templates are hard-linked in.
func newTemplateE2E(t testing.TB, templates []string, serverArgs ...string) *e2e {
	t.Helper()
	bin, cache := e2eBinary(t)
	e := &e2e{bin: bin, data: t.TempDir(), args: serverArgs}
	for _, name := range templates {
		src := filepath.Join(cache, "images", "templates", name)
		dst := filepath.Join(e.data, "images", "templates", name)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4", "manifest.json"} {
			if _, err := os.Stat(filepath.Join(src, f)); err != nil {
				t.Skipf("template %s is not built in %s: %v", name, cache, err)
			}
			// A link, or across file systems a symbolic link: both only read.
			if err := os.Link(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
				if err := os.Symlink(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	ln.Close()
	t.Cleanup(func() { e.cleanup(t) })
	e.start(t)
	return e
}

// TestSaveSandboxAsTemplateEndToEnd: against a real server and VMs, a
// tenant's running sandbox saved as a template yields sandboxes with its
// files and its process still running (the counter goes on from where it
// was, it does not start again); the original runs on; the template is the
// tenant's alone (another tenant neither lists nor uses it, nor saves the
// first tenant's sandbox); a name in use is refused.
func TestSaveSandboxAsTemplateEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newTemplateE2E(t, []string{"base"})
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))
	globex := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "globex", "--role", "sandbox-user"))
	run := func(key string, args ...string) string {
		t.Helper()
		out, errOut, code := e.cliAs(t, key, args...)
		if code != 0 {
			t.Fatalf("tartarus %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}
	counter := func(id string) int {
		t.Helper()
		var n int
		for range 3 {
			out := run(acme, "exec", id, "--", "sh", "-c", "cat /tmp/counter 2>/dev/null || echo 0")
			if _, err := fmt.Sscan(out, &n); err == nil {
				return n
			}
		}
		t.Fatalf("cannot read the counter of %s", id)
		return 0
	}

	id := strings.TrimSpace(run(acme, "sandbox", "create", "--template", "base", "--timeout", "600"))
	run(acme, "exec", id, "--", "sh", "-c", "mkdir -p /srv && echo saved-file > /srv/saved.txt && "+
		"setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &")
	waitFor(t, "the counter to reach 20", func() bool { return counter(id) >= 20 })

	start := time.Now()
	out := run(acme, "sandbox", "save", id, "snap-tpl")
	t.Logf("saved in %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	if !strings.Contains(out, "snap-tpl") {
		t.Errorf("save printed %q", out)
	}
	atSave := counter(id)
	waitFor(t, "the original's counter to go on", func() bool { return counter(id) > atSave })

	start = time.Now()
	child := strings.TrimSpace(run(acme, "sandbox", "create", "--template", "snap-tpl", "--timeout", "600"))
	if got := run(acme, "exec", child, "--", "cat", "/srv/saved.txt"); got != "saved-file\n" {
		t.Errorf("the sandbox from the template reads %q from /srv/saved.txt", got)
	}
	t.Logf("create → first exec from the saved template: %s", time.Since(start).Round(time.Millisecond))
	first := counter(child)
	if first < 20 {
		t.Errorf("the new sandbox's counter is %d: the process did not carry on from the save (>= 20)", first)
	}
	waitFor(t, "the new sandbox's counter to go on", func() bool { return counter(child) > first })

	// Tenancy: globex neither lists nor uses it, nor saves acme's sandbox.
	if status, body := e.httpAs(t, acme, "GET", "/v1/templates"); status != 200 || !strings.Contains(body, `"snap-tpl:latest"`) || !strings.Contains(body, `"tenant":"acme"`) {
		t.Errorf("acme lists %d %s; want its snap-tpl", status, body)
	}
	if status, body := e.httpAs(t, globex, "GET", "/v1/templates"); status != 200 || strings.Contains(body, "snap-tpl") {
		t.Errorf("globex lists %d %s; want no snap-tpl", status, body)
	}
	if out, errOut, code := e.cliAs(t, globex, "sandbox", "create", "--template", "snap-tpl"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("globex create from acme's template: exit %d %q %q; want not found", code, out, errOut)
	}
	if out, errOut, code := e.cliAs(t, globex, "sandbox", "save", id, "stolen"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("globex save of acme's sandbox: exit %d %q %q; want not found", code, out, errOut)
	}
	if out, errOut, code := e.cliAs(t, globex, "sandbox", "save", id, "snap-tpl"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("globex save under acme's name: exit %d %q %q; want not found", code, out, errOut)
	}

	// Tags: a second save is a new version that latest moves to; the
	// sandbox made from the first keeps its version, and deleting the tag
	// is refused while a sandbox uses the version it points at.
	run(acme, "exec", id, "--", "sh", "-c", "echo v2 > /srv/saved.txt")
	run(acme, "sandbox", "save", id, "snap-tpl")
	run(acme, "sandbox", "save", id, "snap-tpl:v2")
	for _, ref := range []string{"snap-tpl", "snap-tpl:v2"} {
		sb := strings.TrimSpace(run(acme, "sandbox", "create", "--template", ref, "--timeout", "600"))
		if got := run(acme, "exec", sb, "--", "cat", "/srv/saved.txt"); got != "v2\n" {
			t.Errorf("a sandbox from %s reads %q, want the second save's v2", ref, got)
		}
		run(acme, "sandbox", "rm", sb)
	}
	if got := run(acme, "exec", child, "--", "cat", "/srv/saved.txt"); got != "saved-file\n" {
		t.Errorf("the first template's sandbox reads %q after the tag moved", got)
	}
	if status, body := e.httpAs(t, acme, "GET", "/v1/templates"); !strings.Contains(body, `"snap-tpl:v2"`) {
		t.Errorf("acme lists %d %s; want snap-tpl:v2", status, body)
	}
	if status, body := e.httpAs(t, acme, "DELETE", "/v1/templates/snap-tpl:v2"); status != 204 {
		t.Errorf("delete snap-tpl:v2: %d %s", status, body)
	}
	if status, body := e.httpAs(t, acme, "DELETE", "/v1/templates/snap-tpl:v2"); status != 404 {
		t.Errorf("delete snap-tpl:v2 twice: %d %s; want 404", status, body)
	}
	if out, errOut, code := e.cliAs(t, acme, "sandbox", "save", id, "../etc"); code == 0 || !strings.Contains(errOut, "name") {
		t.Errorf("save as ../etc: exit %d %q %q; want an invalid name", code, out, errOut)
	}
	run(acme, "sandbox", "rm", child)
	run(acme, "sandbox", "rm", id)
}

// BenchmarkTemplateCreateExec measures create → first exec from a tenant's
// template (a python sandbox saved with a process running) beside the same
// from python, in one run on one server; each template is created from once
// first, so both are restores of a cached snapshot. Run it once:
//
//	TARTARUS_E2E=1 go test -run XXX -bench TemplateCreateExec -benchtime 1x ./cmd/tartarus/
func BenchmarkTemplateCreateExec(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	for b.Loop() {
		e := newTemplateE2E(b, []string{"python"})
		c := benchClient(b, e)
		ctx := context.Background()
		sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"sh", "-c",
			"setsid python3 -c 'import time\nwhile True: time.sleep(1)' </dev/null >/dev/null 2>&1 &"}}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.SaveTemplate(ctx, sb.ID, "bench-saved"); err != nil {
			b.Fatal(err)
		}
		c.DeleteSandbox(ctx, sb.ID)
		const n = 2
		times := map[string][]time.Duration{}
		for i := range n + 1 {
			for _, tpl := range []string{"python", "bench-saved"} {
				start := time.Now()
				sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: tpl})
				if err != nil {
					b.Fatalf("create from %s: %v", tpl, err)
				}
				out, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"echo", "hi"}})
				if err != nil || out.Stdout != "hi\n" {
					b.Fatalf("exec: %+v %v", out, err)
				}
				if i > 0 { // the first fills the node's snapshot cache
					times[tpl] = append(times[tpl], time.Since(start))
				}
				c.DeleteSandbox(ctx, sb.ID)
			}
		}
		for tpl, ds := range times {
			slices.Sort(ds)
			b.ReportMetric(float64(ds[0].Milliseconds()), tpl+"-min-ms")
			b.ReportMetric(float64(ds[len(ds)-1].Milliseconds()), tpl+"-max-ms")
		}
	}
}
