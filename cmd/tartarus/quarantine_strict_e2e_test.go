package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// strictPolicy holds with the network cut and the strict seccomp filter.
const strictPolicy = `isolation:
  network_mode: none
  seccomp_profile: strict
max_quarantine_duration: 1h
`

// TestQuarantineStrictSeccompEndToEnd quarantines a real microVM under
// seccomp_profile strict: its QEMU is restored under one more seccomp
// filter than it had, held (owner refused, examiner answered); after a
// server restart a hibernate and wake restores it strict again.
func TestQuarantineStrictSeccompEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	policyFile := filepath.Join(t.TempDir(), "quarantine.yaml")
	if err := os.WriteFile(policyFile, []byte(strictPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newE2E(t, "--quarantine-interval", "1s", "--quarantine-policy", policyFile)
	key := func(tenant, role string) string {
		return strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", tenant, "--role", role))
	}
	owner := key("acme", "sandbox-user")
	examiner := key("sec", "quarantine-examiner")

	id := strings.TrimSpace(e.as(t, owner, "sandbox", "create", "--template", "base", "--timeout", "900"))
	e.as(t, owner, "exec", id, "--", "sh", "-c", "echo before > /root/mark")
	pid0 := e.qemuPid(t, id)
	loose := seccompFilters(t, pid0)
	if st := procField(t, pid0, "Uid"); strings.HasPrefix(st, "0\t") {
		t.Skip("the server's QEMU is not jailed on this host; the strict filter needs the jail")
	}

	start := time.Now()
	e.as(t, owner, "sandbox", "quarantine", id, "--reason", "suspicious_behavior")
	// The QEMU is replaced (hibernate, wake under the filter) after the
	// evidence is taken.
	var d api.QuarantineDetail
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if err := json.Unmarshal([]byte(e.as(t, examiner, "quarantine", "show", id, "-o", "json")), &d); err != nil {
			t.Fatal(err)
		}
		var sb tartarus.Sandbox
		_ = json.Unmarshal([]byte(e.as(t, examiner, "sandbox", "get", id, "-o", "json")), &sb)
		if d.Record.SeccompProfile == "strict" && sb.State == tartarus.StateQuarantined && e.qemuPid(t, id) != pid0 {
			break
		}
		if len(d.Record.Notes) > 0 || time.Now().After(deadline) {
			t.Fatalf("not restored under the strict filter: state %s, record %+v", sb.State, d.Record)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("quarantine → restored under the strict filter: %v", time.Since(start))
	check := func(when string) {
		t.Helper()
		pid := e.qemuPid(t, id)
		if n := seccompFilters(t, pid); n != loose+1 {
			t.Errorf("%s: QEMU has %d seccomp filters, %d before the quarantine: want one more", when, n, loose)
		}
		if code, _, errs := e.runAs(t, owner, "exec", id, "--", "echo", "owner"); code == 0 || !strings.Contains(errs, "quarantined") {
			t.Errorf("%s: owner's exec: exit %d %q", when, code, errs)
		}
		if out := e.as(t, examiner, "exec", id, "--", "cat", "/root/mark"); strings.TrimSpace(out) != "before" {
			t.Errorf("%s: examiner's exec: %q", when, out)
		}
	}
	check("after the quarantine")

	// A restart forgets nothing: the next wake is strict too.
	e.kill(t)
	e.start(t)
	e.as(t, examiner, "quarantine", "hibernate", id)
	e.as(t, examiner, "quarantine", "wake", id)
	check("after a restart, a hibernate and a wake")

	e.as(t, examiner, "quarantine", "destroy", id)
}

// seccompFilters is the number of seccomp filters on pid.
func seccompFilters(t *testing.T, pid int) int {
	t.Helper()
	n, err := strconv.Atoi(procField(t, pid, "Seccomp_filters"))
	if err != nil {
		t.Fatalf("Seccomp_filters of %d: %v", pid, err)
	}
	return n
}

func procField(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
