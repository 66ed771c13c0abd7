package cerberus

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const policyV1 = `roles:
  - name: reader
    permissions:
      - resource: sandbox
        actions: [read]
bindings:
  - identity: "user:bob"
    roles: [reader]
`

func TestPolicyReload(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(policyV1)
	var logs lockedBuffer
	src, err := LoadPolicyFile(path, clock, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var reloads []bool
	src.onReload = func(ok bool) { reloads = append(reloads, ok) }
	bob := &Identity{ID: "bob", Type: IdentityTypeUser}
	canDelete := func() bool {
		return src.Policy().Decide(bob, ActionDelete, Resource{Type: ResourceTypeSandbox}).Allowed
	}
	canRead := func() bool { return src.Policy().Decide(bob, ActionRead, Resource{Type: ResourceTypeSandbox}).Allowed }

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx, 2*time.Second); close(done) }()
	defer func() { cancel(); <-done }()
	tick := func() {
		t.Helper()
		// Wait for Run to arm its timer, fire it, and wait for the check to
		// finish (it re-arms afterwards).
		waitFor(t, func() bool { return clock.Timers() == 1 })
		clock.Advance(2 * time.Second)
		waitFor(t, func() bool { return clock.Timers() == 1 })
	}

	tick()
	if canDelete() || !canRead() || len(reloads) != 0 {
		t.Fatal("unchanged file changed the policy")
	}

	// A good change takes effect on the next poll.
	write(strings.Replace(policyV1, "[read]", "[read, delete]", 1))
	tick()
	if !canDelete() || len(reloads) != 1 || !reloads[0] {
		t.Fatalf("good change not in force (reloads %v)", reloads)
	}

	// A bad change is rejected with line and reason; the old policy stays.
	write(strings.Replace(policyV1, "[read]", "[read, destroy]", 1))
	tick()
	if !canDelete() || !canRead() {
		t.Fatal("bad file replaced the policy")
	}
	err = src.LastError()
	if err == nil || !strings.Contains(err.Error(), "line 5") || !strings.Contains(err.Error(), `unknown action "destroy"`) {
		t.Fatalf("LastError = %v", err)
	}
	if !strings.Contains(logs.String(), "policy file rejected") || !strings.Contains(logs.String(), "line 5") {
		t.Fatalf("log lacks the rejection: %s", logs.String())
	}
	tick() // the same bad content is not reported again
	if len(reloads) != 2 || reloads[1] {
		t.Fatalf("reloads %v", reloads)
	}

	// A cycle is also rejected.
	write("roles:\n  - name: a\n    inherits: [b]\n  - name: b\n    inherits: [a]\n")
	tick()
	if !canDelete() || !strings.Contains(src.LastError().Error(), "cycle") {
		t.Fatalf("cycle: %v", src.LastError())
	}

	// Fixing the file brings it back.
	write(policyV1)
	tick()
	if canDelete() || !canRead() || src.LastError() != nil {
		t.Fatal("fixed file not loaded")
	}

	// A file removed keeps the policy too.
	os.Remove(path)
	tick()
	if !canRead() || src.LastError() == nil {
		t.Fatal("removed file changed the policy")
	}
}

func TestLoadPolicyFileRefusesBadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(path, []byte("roles:\n  - name: a\n    permissions:\n      - resource: sandbox\n        actions: [fly]\n"), 0o644)
	_, err := LoadPolicyFile(path, newFakeClock(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "policy line 5") {
		t.Fatalf("got %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("condition not reached")
}
