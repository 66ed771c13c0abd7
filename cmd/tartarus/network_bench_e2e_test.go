package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// benchNetPy runs in the guest: "rate" opens N fresh connections with a
// small request each and prints their seconds; "big" downloads the
// stand-in's 10 MB /big and prints bytes and seconds.
const benchNetPy = `import sys, time, urllib.request
what, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.monotonic()
size = 0
for _ in range(n):
    size += len(urllib.request.urlopen(url, timeout=10).read())
print(size, time.monotonic() - t)
`

// BenchmarkServerNetwork measures sandbox networking through the real
// server's API (microvm on TCG here, jailed, on a stand-in internet), each
// figure beside its baseline in the same run: create by restore to a first
// exec without a network and with one (interleaved), download throughput
// and connection rate from the guest in open mode and through a restricted
// policy of 1,000 rules, and a policy update's PUT (which returns once the
// rules are committed) with a connection from the guest right after it
// checked to see the new policy. Run it once:
//
//	TARTARUS_BENCH_NETWORK=1 TARTARUS_E2E=1 go test -run XXX -bench ServerNetwork -benchtime 1x ./cmd/tartarus/
//
// It builds two python template snapshots and boots 16 sandboxes: minutes
// under TCG, past make test's budget for one benchmark run, so it runs only
// when TARTARUS_BENCH_NETWORK=1 (the netns benchmarks measure the same
// layer without VMs and do run there).
func BenchmarkServerNetwork(b *testing.B) {
	if testing.Short() {
		b.Skip("boots VMs")
	}
	if os.Getenv("TARTARUS_BENCH_NETWORK") != "1" {
		b.Skip("minutes of VMs under TCG: set TARTARUS_BENCH_NETWORK=1 to run it")
	}
	e2eBinary(b)
	in := netnstest.New(b)
	e := newE2E(b, "--network", "--network-uplink-netns", in.Uplink, "--network-dns", in.DNS,
		"--network-netns-prefix", "tbnet-")
	c := benchClient(b, e)
	ctx := context.Background()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	pct := func(ds []time.Duration, p int) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[(len(s)*p+99)/100-1]
	}
	for b.Loop() {
		// Create by restore → first exec, with and without a network.
		const n = 5 // pairs: make test runs this once, so it stays short
		createExec := func(net *tartarus.NetworkSpec) time.Duration {
			start := time.Now()
			sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", Network: net})
			if err != nil {
				b.Fatalf("create: %v", err)
			}
			if _, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"true"}}); err != nil {
				b.Fatal(err)
			}
			d := time.Since(start)
			if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
				b.Fatal(err)
			}
			return d
		}
		none := &tartarus.NetworkSpec{Mode: tartarus.NetworkNone}
		createExec(nil) // build both template snapshots first
		createExec(none)
		var without, with []time.Duration
		for range n {
			without = append(without, createExec(nil))
			with = append(with, createExec(none))
		}
		for name, ds := range map[string][]time.Duration{"create-exec-nonet": without, "create-exec-net": with} {
			b.ReportMetric(ms(pct(ds, 50)), name+"-p50-ms")
			b.ReportMetric(ms(pct(ds, 99)), name+"-p99-ms")
		}
		b.ReportMetric(ms(pct(with, 50)-pct(without, 50)), "net-added-p50-ms")

		// Throughput and connection rate: open, then 1,000 rules.
		rules := []string{"allowed.example"}
		for i := 0; len(rules) < 1000; i++ {
			rules = append(rules, fmt.Sprintf("192.0.2.%d:%d", i%256, 1000+i))
		}
		for _, pol := range []struct {
			name string
			spec *tartarus.NetworkSpec
		}{
			{"open", &tartarus.NetworkSpec{Mode: tartarus.NetworkOpen}},
			{"1000rules", &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: rules}},
		} {
			sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "python", Network: pol.spec})
			if err != nil {
				b.Fatalf("create %s: %v", pol.name, err)
			}
			size, secs := guestNet(b, c, sb.ID, "big", "http://allowed.example/big", 2)
			b.ReportMetric(float64(size)/secs/1e6, pol.name+"-MB/s")
			_, secs = guestNet(b, c, sb.ID, "rate", "http://allowed.example/hello", 50)
			b.ReportMetric(50/secs, pol.name+"-conn/s")
			if pol.name == "1000rules" {
				benchPolicyUpdate(b, c, sb.ID, rules)
			}
			if _, err := c.DeleteSandbox(ctx, sb.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// guestNet runs benchNetPy in the guest and returns its bytes and seconds.
func guestNet(b *testing.B, c *client.Client, id, what, url string, n int) (int64, float64) {
	b.Helper()
	res, err := c.Exec(context.Background(), id, &api.ExecRequest{
		Cmd: []string{"python3", "-c", benchNetPy, what, url, strconv.Itoa(n)}, TimeoutS: 300})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("guest %s %s: %v %+v", what, url, err, res)
	}
	f := strings.Fields(res.Stdout)
	if len(f) != 2 {
		b.Fatalf("guest %s: %q", what, res.Stdout)
	}
	size, _ := strconv.ParseInt(f[0], 10, 64)
	secs, _ := strconv.ParseFloat(f[1], 64)
	return size, secs
}

// benchPolicyUpdate times PUT /network that alternately denies and allows
// allowed.example (1,000 rules each time), and checks from the guest right
// after each that a new connection sees the new policy.
func benchPolicyUpdate(b *testing.B, c *client.Client, id string, rules []string) {
	b.Helper()
	ctx := context.Background()
	var puts []time.Duration
	for i := range 6 {
		deny := i%2 == 0
		spec := &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: rules}
		if deny {
			spec.Deny = []string{"allowed.example"}
		}
		start := time.Now()
		if _, err := c.SetNetwork(ctx, id, spec); err != nil {
			b.Fatal(err)
		}
		puts = append(puts, time.Since(start))
		res, err := c.Exec(ctx, id, &api.ExecRequest{Cmd: []string{"python3", "-c", fetchPy, "http://allowed.example/hello"}})
		if err != nil {
			b.Fatal(err)
		}
		if got := strings.HasPrefix(res.Stdout, "OK"); got == deny {
			b.Fatalf("update %d (deny=%v): the next connection got %q", i, deny, res.Stdout)
		}
	}
	slices.Sort(puts)
	b.ReportMetric(float64(puts[len(puts)/2].Microseconds())/1000, "policy-put-p50-ms")
	b.ReportMetric(float64(puts[len(puts)-1].Microseconds())/1000, "policy-put-max-ms")
}
