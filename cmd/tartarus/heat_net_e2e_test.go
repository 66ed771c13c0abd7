package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestHeatNetworkBurst checks that a resource class's network burst
// becomes the bandwidth limit of a real sandbox's network: tbf qdiscs at
// the class's rate on both ends of its veth pair (what it sends, in its
// namespace; what it receives, in the uplink), and that a create asking
// for less keeps its own lower limit.
func TestHeatNetworkBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e2eBinary(t) // skips without root, QEMU or templates
	in := netnstest.New(t)
	classes := filepath.Join(t.TempDir(), "classes.yaml")
	if err := os.WriteFile(classes, []byte(`classes:
  - {name: spark, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 300}
  - {name: trickle, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 300, network_burst_mbps: 8}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	const prefix = "theat-"
	e := newE2E(t, "--heat-classes", classes, "--network", "--network-uplink-netns", in.Uplink, "--network-dns", in.DNS,
		"--network-netns-prefix", prefix)
	qdiscs := func(ns string) string {
		t.Helper()
		out, err := exec.Command("tc", "-n", ns, "qdisc", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("tc -n %s qdisc show: %v %s", ns, err, out)
		}
		return string(out)
	}
	for _, c := range []struct {
		args []string
		// want: the rates on the sandbox's side (egress) and the uplink
		// side (ingress), as tc prints them.
		egress, ingress string
	}{
		{[]string{"--class", "trickle", "--network", "open"}, "rate 8Mbit", "rate 8Mbit"},
		{[]string{"--class", "trickle", "--network", "open", "--egress-bps", "2000000"}, "rate 2Mbit", "rate 8Mbit"},
	} {
		var sb tartarus.Sandbox
		out := e.cli(t, 0, "", append([]string{"sandbox", "create", "--template", "base", "-o", "json"}, c.args...)...)
		if err := json.Unmarshal([]byte(out), &sb); err != nil {
			t.Fatalf("create %v: %v: %q", c.args, err, out)
		}
		if sb.Heat == nil || sb.Heat.NetworkMbps != 8 || sb.Network == nil {
			t.Fatalf("create %v: heat %+v network %+v", c.args, sb.Heat, sb.Network)
		}
		own := qdiscs(prefix + sb.ID)
		if !strings.Contains(own, "qdisc tbf") || !strings.Contains(own, c.egress) {
			t.Errorf("create %v: qdiscs in the sandbox's namespace lack tbf %s:\n%s", c.args, c.egress, own)
		}
		up := qdiscs(in.Uplink)
		if !strings.Contains(up, "qdisc tbf") || !strings.Contains(up, c.ingress) {
			t.Errorf("create %v: qdiscs in the uplink lack tbf %s:\n%s", c.args, c.ingress, up)
		}
		t.Logf("create %v: sandbox side %q, uplink %q", c.args, firstLine(own, "tbf"), firstLine(up, "tbf"))
		e.cli(t, 0, "", "sandbox", "rm", sb.ID)
	}
}

// firstLine is the first line of s that contains sub.
func firstLine(s, sub string) string {
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
