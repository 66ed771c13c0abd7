package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
