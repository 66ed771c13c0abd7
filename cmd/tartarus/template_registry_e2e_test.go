package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
)

// TestRegistryImportEndToEnd: against a real server and VMs, an image the
// test pushes with a private dockerd to a real registry (Debian's
// docker-registry on loopback) is pulled by the server and becomes a
// template whose sandbox boots with the image's env, and is a Dockerfile
// build's FROM; once a layer's bytes
// are changed in the registry's storage, the same image is refused (its
// digest does not match) and no template is made.
func TestRegistryImportEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	containertest.Require(t, "dockerd", "docker", "mke2fs", "docker-registry")
	e2eBinary(t)
	regAddr, storage := startRegistry(t)
	host := containertest.Dockerd(t)
	tree := filepath.Join(t.TempDir(), "rootfs")
	if err := containertest.BuildRootFS(tree); err != nil {
		t.Fatal(err)
	}
	rootTar := filepath.Join(t.TempDir(), "rootfs.tar")
	if out, err := exec.Command("tar", "-C", tree, "-cf", rootTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	docker := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("docker", append([]string{"-H", host}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("docker %v: %v\n%s", args, err, out)
		}
	}
	ref := regAddr + "/tartarus/app:1"
	// dockerd pushes to a loopback registry over plain HTTP by default.
	docker("import", "--change", "ENV GREETING=hello-registry", rootTar, ref)
	docker("push", ref)

	// The operator lets this server pull from the test's registry only.
	e := newTemplateE2E(t, []string{"base"}, "--registry", regAddr)
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))

	t.Run("Pull", func(t *testing.T) {
		out := e.as(t, acme, "template", "import", "from-registry", "--registry", ref)
		t.Log(strings.TrimSpace(out))
		id := strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", "from-registry", "--timeout", "300"))
		got := e.as(t, acme, "exec", id, "--", "sh", "-c", `echo "$GREETING"; cat /etc/hostname >/dev/null && echo busybox-root`)
		if got != "hello-registry\nbusybox-root\n" {
			t.Errorf("exec in the pulled template's sandbox: %q", got)
		}
		e.as(t, acme, "sandbox", "rm", id)
	})

	t.Run("BuildFrom", func(t *testing.T) {
		ctxDir := t.TempDir()
		df := filepath.Join(ctxDir, "Dockerfile")
		if err := os.WriteFile(df, []byte("FROM "+ref+"\nRUN echo \"$GREETING-built\" > /built\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log(strings.TrimSpace(e.as(t, acme, "template", "build", "built-from-registry", "-f", df, ctxDir)))
		id := strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", "built-from-registry", "--timeout", "300"))
		if got := e.as(t, acme, "exec", id, "--", "cat", "/built"); got != "hello-registry-built\n" {
			t.Errorf("/built in the built template's sandbox: %q", got)
		}
		e.as(t, acme, "sandbox", "rm", id)
	})

	t.Run("Refused", func(t *testing.T) {
		for _, c := range []struct{ name, ref, want string }{
			{"missing", regAddr + "/tartarus/none:1", "not found"},
			{"no-host", "tartarus/app:1", "registry's host"},
			// The server's own loopback services are not a registry it
			// may reach (the operator listed only the test's).
			{"not-allowed", "127.0.0.1:1/tartarus/app:1", "not one this server pulls from"},
		} {
			code, out, errOut := e.runAs(t, acme, "template", "import", c.name, "--registry", c.ref)
			if code == 0 || !strings.Contains(errOut, c.want) {
				t.Errorf("import %s: exit %d, stdout %q, stderr %q; want it refused with %q", c.ref, code, out, errOut, c.want)
			}
		}
	})

	t.Run("TamperedBlob", func(t *testing.T) {
		// The largest blob is the layer: change one byte of it, its size
		// kept, where the registry keeps it.
		var layer string
		var size int64
		filepath.Walk(filepath.Join(storage, "docker/registry/v2/blobs"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && fi.Name() == "data" && fi.Size() > size {
				layer, size = p, fi.Size()
			}
			return nil
		})
		if layer == "" {
			t.Fatal("no blob in the registry's storage")
		}
		b, err := os.ReadFile(layer)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(layer, b, 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := e.runAs(t, acme, "template", "import", "tampered", "--registry", ref)
		if code == 0 || !strings.Contains(errOut, "digest") {
			t.Errorf("the tampered image: exit %d, stdout %q, stderr %q; want it refused for its digest", code, out, errOut)
		}
		t.Logf("refused: %s", strings.TrimSpace(errOut))
		if status, body := e.httpAs(t, acme, "GET", "/v1/templates"); strings.Contains(body, `"tampered`) {
			t.Errorf("the refused template is listed: %d %s", status, body)
		}
	})
}

// startRegistry runs Debian's docker-registry (the CNCF distribution
// registry) on a free loopback port with its storage in a temporary
// directory, and returns its address and that directory.
func startRegistry(t *testing.T) (addr, storage string) {
	t.Helper()
	dir := t.TempDir()
	storage = filepath.Join(dir, "storage")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
`, storage, addr), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command("docker-registry", "serve", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("registry log:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr, storage
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the registry did not answer on %s: %v\n%s", addr, err, logs.String())
		}
	}
}
