package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestClusterQuarantine holds a real microVM on a cluster of two replicas
// and two agents (node-b labelled quarantine=yes, snapshots and evidence
// on a real SeaweedFS, a stand-in internet per agent): a sandbox with a
// restricted network created at replica 1 is quarantined at replica 2;
// its owner's exec is refused at both replicas while an examiner's
// answers at both, and its network is cut (back to the owner's after the
// release); the evidence, stored once, downloads at
// replica 1 with good checksums; the examination runs at replica 2; a
// self-approval is refused and a second person's releases it. Then a
// trigger set at replica 1 trips on the ticking replica and, with
// quarantine_nodes set, moves the sandbox to node-b, held there; ordinary
// creates never land on node-b.
func TestClusterQuarantine(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e2eBinary(t) // skips without root, QEMU or templates
	s3 := erebustest.StartSeaweedFS(t)
	// Replicas (the evidence store) and agents (shared snapshots) read
	// the same credentials.
	t.Setenv("AWS_ACCESS_KEY_ID", s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3.SecretKey)
	// Each agent has its own stand-in internet (allowed.example on both).
	ins := []*netnstest.Internet{netnstest.New(t), netnstest.New(t)}
	prefixes := []string{"tqca-", "tqcb-"}
	t.Cleanup(func() { // after the cluster stopped: what a killed agent left
		ents, _ := os.ReadDir("/run/netns")
		for _, e := range ents {
			for _, p := range prefixes {
				if strings.HasPrefix(e.Name(), p) {
					_ = exec.Command("ip", "netns", "del", e.Name()).Run()
				}
			}
		}
	})
	c := newClusterWith(t, clusterOpts{replicas: 2, agents: 2,
		agentArgs: []string{"--snapshots", "s3://snapshots/cluster?endpoint=" + s3.Endpoint + "&tls=false", "--network"},
		agentFlags: func(i int) []string {
			f := []string{"--network-uplink-netns", ins[i].Uplink, "--network-dns", ins[i].DNS, "--network-netns-prefix", prefixes[i]}
			if i == 1 {
				f = append(f, "--labels", "quarantine=yes")
			}
			return f
		},
		replicaArgs: []string{"--auth", "on", "--quarantine-interval", "1s",
			"--quarantine-evidence-store", "s3://snapshots/evidence?endpoint=" + s3.Endpoint + "&tls=false"}})
	ctx := context.Background()
	key := func(tenant, role string) string {
		t.Helper()
		out, err := exec.Command(c.bin, "apikey", "create", "--database", c.pg.DSN, "--tenant", tenant, "--role", role).Output()
		if err != nil {
			t.Fatalf("apikey create %s %s: %v %s", tenant, role, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	keys := map[string]string{"owner": key("acme", "sandbox-user"), "examiner": key("sec", "quarantine-examiner"),
		"approver": key("sec", "quarantine-approver"), "admin": key("default", "platform-admin")}
	// as[who][i] is who's client of replica i.
	as := map[string][]*client.Client{}
	for who, k := range keys {
		for _, u := range c.urls {
			cl, err := client.New(u, k)
			if err != nil {
				t.Fatal(err)
			}
			as[who] = append(as[who], cl)
		}
	}
	owner, examiner, approver := as["owner"], as["examiner"], as["approver"]
	waitNodes(t, as["admin"][0], map[string]string{"node-a": "up", "node-b": "up"})

	sb, err := owner[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", MemoryMB: 256, TimeoutS: 1800,
		Network: &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: []string{"allowed.example"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := sb.ID
	if sb.Node != "node-a" {
		t.Fatalf("an ordinary create landed on %s: quarantine nodes take none", sb.Node)
	}
	execOut(t, owner[0], id, "sh", "-c", "echo kept > /tmp/kept")
	// fetch reports whether the guest reaches allowed.example, as who.
	fetch := func(t *testing.T, as *client.Client) bool {
		t.Helper()
		out, err := execTry(as, id, "python3", "-c", fetchPy, "http://allowed.example/hello")
		if err != nil {
			t.Fatal(err)
		}
		return strings.HasPrefix(strings.TrimSpace(out), "OK")
	}
	mode := func(t *testing.T) string {
		t.Helper()
		got, err := owner[0].GetSandbox(ctx, id)
		if err != nil || got.Network == nil {
			t.Fatalf("sandbox network: %+v, %v", got, err)
		}
		return got.Network.Mode
	}
	if !fetch(t, owner[0]) {
		t.Fatal("allowed.example unreachable before any quarantine")
	}

	t.Run("HeldAtEveryReplica", func(t *testing.T) {
		start := time.Now()
		rec, err := owner[1].Quarantine(ctx, id, &api.QuarantineBody{Reason: tartarus.QuarantineSuspiciousBehavior})
		if err != nil {
			t.Fatalf("quarantine at replica 2: %v", err)
		}
		t.Logf("quarantine at replica 2 answered in %v: contained %v after the record, evidence %v after that",
			time.Since(start), rec.ContainedAt.Sub(rec.QuarantinedAt), rec.CollectedAt.Sub(rec.ContainedAt))
		for i := range 2 {
			if got, err := owner[i].GetSandbox(ctx, id); err != nil || got.State != tartarus.StateQuarantined {
				t.Fatalf("sandbox at replica %d: %+v, %v; want quarantined", i+1, got, err)
			}
			if _, err := execTry(owner[i], id, "echo", "owner"); err == nil || !strings.Contains(err.Error(), "quarantined") {
				t.Fatalf("owner's exec at replica %d: %v; want refused", i+1, err)
			}
			if err := owner[i].WriteFile(ctx, id, "/tmp/x", 0o644, strings.NewReader("x")); err == nil {
				t.Fatalf("owner's file write at replica %d went through", i+1)
			}
			if out := execOut(t, examiner[i], id, "cat", "/tmp/kept"); out != "kept\n" {
				t.Fatalf("examiner's exec at replica %d: %q", i+1, out)
			}
		}
		// The policy's network mode (none) holds on the agent.
		if m := mode(t); m != string(tartarus.NetworkModeNone) || fetch(t, examiner[0]) {
			t.Fatalf("network while held: mode %q, or allowed.example still answers", m)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("EvidenceAndExamination", func(t *testing.T) {
		d, err := examiner[0].QuarantineDetail(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		rec := d.Record
		src := map[tartarus.EvidenceType]tartarus.EvidenceSource{}
		for _, ev := range rec.Evidence {
			src[ev.Type] = ev.Source
		}
		if src[tartarus.EvidenceExecHistory] != tartarus.SourceHost || src[tartarus.EvidenceScreenshot] != tartarus.SourceHost ||
			src[tartarus.EvidenceFileAccess] != tartarus.SourceHost || src[tartarus.EvidenceProcessTree] != tartarus.SourceGuest {
			t.Fatalf("evidence sources %v; notes %q", src, rec.Notes)
		}
		// Stored by replica 2, downloaded (every sha256 checked) at replica 1.
		dir := filepath.Join(t.TempDir(), "evidence")
		cmd := exec.Command(c.bin, "quarantine", "evidence", id, "-o", dir)
		cmd.Env = append(os.Environ(), "TARTARUS_URL="+c.urls[0], "TARTARUS_API_KEY="+keys["examiner"])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("quarantine evidence at replica 1: %v\n%s", err, out)
		}
		hist, _ := filepath.Glob(filepath.Join(dir, "*-exec_history.json"))
		if len(hist) != 1 {
			t.Fatalf("exec history downloaded: %v", hist)
		}
		if b, _ := os.ReadFile(hist[0]); !bytes.Contains(b, []byte("/tmp/kept")) {
			t.Fatalf("exec history lacks the owner's command: %.500s", b)
		}
		rep, err := examiner[1].Examine(ctx, id)
		if err != nil {
			t.Fatalf("examine at replica 2: %v", err)
		}
		t.Logf("report at replica 2: risk %.3f, %s, %d findings", rep.RiskScore, rep.Recommendation, len(rep.Findings))
		if d, err := examiner[0].QuarantineDetail(ctx, id); err != nil || d.Record.Status != tartarus.QuarantineExamining || len(d.Reports) != 1 {
			t.Fatalf("record at replica 1 after the examination: %+v, %v", d, err)
		}
	})

	t.Run("TwoPersonRelease", func(t *testing.T) {
		if _, err := owner[0].ApproveRelease(ctx, id, &api.ApproveBody{Reason: "mine"}); err == nil {
			t.Fatal("the owner approved the release of its own sandbox")
		}
		if _, err := examiner[0].ApproveRelease(ctx, id, &api.ApproveBody{Reason: "no role"}); err == nil {
			t.Fatal("an examiner without the approver role released it")
		}
		rec, err := approver[0].ApproveRelease(ctx, id, &api.ApproveBody{Reason: "benign"})
		if err != nil || rec.Status != tartarus.QuarantineReleased {
			t.Fatalf("release by a second person at replica 1: %+v, %v", rec, err)
		}
		// Replica 2 learns of the release from the shared records within
		// a second.
		var last error
		if !waitForQuiet(10*time.Second, func() bool { _, last = execTry(owner[1], id, "echo", "back"); return last == nil }) {
			t.Fatalf("owner's exec at replica 2 after the release: %v", last)
		}
		// The owner's own network is back.
		if m := mode(t); m != tartarus.NetworkRestricted || !fetch(t, owner[1]) {
			t.Fatalf("network after the release: mode %q, or allowed.example unreachable", m)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("TriggerMovesToQuarantineNode", func(t *testing.T) {
		p, err := as["admin"][0].QuarantinePolicy(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.QuarantineNodes = []string{"quarantine=yes"}
		p.AutoTriggers = []tartarus.AutoQuarantineTrigger{{Name: "scanner", Enabled: true, Reason: tartarus.QuarantineNetworkAnomaly,
			Condition: `exec_history.exists(c, c.contains("nmap"))`}}
		if _, err := as["admin"][0].SetQuarantinePolicy(ctx, p); err != nil {
			t.Fatalf("set a trigger and quarantine_nodes at replica 1: %v", err)
		}
		// Whichever replica ticks reads the policy replica 1 stored
		// within a second.
		waitFor(t, "the policy at replica 2", func() bool {
			p, err := as["admin"][1].QuarantinePolicy(ctx)
			return err == nil && len(p.QuarantineNodes) == 1
		})
		start := time.Now()
		execOut(t, owner[1], id, "echo", "nmap -p 1-1000 10.0.0.1")
		var rec *tartarus.QuarantineRecord
		waitFor(t, "the trigger to quarantine and move the sandbox", func() bool {
			d, err := examiner[1].QuarantineDetail(ctx, id)
			if err != nil || !d.Record.Status.Contained() || d.Record.QuarantinedBy != "typhon" || d.Record.CollectedAt.IsZero() {
				return false
			}
			rec = d.Record
			return len(rec.Notes) > 0 || rec.Node != "node-a"
		})
		t.Logf("exec → quarantined by the tick %v, contained %v after the record, evidence %v after that, record final %v; notes %q",
			rec.QuarantinedAt.Sub(start), rec.ContainedAt.Sub(rec.QuarantinedAt), rec.CollectedAt.Sub(rec.ContainedAt), time.Since(start), rec.Notes)
		if rec.Node != "node-b" || rec.Trigger == "" {
			t.Fatalf("held on %q by trigger %q, want node-b; notes %q", rec.Node, rec.Trigger, rec.Notes)
		}
		got, err := owner[0].GetSandbox(ctx, id)
		if err != nil || got.Node != "node-b" || got.State != tartarus.StateQuarantined {
			t.Fatalf("after the move: %+v, %v; want quarantined on node-b", got, err)
		}
		if out := execOut(t, examiner[0], id, "cat", "/tmp/kept"); out != "kept\n" {
			t.Fatalf("examiner's exec on the quarantine node: %q", out)
		}
		if _, err := execTry(owner[0], id, "echo", "owner"); err == nil {
			t.Fatal("owner's exec on the quarantine node went through")
		}
		if m := mode(t); m != string(tartarus.NetworkModeNone) || fetch(t, examiner[0]) {
			t.Fatalf("network on the quarantine node: mode %q, or allowed.example answers", m)
		}
		// Asleep and awake, held throughout, across replicas.
		if _, err := examiner[0].HibernateQuarantined(ctx, id); err != nil {
			t.Fatalf("hibernate the held sandbox at replica 1: %v", err)
		}
		if _, err := owner[1].Wake(ctx, id); err == nil {
			t.Fatal("the owner woke a held sandbox at replica 2")
		}
		if _, err := examiner[1].WakeQuarantined(ctx, id); err != nil {
			t.Fatalf("wake the held sandbox at replica 2: %v", err)
		}
		if got, err := owner[0].GetSandbox(ctx, id); err != nil || got.State != tartarus.StateQuarantined || got.Node != "node-b" {
			t.Fatalf("after a hibernate and wake: %+v, %v; want quarantined on node-b", got, err)
		}
		if _, err := execTry(owner[1], id, "echo", "owner"); err == nil {
			t.Fatal("owner's exec after the wake went through")
		}
		if out := execOut(t, examiner[1], id, "cat", "/tmp/kept"); out != "kept\n" {
			t.Fatalf("examiner's exec after the wake: %q", out)
		}
		// An ordinary create still stays off node-b.
		other, err := owner[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", MemoryMB: 128, TimeoutS: 600})
		if err != nil {
			t.Fatal(err)
		}
		if other.Node != "node-a" {
			t.Errorf("an ordinary create landed on %s", other.Node)
		}
		if _, err := owner[1].DeleteSandbox(ctx, other.ID); err != nil {
			t.Fatal(err)
		}
		if rec, err := examiner[1].DestroyQuarantined(ctx, id); err != nil || rec.Status != tartarus.QuarantineDestroyed {
			t.Fatalf("destroy at replica 2: %+v, %v", rec, err)
		}
		if got, err := owner[0].GetSandbox(ctx, id); err != nil || got.State != tartarus.StateTerminated {
			t.Fatalf("after the destroy: %+v, %v", got, err)
		}
	})
}
