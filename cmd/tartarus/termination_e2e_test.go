package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestTerminationEndToEnd ends real microVMs through Thanatos: a program
// trapping SIGTERM writes its state within the grace period, the
// checkpoint taken after draining holds that file and a running process's
// memory, a sandbox created from the checkpoint has both, and a program
// ignoring SIGTERM is killed at the deadline.
func TestTerminationEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newE2E(t)

	id := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--template", "base", "--timeout", "900"))
	// One program saves its state on SIGTERM and exits; another ignores
	// SIGTERM and keeps counting in memory.
	e.cli(t, 0, "", "exec", id, "--", "sh", "-c",
		`setsid sh -c 'trap "echo saved-on-term > /tmp/state; exit 0" TERM; while :; do sleep 0.1; done' </dev/null >/dev/null 2>&1 &
		 setsid sh -c 'trap "" TERM; i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &`)
	before := e.waitCounter(t, id, 3)

	out := e.cli(t, 0, "", "sandbox", "rm", id, "--grace", "3s", "--checkpoint")
	var st tartarus.TerminationStatus
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "termination", id, "-o", "json")), &st); err != nil {
		t.Fatalf("termination of %s: %v (rm printed %q)", id, err, out)
	}
	if st.Phase != tartarus.PhaseCompleted || st.CheckpointID == "" || st.Reason != tartarus.ReasonUserRequest {
		t.Fatalf("termination: %+v", st)
	}
	for _, p := range []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining,
		tartarus.PhaseCheckpointing, tartarus.PhaseTerminating, tartarus.PhaseCompleted} {
		if st.Started(p).IsZero() {
			t.Errorf("termination never entered %s: %+v", p, st.Phases)
		}
	}
	// The counter ignores SIGTERM, so draining lasts the whole grace
	// period, whose deadline is fixed when the termination is initiated
	// (the signal goes out a moment later).
	if d := st.Started(tartarus.PhaseCheckpointing).Sub(st.Started(tartarus.PhaseInitiated)); d < 3*time.Second {
		t.Errorf("initiated to checkpointing took %v, want the 3s grace period (a process ignoring SIGTERM still ran)", d)
	}
	t.Logf("phases: %+v", st.Phases)
	var sb tartarus.Sandbox
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "get", id, "-o", "json")), &sb); err != nil || sb.State != tartarus.StateTerminated {
		t.Fatalf("sandbox after its termination: %+v %v", sb, err)
	}
	if e.cli(t, 0, "", "checkpoint", "ls") == "" {
		t.Error("checkpoint ls lists nothing")
	}

	// A sandbox from the checkpoint: the saved file, and the counter
	// running on from where it was (its memory came along).
	kid := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--from-checkpoint", st.CheckpointID, "--timeout", "900"))
	if got := e.cli(t, 0, "", "exec", kid, "--", "cat", "/tmp/state"); got != "saved-on-term\n" {
		t.Errorf("state file in the restored sandbox: %q", got)
	}
	if n := e.counter(t, kid); n < before {
		t.Errorf("restored counter %d < %d before the checkpoint: the process restarted", n, before)
	}
	e.waitCounter(t, kid, before+3)

	// A sandbox whose program ignores SIGTERM ends at the deadline, not
	// before, and not much after.
	e.cli(t, 0, "", "exec", kid, "--", "sh", "-c", `pkill -f saved-on-term; true`)
	t0 := time.Now()
	e.cli(t, 0, "", "sandbox", "rm", kid, "--grace", "2s")
	took := time.Since(t0)
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "termination", kid, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	over := st.Started(tartarus.PhaseTerminating).Sub(st.GraceDeadline)
	t.Logf("ignoring SIGTERM: killed %v after the deadline; rm took %v; exit code %v", over, took, *st.ExitCode)
	if over < 0 || st.ExitCode == nil || *st.ExitCode != 137 {
		t.Errorf("a program ignoring SIGTERM: terminating started %v after the deadline, exit %v; want at the deadline, 137", over, st.ExitCode)
	}
	// kill -9 of the server while a termination drains: the next start
	// finishes it from its recorded phase, at its recorded deadline.
	crash := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--template", "base", "--timeout", "900"))
	e.cli(t, 0, "", "exec", crash, "--", "sh", "-c",
		`setsid sh -c 'trap "" TERM; while :; do sleep 0.1; done' </dev/null >/dev/null 2>&1 &`)
	e.cli(t, 0, "", "sandbox", "rm", crash, "--grace", "8s", "--wait=false")
	waitPhase := func(want tartarus.TerminationPhase) tartarus.TerminationStatus {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var st tartarus.TerminationStatus
			if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "termination", crash, "-o", "json")), &st); err == nil && st.Phase == want {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("termination of %s never reached %s", crash, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	draining := waitPhase(tartarus.PhaseDraining)
	e.kill(t)
	e.start(t)
	done := waitPhase(tartarus.PhaseCompleted)
	if !done.GraceDeadline.Equal(draining.GraceDeadline) || done.Started(tartarus.PhaseTerminating).Before(draining.GraceDeadline) {
		t.Errorf("resumed termination: deadline %v (was %v), terminating at %v", done.GraceDeadline, draining.GraceDeadline, done.Started(tartarus.PhaseTerminating))
	}
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "get", crash, "-o", "json")), &sb); err != nil || sb.State != tartarus.StateTerminated {
		t.Errorf("sandbox after a resumed termination: %+v %v", sb, err)
	}
	t.Logf("resumed after kill -9: phases %+v", done.Phases)
	if left := e.qemus(t); len(left) != 0 {
		t.Errorf("QEMU processes left: %v", left)
	}
}
