package netns_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
)

// childEnv makes this test binary the "agent" that TestReconcileAfterKill
// kills: "uplink,dns,prefix".
const childEnv = "TARTARUS_NETNS_CHILD"

// TestChildAgent is not a test on its own: run by TestReconcileAfterKill,
// it creates sandbox networks, says so, and waits to be killed.
func TestChildAgent(t *testing.T) {
	v := os.Getenv(childEnv)
	if v == "" {
		t.Skip("helper process for TestReconcileAfterKill")
	}
	f := strings.Split(v, ",")
	m, err := netns.New(context.Background(), netns.Config{UplinkNetns: f[0], DNSUpstream: f[1], NetnsPrefix: f[2],
		LogGroup: 7412}) // the parent's Manager holds the default group
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for i := range 5 {
		if _, err := m.Create(context.Background(), fmt.Sprintf("k%d", i), netns.Spec{
			Policy: netns.Policy{Mode: netns.ModeRestricted, Allow: rules(t, "allowed.example")}, EgressBitsPerSec: 1e7}); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	// Half-built sixth one when the kill lands, as often as not.
	go func() {
		_, _ = m.Create(context.Background(), "k5", netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}})
	}()
	time.Sleep(time.Minute)
}

// TestReconcileAfterKill kills -9 a process that owns sandbox networks and
// has a new Manager remove everything no live sandbox owns.
func TestReconcileAfterKill(t *testing.T) {
	in, m := setup(t)
	before := snapshot(t, in, m)
	prefix := m.NetnsName("")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestChildAgent$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{in.Uplink, in.DNS, prefix}, ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	ready := false
	for sc.Scan() {
		if line := sc.Text(); line == "ready" {
			ready = true
			break
		} else if strings.HasPrefix(line, "error") {
			t.Fatal(line)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if !ready {
		t.Fatal("child never got ready")
	}
	if snapshot(t, in, m) == before {
		t.Fatal("the child left nothing to clean up: the test proves nothing")
	}
	// m shares the uplink and prefix with the dead child, like a restarted agent.
	removed, err := m.Reconcile(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) < 5 {
		t.Errorf("removed %v, want k0…k4 at least", removed)
	}
	if after := snapshot(t, in, m); after != before {
		t.Fatalf("leftovers after kill -9 and reconcile:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
