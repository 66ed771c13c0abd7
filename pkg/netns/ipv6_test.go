package netns_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
)

// TestIPv6HasNoPath: the stand-in internet serves HTTP over IPv6 and the
// uplink reaches it, yet from an open sandbox's namespace IPv6 goes
// nowhere: it is disabled on every interface (an address cannot even be
// added), and with that undone by hand (as a broken host might) the
// namespace's ip6 table, the uplink's input chain (no neighbour discovery)
// and its forward chain each drop it on their own; with all of them gone it
// gets through, so each wall is what stopped it.
func TestIPv6HasNoPath(t *testing.T) {
	in, m := setup(t)
	server := net.JoinHostPort(netnstest.HTTP6Addr.String(), "80")
	dial6 := func(ns string) error {
		return netns.Do(ns, func() error {
			c, err := net.DialTimeout("tcp6", server, 1500*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := dial6(netns.Path(in.Uplink)); err != nil {
		t.Fatalf("the uplink does not reach the IPv6 server, so the test proves nothing: %v", err)
	}
	sb := create(t, m, "six", netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen, Allow: rules(t, "0.0.0.0/0")}})
	name := m.NetnsName("six")

	// Disabled on every interface.
	err := netns.Do(sb.Netns, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifs {
			b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv6/conf", ifc.Name, "disable_ipv6"))
			if err != nil || strings.TrimSpace(string(b)) != "1" {
				t.Errorf("%s: disable_ipv6 = %q (%v)", ifc.Name, b, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", name, "-6", "addr", "add", "2001:db8:200::2/64", "dev", "eth0", "nodad").CombinedOutput(); err == nil {
		t.Errorf("an IPv6 address was added in the sandbox namespace: %s", out)
	}
	if err := dial6(sb.Netns); err == nil {
		t.Errorf("the sandbox reached %s over IPv6", server)
	}

	// Undo the first wall by hand and give IPv6 a route both ways.
	out, err := exec.Command("ip", "-n", in.Uplink, "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	var hostVeth string
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(f, ":"), "ttv"); ok {
			hostVeth = "ttv" + strings.SplitN(v, "@", 2)[0]
		}
	}
	if hostVeth == "" {
		t.Fatalf("no sandbox veth in the uplink:\n%s", out)
	}
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth0.disable_ipv6=0")
	sh("ip", "-n", name, "-6", "addr", "add", "2001:db8:200::2/64", "dev", "eth0", "nodad")
	sh("ip", "-n", name, "-6", "route", "add", "default", "via", "2001:db8:200::1")
	sh("ip", "netns", "exec", in.Uplink, "sysctl", "-qw", "net.ipv6.conf."+hostVeth+".disable_ipv6=0")
	sh("ip", "-n", in.Uplink, "-6", "addr", "add", "2001:db8:200::1/64", "dev", hostVeth, "nodad")
	sh("ip", "-n", in.Inet, "-6", "route", "add", "2001:db8:200::/64", "via", netnstest.Uplink6Addr.String())
	if err := dial6(sb.Netns); err == nil {
		t.Errorf("with IPv6 enabled by hand, the sandbox namespace reached %s", server)
	}
	// Each wall alone: the namespace's ip6 table goes, then the uplink's
	// input chain lets IPv6 in, then its forward chain lets it through (the
	// control); then the ip6 table alone comes back.
	sh("ip", "netns", "exec", name, "nft", "delete", "table", "ip6", "tartarus")
	if err := dial6(sb.Netns); err == nil {
		t.Errorf("without the namespace's ip6 table, the uplink answered IPv6 from the sandbox (its input chain refuses everything from a sandbox veth, neighbour discovery too)")
	}
	sh("ip", "netns", "exec", in.Uplink, "nft", "insert", "rule", "inet", "tartarus", "input", "meta", "nfproto", "ipv6", "accept")
	if err := dial6(sb.Netns); err == nil {
		t.Errorf("with only the uplink's forward chain left, it forwarded IPv6 from the sandbox to %s", server)
	}
	sh("ip", "netns", "exec", in.Uplink, "nft", "insert", "rule", "inet", "tartarus", "forward", "meta", "nfproto", "ipv6", "accept")
	if err := dial6(sb.Netns); err != nil {
		t.Errorf("control: with every wall gone the sandbox should reach %s, so the walls above were not what stopped it: %v", server, err)
		for _, c := range [][]string{{"ip", "-n", name, "-6", "addr"}, {"ip", "-n", name, "-6", "route"}, {"ip", "-n", name, "-6", "neigh"},
			{"ip", "-n", in.Uplink, "-6", "addr"}, {"ip", "-n", in.Uplink, "-6", "route"}, {"ip", "-n", in.Uplink, "-6", "neigh"},
			{"ip", "netns", "exec", in.Uplink, "nft", "list", "ruleset"}, {"ip", "netns", "exec", name, "nft", "list", "ruleset"},
			{"ip", "netns", "exec", in.Uplink, "sysctl", "net.ipv6.conf.all.forwarding"}} {
			out, _ := exec.Command(c[0], c[1:]...).CombinedOutput()
			t.Logf("%v:\n%s", c, out)
		}
	}
	ip6 := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
	ip6.Stdin = strings.NewReader(`add table ip6 tartarus
add chain ip6 tartarus input { type filter hook input priority filter; policy drop; }
add chain ip6 tartarus forward { type filter hook forward priority filter; policy drop; }
add chain ip6 tartarus output { type filter hook output priority filter; policy drop; }
`)
	if out, err := ip6.CombinedOutput(); err != nil {
		t.Fatalf("ip6 table: %v %s", err, out)
	}
	if err := dial6(sb.Netns); err == nil {
		t.Errorf("with only the namespace's ip6 table, the sandbox reached %s", server)
	}
}
