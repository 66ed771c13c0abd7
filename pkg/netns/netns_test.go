package netns_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
)

// setup builds a stand-in internet and a Manager whose uplink is in it.
func setup(t *testing.T) (*netnstest.Internet, *netns.Manager) {
	t.Helper()
	in := netnstest.New(t)
	ctx := context.Background()
	m, err := netns.New(ctx, netns.Config{
		UplinkNetns: in.Uplink,
		DNSUpstream: in.DNS,
		NetnsPrefix: fmt.Sprintf("tx%04x-", mrand.IntN(1<<16)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := m.Reconcile(context.Background(), nil); err != nil {
			t.Errorf("reconcile: %v", err)
		}
		m.Close()
	})
	return in, m
}

func create(t *testing.T, m *netns.Manager, id string, spec netns.Spec) *netns.Sandbox {
	t.Helper()
	sb, err := m.Create(context.Background(), id, spec)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func rules(t *testing.T, s ...string) []netns.Rule {
	t.Helper()
	var out []netns.Rule
	for _, x := range s {
		r, err := netns.ParseRule(x)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// get fetches url from inside the sandbox namespace.
func get(sb *netns.Sandbox, in *netnstest.Internet, url string) ([]byte, error) {
	c := netnstest.Client(sb.Netns, &tls.Config{RootCAs: in.CA})
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// dialRaw tries a TCP connection from the sandbox namespace.
func dialRaw(sb *netns.Sandbox, addr string) error {
	return netns.Do(sb.Netns, func() error {
		c, err := net.DialTimeout("tcp4", addr, 1500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
}

func TestOpenDownloadsBigFile(t *testing.T) {
	in, m := setup(t)
	sb := create(t, m, "open1", netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}})
	body, err := get(sb, in, "http://allowed.example/big")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != in.BigSHA256 || len(body) != netnstest.BigSize {
		t.Fatalf("got %d bytes sha256 %s, want %d bytes %s", len(body), got, netnstest.BigSize, in.BigSHA256)
	}
	if _, err := get(sb, in, "https://tls.example/"); err != nil {
		t.Fatalf("https: %v", err)
	}
}

func TestRestricted(t *testing.T) {
	in, m := setup(t)
	// Bytes come with conntrack's destroy event: after TIME_WAIT (2 min by
	// default) and the next garbage-collection pass. This uplink is the
	// test's own, so shorten TIME_WAIT, and below reading the table makes
	// the kernel reap expired entries at once.
	if out, err := exec.Command("ip", "netns", "exec", in.Uplink, "sysctl", "-w", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1").CombinedOutput(); err != nil {
		t.Fatalf("sysctl: %v: %s", err, out)
	}
	sb := create(t, m, "restr1", netns.Spec{Policy: netns.Policy{
		Mode:  netns.ModeRestricted,
		Allow: rules(t, "allowed.example", "*.cdn.example", "tls.example"),
	}})
	for _, url := range []string{"http://allowed.example/hello", "http://a.cdn.example/hello", "https://tls.example/hello"} {
		if _, err := get(sb, in, url); err != nil {
			t.Errorf("%s: want allowed, got %v", url, err)
		}
	}
	if _, err := get(sb, in, "http://blocked.example/hello"); err == nil {
		t.Error("blocked.example: resolved and reached")
	}
	if err := dialRaw(sb, netnstest.OtherAddr.String()+":80"); err == nil {
		t.Error("literal IP of a disallowed host reached")
	}
	// The guest's own choice of DNS server is not answered.
	r := netnstest.Resolver(sb.Netns, netnstest.OtherDNSAddr.String()+":53")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := r.LookupHost(ctx, "allowed.example"); err == nil {
		t.Error("query to another DNS server answered")
	}
	// Not even when that server's address is allowed.
	if err := m.Update(context.Background(), "restr1", netns.Spec{Policy: netns.Policy{
		Mode:  netns.ModeRestricted,
		Allow: rules(t, "allowed.example", netnstest.OtherDNSAddr.String()),
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LookupHost(ctx, "allowed.example"); err == nil {
		t.Error("query to another DNS server answered though its address is allowed")
	}
	recs, _, err := m.Log("restr1")
	if err != nil {
		t.Fatal(err)
	}
	var sawDenied, sawAllowed, sawDNS bool
	for _, rec := range recs {
		switch {
		case rec.Rule == "dns" && !rec.Allowed:
			sawDNS = true
		case rec.Dst == netnstest.OtherAddr && !rec.Allowed && rec.Port == 80 && rec.Proto == "tcp":
			sawDenied = true
		case rec.Dst == netnstest.HTTPAddr && rec.Allowed && rec.Rule == "domain":
			sawAllowed = true
		}
	}
	// The allowed connections have ended: their bytes are in the log.
	var withBytes bool
	for range 50 {
		_ = exec.Command("ip", "netns", "exec", in.Uplink, "cat", "/proc/net/nf_conntrack").Run()
		recs, _, _ = m.Log("restr1")
		for _, rec := range recs {
			if rec.Rule == "domain" && rec.BytesOut > 0 && rec.BytesIn > 0 {
				withBytes = true
			}
		}
		if withBytes {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !withBytes {
		t.Errorf("no allowed record has its bytes: %+v", recs)
	}
	if !sawDenied || !sawAllowed || !sawDNS {
		t.Errorf("connection log lacks records (denied %v allowed %v dns %v): %+v", sawDenied, sawAllowed, sawDNS, recs)
	}
}

// Unreachable in every mode: the uplink's own services (loopback and its
// address), metadata, other sandboxes.
func TestAlwaysRefused(t *testing.T) {
	in, m := setup(t)
	other := create(t, m, "victim", netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}})
	// A service inside the other sandbox's namespace, on its guest address.
	var ln net.Listener
	if err := netns.Do(other.Netns, func() error {
		var err error
		ln, err = net.Listen("tcp4", "0.0.0.0:9999")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, mode := range []netns.Mode{netns.ModeNone, netns.ModeOpen, netns.ModeRestricted, netns.ModeMonitored} {
		t.Run(string(mode), func(t *testing.T) {
			id := "att-" + string(mode)
			sb := create(t, m, id, netns.Spec{Policy: netns.Policy{
				Mode:  mode,
				Allow: rules(t, "0.0.0.0/0", "metadata.example"),
			}})
			defer m.Destroy(context.Background(), id)
			hostPort := fmt.Sprint(netnstest.HostPort)
			for _, addr := range []string{
				"127.0.0.1:" + hostPort,
				net.JoinHostPort(netnstest.UplinkAddr.String(), hostPort),
				netnstest.MetadataAddr.String() + ":80",
				// the uplink end of the sandbox's own veth and the other sandbox's
				"10.229.0.1:" + hostPort,
				"10.229.0.2:9999",
				"10.229.0.1:9999",
			} {
				if err := dialRaw(sb, addr); err == nil {
					t.Errorf("%s reached %s", mode, addr)
				}
			}
			if _, err := get(sb, in, "http://metadata.example/"); err == nil {
				t.Errorf("%s reached metadata by name", mode)
			}
		})
	}
}

func TestPolicyUpdateWithinASecond(t *testing.T) {
	in, m := setup(t)
	_ = in
	sb := create(t, m, "upd1", netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}})
	target := netnstest.HTTPAddr.String() + ":80"
	if err := dialRaw(sb, target); err != nil {
		t.Fatal(err)
	}
	check := func(want bool, spec netns.Spec) {
		t.Helper()
		if err := m.Update(context.Background(), "upd1", spec); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Second)
		for {
			err := dialRaw(sb, target)
			if (err == nil) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("policy %v not enforced within a second (dial err %v)", spec.Policy, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	check(false, netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen, Deny: rules(t, "tcp:"+netnstest.HTTPAddr.String()+":80")}})
	check(true, netns.Spec{Policy: netns.Policy{Mode: netns.ModeRestricted, Allow: rules(t, netnstest.HTTPAddr.String()+"/32")}})
	check(false, netns.Spec{Policy: netns.Policy{Mode: netns.ModeNone}})
	check(true, netns.Spec{Policy: netns.Policy{Mode: netns.ModeMonitored}})
}

// TestBandwidth checks the tbf limits in steady state: the first MiB
// (TCP slow start, connection set-up) is left out of the measured rate.
func TestBandwidth(t *testing.T) {
	in, m := setup(t)
	const rate = 20_000_000 // bit/s
	sb := create(t, m, "bw1", netns.Spec{
		Policy:            netns.Policy{Mode: netns.ModeOpen},
		IngressBitsPerSec: rate,
		EgressBitsPerSec:  rate,
	})
	c := netnstest.Client(sb.Netns, nil)
	resp, err := c.Get("http://allowed.example/big")
	if err != nil {
		t.Fatal(err)
	}
	tr := &timedReader{r: resp.Body}
	n, err := io.Copy(io.Discard, tr)
	resp.Body.Close()
	if err != nil || n != netnstest.BigSize {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	checkRate(t, "ingress", n-warmup, time.Since(tr.warm), rate)

	// Upload: the receiver times it (the sender's socket buffer would hide
	// the start).
	resp, err = c.Post("http://allowed.example/sink", "application/octet-stream", strings.NewReader(string(in.Big())))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got, ns int64
	if _, err := fmt.Sscanf(string(body), "%d %d", &got, &ns); err != nil || got != netnstest.BigSize-netnstest.SinkWarmup {
		t.Fatalf("sink answered %q (%v)", body, err)
	}
	checkRate(t, "egress", got, time.Duration(ns), rate)
}

const warmup = 1 << 20

// timedReader notes when the first warmup bytes have passed through it.
type timedReader struct {
	r    io.Reader
	n    int64
	warm time.Time
}

func (t *timedReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.n += int64(n)
	if t.warm.IsZero() && t.n >= warmup {
		t.warm = time.Now()
	}
	return n, err
}

// checkRate compares goodput with the limit on the wire: TCP/IP/Ethernet
// headers take 66 of every 1514 bytes the shaper counts.
func checkRate(t *testing.T, what string, n int64, d time.Duration, limit float64) {
	t.Helper()
	got := float64(n*8) / d.Seconds()
	want := limit * 1448 / 1514
	t.Logf("%s: %d bytes in %v = %.2f Mbit/s goodput (limit %.1f on the wire = %.2f goodput)", what, n, d, got/1e6, limit/1e6, want/1e6)
	if got > want*1.1 || got < want*0.9 {
		t.Errorf("%s goodput %.2f Mbit/s, want %.2f ± 10%%", what, got/1e6, want/1e6)
	}
}

func TestCreateDestroyLeavesNothing(t *testing.T) {
	in, m := setup(t)
	before := snapshot(t, in, m)
	ctx := context.Background()
	for i := range 200 {
		id := fmt.Sprintf("cyc%d", i)
		if _, err := m.Create(ctx, id, netns.Spec{Policy: netns.Policy{Mode: netns.ModeRestricted, Allow: rules(t, "allowed.example", "tcp:*:443")}, IngressBitsPerSec: 1e8}); err != nil {
			t.Fatal(err)
		}
		if err := m.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// The agent creates and destroys concurrently.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				id := fmt.Sprintf("par%d-%d", g, i)
				if _, err := m.Create(ctx, id, netns.Spec{Policy: netns.Policy{Mode: netns.ModeMonitored}, EgressBitsPerSec: 1e8}); err != nil {
					errs <- err
					return
				}
				if err := m.Destroy(ctx, id); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if after := snapshot(t, in, m); after != before {
		t.Fatalf("leftovers after 200 cycles:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestReconcileAfterCrash leaves sandbox networks behind as a killed agent
// would, and has a new Manager remove what no live sandbox owns.
func TestReconcileAfterCrash(t *testing.T) {
	in, m := setup(t)
	before := snapshot(t, in, m)
	ctx := context.Background()
	spec := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}
	for _, id := range []string{"keep", "gone1", "gone2"} {
		create(t, m, id, spec)
	}
	m.Close() // the agent dies; its kernel state stays

	m2, err := netns.New(ctx, netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: strings.TrimSuffix(m.NetnsName(""), "")})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	removed, err := m2.Reconcile(ctx, map[string]bool{"keep": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 {
		t.Errorf("removed %v, want gone1 and gone2", removed)
	}
	sb, err := m2.Recover(ctx, "keep", spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(sb, in, "http://allowed.example/hello"); err != nil {
		t.Errorf("recovered sandbox: %v", err)
	}
	if err := m2.Destroy(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, in, m); after != before {
		t.Fatalf("leftovers:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// snapshot lists what the network layer could leak: namespaces of ours,
// links in the uplink, and our nft table's chains, sets and map entries.
func snapshot(t *testing.T, in *netnstest.Internet, m *netns.Manager) string {
	t.Helper()
	var b strings.Builder
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), m.NetnsName("")) {
			fmt.Fprintln(&b, "netns", e.Name())
		}
	}
	out, _ := exec.Command("ip", "-n", in.Uplink, "-o", "link", "show").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			fmt.Fprintln(&b, "link", f[1])
		}
	}
	out, _ = exec.Command("ip", "netns", "exec", in.Uplink, "nft", "list", "table", "inet", "tartarus").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map ") || strings.Contains(l, "jump sb") {
			fmt.Fprintln(&b, l)
		}
	}
	return b.String()
}

// TestLogByMode: monitored logs every connection, open only the denied
// ones; the Prometheus counters follow the log.
func TestLogByMode(t *testing.T) {
	in := netnstest.New(t)
	reg := prometheus.NewRegistry()
	m, err := netns.New(context.Background(), netns.Config{
		UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: fmt.Sprintf("tx%04x-", mrand.IntN(1<<16)), Metrics: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = m.Reconcile(context.Background(), nil); m.Close() })
	deny := rules(t, "tcp:"+netnstest.OtherAddr.String()+":80")
	for _, mode := range []netns.Mode{netns.ModeMonitored, netns.ModeOpen} {
		sb := create(t, m, "log-"+string(mode), netns.Spec{Policy: netns.Policy{Mode: mode, Deny: deny}})
		for range 3 {
			if err := dialRaw(sb, netnstest.HTTPAddr.String()+":80"); err != nil {
				t.Fatal(err)
			}
		}
		if err := dialRaw(sb, netnstest.OtherAddr.String()+":80"); err == nil {
			t.Fatalf("%s: denied address reached", mode)
		}
		wantAllowed := map[netns.Mode]int{netns.ModeMonitored: 3, netns.ModeOpen: 0}[mode]
		var allowed, denied int
		for range 20 { // NFLOG records arrive asynchronously
			recs, _, _ := m.Log("log-" + string(mode))
			allowed, denied = 0, 0
			for _, r := range recs {
				switch {
				case r.Allowed && r.Rule == "default" && r.Dst == netnstest.HTTPAddr:
					allowed++
				case !r.Allowed && r.Rule == "deny0" && r.Dst == netnstest.OtherAddr:
					denied++
				}
			}
			if allowed == wantAllowed && denied == 1 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if allowed != wantAllowed || denied != 1 {
			t.Errorf("%s: %d allowed and %d denied records, want %d and 1", mode, allowed, denied, wantAllowed)
		}
	}
	if got := counter(t, reg, "tartarus_network_connections_total", "verdict=allowed", "rule=default"); got != 3 {
		t.Errorf("allowed counter %v, want 3", got)
	}
	if got := counter(t, reg, "tartarus_network_connections_total", "verdict=denied", "rule=deny"); got != 2 {
		t.Errorf("denied counter %v, want 2", got)
	}
}

// counter reads the counter whose labels are exactly labels ("k=v").
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetName()+"="+l.GetValue())
			}
			if slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(labels))) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
