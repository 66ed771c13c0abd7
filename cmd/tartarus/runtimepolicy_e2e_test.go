package main

import (
	"strings"
	"testing"
)

// TestRuntimeChoiceIsPolicyEndToEnd: against a real server with the
// built-in policy, a sandbox-user key that names docker is refused with a
// 403 naming the runtime and the permission; once the key also holds
// any-runtime the server lets the create through to the node (which does
// not enable docker here, so the node refuses it). No VM is booted.
func TestRuntimeChoiceIsPolicyEndToEnd(t *testing.T) {
	e := newE2E(t)
	user := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--role", "sandbox-user", "--name", "e2e user"))
	granted := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--role", "sandbox-user,any-runtime", "--name", "e2e granted"))
	for _, rt := range []string{"docker", "containerd"} {
		out, errOut, code := e.cliAs(t, user, "sandbox", "create", "--runtime", rt)
		if code == 0 || !strings.Contains(errOut, "may not create sandboxes in the "+rt+" runtime") ||
			!strings.Contains(errOut, "choose_runtime permission for runtime "+rt) {
			t.Errorf("sandbox-user --runtime %s: exit %d %q %q; want a 403 naming the runtime and choose_runtime", rt, code, out, errOut)
		}
	}
	out, errOut, code := e.cliAs(t, granted, "sandbox", "create", "--runtime", "docker")
	if code == 0 || strings.Contains(errOut, "choose_runtime") || !strings.Contains(errOut, "not enabled") {
		t.Errorf("any-runtime --runtime docker: exit %d %q %q; want the node's refusal, not the policy's", code, out, errOut)
	}
}
