package containertest

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Network proves a container runtime's sandbox networks against a
// stand-in internet the test builds (pkg/netns/netnstest): in restricted
// mode an allowed name is reached, a disallowed name, a disallowed host's
// literal address, the host's services and a DNS server of the guest's
// choosing are not; a guest port is reached; after a restart of the
// runtime and the network manager (a new agent) Recover re-attaches the
// network with its policy; destroy leaves nothing behind. newRuntime makes
// the runtime under test over the network manager it is given, over the
// same state each time.
func Network(t *testing.T, img *tartarus.Image, newRuntime func(t *testing.T, nets container.Networks) tartarus.Runtime) {
	in := netnstest.New(t)
	ctx := context.Background()
	prefix := fmt.Sprintf("tc%04x-", mrand.IntN(1<<16))
	ncfg := netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: prefix}
	m, err := netns.New(ctx, ncfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := m.Reconcile(context.Background(), nil); err != nil {
			t.Errorf("reconcile: %v", err)
		}
		m.Close()
	})
	rt := newRuntime(t, m)
	before := in.State(t, prefix)
	fp, err := rt.Fingerprint(ctx)
	if err != nil || !fp.Capabilities.Network {
		t.Fatalf("fingerprint %+v %v: want the network capability", fp, err)
	}
	id := "net-" + strings.ToLower(rt.Name())
	cfg := &tartarus.VMConfig{ID: id, Template: img.Name, Image: img, CPUs: 1, MemoryMB: 256,
		Network: &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: []string{"allowed.example"}}}
	if _, err := rt.Create(ctx, cfg); err != nil {
		t.Fatalf("create: %v", err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			_ = rt.Destroy(context.Background(), id)
		}
	})
	if err := rt.Start(ctx, id); err != nil {
		t.Fatalf("start: %v", err)
	}
	// Exit codes only. Busybox's nc speaks HTTP (its static wget crashes
	// on this host) and nslookup resolves through the sandbox's resolver.
	get := func(hostPort string) string {
		return `printf 'GET / HTTP/1.0\r\nHost: x\r\n\r\n' | nc -w 5 ` + hostPort + ` | grep -q .`
	}
	byName := func(name string) string {
		return `ip=$(nslookup ` + name + ` | awk '/^Address/ {a=$NF} END {print a}'); [ -n "$ip" ] && [ "$ip" != "` +
			netns.GatewayAddr.String() + `:53" ] && ` + get("$ip 80")
	}
	for _, c := range []struct {
		what  string
		cmd   string
		reach bool
	}{
		{"allowed.example by name", byName("allowed.example"), true},
		{"blocked.example by name", byName("blocked.example"), false},
		{"blocked.example's literal address", get(netnstest.OtherAddr.String() + " 80"), false},
		{"the host's service on the uplink", get(fmt.Sprintf("%s %d", netnstest.UplinkAddr, netnstest.HostPort)), false},
		{"the metadata address", get(netnstest.MetadataAddr.String() + " 80"), false},
		{"a DNS server of the guest's choosing", "nslookup allowed.example " + netnstest.OtherDNSAddr.String(), false},
	} {
		res, out := run(t, rt, id, 30*time.Second, "sh", "-c", c.cmd)
		if got := res.ExitCode == 0; got != c.reach {
			t.Errorf("%s: exit %d %q, want reached=%v", c.what, res.ExitCode, out, c.reach)
		}
	}
	log, _, err := m.Log(id)
	if err != nil || len(log) == 0 {
		t.Errorf("connection log: %d records, %v: want the denied attempts", len(log), err)
	}

	// An exposed port: the host reaches a server in the sandbox through
	// its namespace.
	if res, out := run(t, rt, id, 10*time.Second, "sh", "-c", "(echo hi-from-guest | nc -l -p 8080 >/dev/null 2>&1 &) ; true"); res.ExitCode != 0 {
		t.Fatalf("start a listener: exit %d %q", res.ExitCode, out)
	}
	var got string
	for i := 0; i < 50 && got == ""; i++ {
		if c, err := m.DialGuest(ctx, id, 8080); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			got = strings.TrimSpace(string(b))
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if got != "hi-from-guest" {
		t.Errorf("guest port 8080 through DialGuest: %q", got)
	}

	// A new agent: a new manager and runtime over the same state.
	m.Close()
	if m, err = netns.New(ctx, ncfg); err != nil {
		t.Fatal(err)
	}
	rt = newRuntime(t, m)
	adopted, err := rt.Recover(ctx)
	if err != nil || len(adopted) != 1 || adopted[0].ID != id {
		t.Fatalf("recover: %v %v, want %s adopted", adopted, err, id)
	}
	if res, out := run(t, rt, id, 30*time.Second, "sh", "-c", byName("allowed.example")); res.ExitCode != 0 {
		t.Errorf("allowed.example after recover: exit %d %q", res.ExitCode, out)
	}
	if res, _ := run(t, rt, id, 30*time.Second, "sh", "-c", get(netnstest.OtherAddr.String()+" 80")); res.ExitCode == 0 {
		t.Error("blocked.example's address reached after recover")
	}

	if err := rt.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	destroyed = true
	if after := in.State(t, prefix); after != before {
		t.Errorf("left after destroy:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
