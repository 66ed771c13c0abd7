package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestHeatEndToEnd drives heat classes through the API of a real server
// with real microVMs on a node capped at 700 MiB: a class's vCPUs, memory
// and disk throttle are what the guest and QEMU get; max_duration_s ends a
// sandbox on time through Thanatos (reason timeout); on the full node a
// create without queue_timeout_s is refused at once, a queued create times
// out cleanly, and another is served when room frees up.
func TestHeatEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	classes := filepath.Join(t.TempDir(), "classes.yaml")
	if err := os.WriteFile(classes, []byte(`classes:
  - {name: spark, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 30}
  - {name: duo, heat: warm, cpu_cores: 2, memory_mb: 384, max_duration_s: 300, disk_iops: 500}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newE2E(t, "--heat-classes", classes, "--capacity-memory-mb", "700")
	get := func(id string) tartarus.Sandbox {
		t.Helper()
		var sb tartarus.Sandbox
		if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "get", id, "-o", "json")), &sb); err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		return sb
	}
	create := func(args ...string) tartarus.Sandbox {
		t.Helper()
		var sb tartarus.Sandbox
		out := e.cli(t, 0, "", append([]string{"sandbox", "create", "--template", "base", "-o", "json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &sb); err != nil {
			t.Fatalf("create %v: %v: %q", args, err, out)
		}
		return sb
	}

	// The class sizes the VM: what the guest sees.
	duo := create("--class", "duo")
	if duo.State != tartarus.StateRunning || duo.CPUs != 2 || duo.MemoryMB != 384 || duo.Heat == nil ||
		duo.Heat.Rule != "resource_class" || duo.Heat.Class != "duo" || duo.Heat.Heat != "warm" || duo.Heat.DiskIOPS != 500 {
		t.Fatalf("create --class duo: %+v heat %+v", duo, duo.Heat)
	}
	if got := strings.TrimSpace(e.cli(t, 0, "", "exec", duo.ID, "--", "nproc")); got != "2" {
		t.Errorf("nproc in a duo sandbox: %q, want 2", got)
	}
	memKB, err := strconv.Atoi(strings.Fields(e.cli(t, 0, "", "exec", duo.ID, "--", "sh", "-c", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2"))[0])
	if err != nil || memKB > 384*1024 || memKB < 300*1024 {
		t.Errorf("MemTotal in a 384 MiB sandbox: %d kB (%v)", memKB, err)
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(e.qemuPid(t, duo.ID)), "cmdline"))
	if err != nil || !strings.Contains(string(cmdline), "throttling.iops-total=500") {
		t.Errorf("QEMU of a duo sandbox lacks its disk throttle: %v", err)
	}
	t.Logf("duo: nproc 2, MemTotal %d kB, heat %+v", memKB, *duo.Heat)
	if out := e.cli(t, 0, "", "heat", "explain", "--template", "base"); !strings.Contains(out, "cold") {
		t.Errorf("heat explain: %q", out)
	}

	// max_duration_s ends a sandbox on time, through Thanatos.
	short := create("--heat", "cold", "--max-duration", "5")
	if short.Heat == nil || short.Heat.MaxDurationS != 5 || short.MemoryMB != 256 {
		t.Fatalf("create --heat cold --max-duration 5: %+v", short)
	}
	t0 := time.Now()
	for get(short.ID).State != tartarus.StateTerminated {
		if time.Since(t0) > 60*time.Second {
			t.Fatalf("sandbox with max_duration_s 5 still %s after %v", get(short.ID).State, time.Since(t0))
		}
		time.Sleep(200 * time.Millisecond)
	}
	var st tartarus.TerminationStatus
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "sandbox", "termination", short.ID, "-o", "json")), &st); err != nil || st.Reason != tartarus.ReasonTimeout {
		t.Fatalf("termination of the timed-out sandbox: %+v %v", st, err)
	}
	// The watch starts when the sandbox runs, just before its create
	// returned at t0.
	ended := st.Started(tartarus.PhaseInitiated).Sub(t0)
	t.Logf("max_duration_s 5: termination (reason timeout) initiated %v after the create returned, sandbox terminated %v after it", ended, time.Since(t0))
	if ended < 4*time.Second || ended > 10*time.Second {
		t.Errorf("termination started %v after the create returned, want about 5s", ended)
	}

	// Fill the node: duo 384 + cold 256 = 640 of 700 MiB.
	filler := create("--heat", "cold", "--max-duration", "30")
	// Full: without a queue timeout the create is refused at once.
	out := e.cli(t, 1, "", "sandbox", "create", "--template", "base", "--heat", "cold")
	_ = out
	// With one, it waits; one whose wait is short times out cleanly.
	waiter := create("--heat", "cold", "--queue-timeout", "120", "--no-wait")
	loser := create("--heat", "cold", "--queue-timeout", "3", "--no-wait")
	if waiter.State != tartarus.StateQueued || waiter.Queue == nil || waiter.Queue.Position != 1 ||
		loser.State != tartarus.StateQueued || loser.Queue == nil || loser.Queue.Position != 2 {
		t.Fatalf("queued creates: %+v %+v / %+v %+v", waiter, waiter.Queue, loser, loser.Queue)
	}
	time.Sleep(5 * time.Second)
	if sb := get(loser.ID); sb.State != tartarus.StateFailed || !strings.Contains(sb.Error, "timed_out") {
		t.Errorf("create queued for 3s on a full node: %+v", sb)
	} else {
		t.Logf("timed out: %s", sb.Error)
	}
	if sb := get(waiter.ID); sb.State != tartarus.StateQueued || sb.Queue == nil || sb.Queue.Position != 1 {
		t.Errorf("waiting create: %+v", sb)
	}
	var heat struct {
		QueueDepth map[string]int `json:"queue_depth_by_heat"`
	}
	if err := json.Unmarshal([]byte(e.cli(t, 0, "", "heat", "-o", "json")), &heat); err != nil || heat.QueueDepth["cold"] != 1 {
		t.Errorf("heat metrics: %+v %v", heat, err)
	}
	// Room frees up: the waiting create is served.
	freed := time.Now()
	e.cli(t, 0, "", "sandbox", "rm", filler.ID)
	for {
		sb := get(waiter.ID)
		if sb.State == tartarus.StateRunning {
			t.Logf("queued create running %v after room was freed", time.Since(freed))
			break
		}
		if sb.State == tartarus.StateFailed || time.Since(freed) > 90*time.Second {
			t.Fatalf("queued create after room was freed: %+v", sb)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := e.cli(t, 0, "", "exec", waiter.ID, "--", "echo", "served"); got != "served\n" {
		t.Errorf("exec in the served sandbox: %q", got)
	}
	if out := e.cli(t, 0, "", "heat"); !strings.Contains(out, "cold") {
		t.Errorf("tartarus heat: %q", out)
	}
	e.cli(t, 0, "", "sandbox", "rm", duo.ID, waiter.ID)
}
