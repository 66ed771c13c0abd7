package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// spinPolicy trips on two host readings in a row of the QEMU's busiest
// thread runnable more than 80 % of the time (an idle guest under TCG
// keeps about 12 %, even on a host loaded 15 times over its cores, where
// a spinning guest's CPU share, cpu_percent, may be as low as 17 %).
const spinPolicy = `auto_triggers:
  - name: cpu-spin
    condition: "host_counters && size(cpu_demand_history) >= 2 && cpu_demand_history[size(cpu_demand_history)-1] > 80.0 && cpu_demand_history[size(cpu_demand_history)-2] > 80.0"
    reason: resource_abuse
    enabled: true
isolation:
  network_mode: none
  record_network: true
max_quarantine_duration: 1h
`

// runAs runs a client verb with an API key and returns its exit code,
// stdout and stderr.
func (e *e2e) runAs(t *testing.T, key string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), "TARTARUS_URL="+e.url, "TARTARUS_DATA_DIR="+e.data, "TARTARUS_API_KEY="+key)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	} else if err != nil {
		t.Fatalf("tartarus %v: %v", args, err)
	}
	return 0, out.String(), errb.String()
}

// as runs a verb with a key and wants it to succeed.
func (e *e2e) as(t *testing.T, key string, args ...string) string {
	t.Helper()
	code, out, errs := e.runAs(t, key, args...)
	if code != 0 {
		t.Fatalf("tartarus %v: exit %d\nstdout: %.800s\nstderr: %.800s", args, code, out, errs)
	}
	return out
}

// TestQuarantineEndToEnd holds a real microVM: a guest that spins the CPU
// trips a CEL trigger and is contained (owner's exec refused, an
// examiner's answers), its evidence downloads with good checksums, an
// examination scores it, an invalid policy is refused with its position,
// the quarantine survives a server restart, a self-approval is refused and
// a second approver's release gives the owner the sandbox back.
func TestQuarantineEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	policyFile := filepath.Join(t.TempDir(), "quarantine.yaml")
	if err := os.WriteFile(policyFile, []byte(spinPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newE2E(t, "--quarantine-interval", "1s", "--quarantine-policy", policyFile)

	key := func(tenant, role string) string {
		return strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", tenant, "--role", role))
	}
	owner := key("acme", "sandbox-user")
	examiner := key("sec", "quarantine-examiner")
	approver1 := key("sec", "quarantine-approver")
	approver2 := key("sec", "quarantine-approver")

	id := strings.TrimSpace(e.as(t, owner, "sandbox", "create", "--template", "base", "--timeout", "900"))
	if out := e.as(t, owner, "exec", id, "--", "echo", "before"); out != "before\n" {
		t.Fatalf("owner exec before: %q", out)
	}
	// The first approver acts in the sandbox before it trips: it may not
	// approve the release later.
	e.as(t, approver1, "exec", id, "--", "true")

	e.as(t, owner, "exec", id, "--", "sh", "-c", `setsid sh -c 'echo $$ > /tmp/spin.pid; while :; do :; done' </dev/null >/dev/null 2>&1 &`)
	spinStart := time.Now()
	var sb tartarus.Sandbox
	for {
		if err := json.Unmarshal([]byte(e.as(t, owner, "sandbox", "get", id, "-o", "json")), &sb); err != nil {
			t.Fatal(err)
		}
		if sb.State == tartarus.StateQuarantined {
			break
		}
		if time.Since(spinStart) > 90*time.Second {
			logs, _ := os.ReadFile(e.logs)
			t.Fatalf("not quarantined 90 s after the spin began: %+v\n%s", sb, grepLines(logs, "typhon", "trigger", "quarantine"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	contained := time.Since(spinStart)
	t.Logf("spin → quarantined (contained) in %v (ticks every 1 s; the trigger wants two readings above 80 %% demand)", contained)

	code, _, errs := e.runAs(t, owner, "exec", id, "--", "echo", "owner")
	if code == 0 || !strings.Contains(errs, "quarantined") {
		t.Fatalf("owner's exec in a held sandbox: exit %d, %q", code, errs)
	}
	code, _, errs = e.runAs(t, owner, "cp", id+":/tmp/spin.pid", filepath.Join(t.TempDir(), "x"))
	if code == 0 || !strings.Contains(errs, "quarantined") {
		t.Fatalf("owner's file read in a held sandbox: exit %d, %q", code, errs)
	}
	if code, _, _ = e.runAs(t, owner, "sandbox", "rm", id); code == 0 {
		t.Fatal("owner removed a held sandbox")
	}

	// The record, once its evidence is in (the memory snapshot pauses the
	// VM for a moment: calls in that moment answer 409).
	var d api.QuarantineDetail
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := json.Unmarshal([]byte(e.as(t, examiner, "quarantine", "show", id, "-o", "json")), &d); err != nil {
			t.Fatal(err)
		}
		if !d.Record.CollectedAt.IsZero() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	rec := d.Record
	t.Logf("trip → contained %v, contained → evidence stored %v", rec.ContainedAt.Sub(rec.QuarantinedAt), rec.CollectedAt.Sub(rec.ContainedAt))
	if out := e.as(t, examiner, "exec", id, "--", "echo", "examiner"); out != "examiner\n" {
		t.Fatalf("examiner's exec: %q", out)
	}
	// The sandbox verbs do not hibernate a held sandbox, even for an
	// examiner (the quarantine's own verbs do: TestQuarantineSleepEndToEnd).
	if code, _, errs := e.runAs(t, examiner, "sandbox", "hibernate", id); code == 0 {
		t.Fatalf("a held sandbox hibernated: %q", errs)
	}
	t.Logf("record: status %s by %s trigger %q, %d evidence, notes %q", rec.Status, rec.QuarantinedBy, rec.Trigger, len(rec.Evidence), rec.Notes)
	if rec.QuarantinedBy != "typhon" || rec.Trigger != "cpu-spin" || rec.Reason != tartarus.QuarantineResourceAbuse {
		t.Fatalf("record: %+v", rec)
	}
	types := map[tartarus.EvidenceType]tartarus.EvidenceSource{}
	for _, ev := range rec.Evidence {
		types[ev.Type] = ev.Source
	}
	for typ, src := range map[tartarus.EvidenceType]tartarus.EvidenceSource{
		tartarus.EvidenceResourceSpike: tartarus.SourceHost, tartarus.EvidenceExecHistory: tartarus.SourceHost,
		tartarus.EvidenceScreenshot: tartarus.SourceHost, tartarus.EvidenceProcessTree: tartarus.SourceGuest,
		tartarus.EvidenceSnapshot: tartarus.SourceHost,
	} {
		if got, ok := types[typ]; !ok || got != src {
			t.Errorf("evidence %s: source %q (present %v), want %s", typ, got, ok, src)
		}
	}
	// The owner reads its own record, not the evidence of examiners' work.
	e.as(t, owner, "quarantine", "show", id)
	dir := filepath.Join(t.TempDir(), "evidence")
	out := e.as(t, examiner, "quarantine", "evidence", id, "-o", dir)
	if n := strings.Count(out, "checksum ok"); n < 4 {
		t.Fatalf("evidence download: %d verified\n%s", n, out)
	}
	t.Logf("evidence:\n%s", out)
	if ps, _ := filepath.Glob(filepath.Join(dir, "*-process_tree.txt")); len(ps) == 1 {
		if b, _ := os.ReadFile(ps[0]); !strings.Contains(string(b), "while") {
			t.Errorf("process tree lacks the spinner:\n%s", b)
		}
	}

	var rep tartarus.ExaminationReport
	if err := json.Unmarshal([]byte(e.as(t, examiner, "quarantine", "examine", id, "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("report: risk %.3f, %s, findings %+v", rep.RiskScore, rep.Recommendation, rep.Findings)
	hostCPU := false
	for _, f := range rep.Findings {
		hostCPU = hostCPU || (f.Category == "cpu" && f.Source == tartarus.SourceHost)
	}
	if rep.RiskScore <= 0 || rep.RiskScore > 1 || !hostCPU {
		t.Errorf("report: %+v", rep)
	}

	// An invalid trigger is refused with its position; the owner cannot
	// set the policy at all.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("auto_triggers:\n  - condition: \"cpu_percent > \"\n    reason: resource_abuse\n    enabled: true\n"), 0o600)
	code, _, errs = e.runAs(t, "", "quarantine", "policy", "set", bad)
	if code == 0 || !strings.Contains(errs, "line 1, column") {
		t.Fatalf("invalid policy: exit %d %q", code, errs)
	}
	if code, _, _ = e.runAs(t, owner, "quarantine", "policy", "set", policyFile); code == 0 {
		t.Fatal("the owner set the quarantine policy")
	}

	// A restart keeps the quarantine.
	e.kill(t)
	e.start(t)
	if code, _, errs = e.runAs(t, owner, "exec", id, "--", "echo", "owner"); code == 0 || !strings.Contains(errs, "quarantined") {
		t.Fatalf("after a restart, owner's exec: exit %d %q", code, errs)
	}
	if out := e.as(t, examiner, "exec", id, "--", "echo", "still"); out != "still\n" {
		t.Fatalf("after a restart, examiner's exec: %q", out)
	}
	if out := e.as(t, examiner, "quarantine", "ls", "--tenant", "*"); !strings.Contains(out, id) {
		t.Fatalf("quarantine ls after a restart:\n%s", out)
	}

	// Stop the spinner, then the two-person release.
	e.as(t, examiner, "exec", id, "--", "sh", "-c", "kill $(cat /tmp/spin.pid)")
	code, _, errs = e.runAs(t, approver1, "quarantine", "approve", id, "--reason", "mine")
	if code == 0 || !strings.Contains(errs, "second person") {
		t.Fatalf("self-approval: exit %d %q", code, errs)
	}
	if code, _, _ = e.runAs(t, examiner, "quarantine", "approve", id, "--reason", "no role"); code == 0 {
		t.Fatal("an examiner without the approver role released")
	}
	e.as(t, approver2, "quarantine", "approve", id, "--reason", "benign spin, stopped")
	if out := e.as(t, owner, "exec", id, "--", "echo", "back"); out != "back\n" {
		t.Fatalf("owner's exec after release: %q", out)
	}
	if err := json.Unmarshal([]byte(e.as(t, examiner, "quarantine", "show", id, "-o", "json")), &d); err != nil ||
		d.Record.Status != tartarus.QuarantineReleased || d.Record.Approval == nil || len(d.Reports) != 1 {
		t.Fatalf("after release: %+v %v", d.Record, err)
	}

	// A manual quarantine by the owner, destroyed by an examiner.
	e.as(t, owner, "sandbox", "quarantine", id, "--reason", "suspicious_behavior", "--note", "saw \x1b[31mthis\x7f")
	e.as(t, examiner, "quarantine", "destroy", id)
	if err := json.Unmarshal([]byte(e.as(t, owner, "sandbox", "get", id, "-o", "json")), &sb); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for sb.State != tartarus.StateTerminated && time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		_ = json.Unmarshal([]byte(e.as(t, owner, "sandbox", "get", id, "-o", "json")), &sb)
	}
	if sb.State != tartarus.StateTerminated {
		t.Fatalf("destroyed sandbox: %+v", sb)
	}
	var st tartarus.TerminationStatus
	if err := json.Unmarshal([]byte(e.as(t, owner, "sandbox", "termination", id, "-o", "json")), &st); err != nil || st.Reason != tartarus.ReasonPolicyViolation {
		t.Fatalf("termination: %+v %v", st, err)
	}
	if left := e.qemus(t); len(left) != 0 {
		t.Errorf("QEMU processes left: %v", left)
	}
}

// grepLines returns the lines of b that hold any of words.
func grepLines(b []byte, words ...string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
