package microvm_test

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fetchPy fetches a URL in the guest and prints "OK <len> <sha256>" or
// "ERR <what>".
const fetchPy = `import urllib.request, hashlib, sys
try:
    d = urllib.request.urlopen(sys.argv[1], timeout=5).read()
    print("OK", len(d), hashlib.sha256(d).hexdigest())
except Exception as e:
    print("ERR", type(e).__name__, e)
`

// dnsPy asks the DNS server argv[1] for allowed.example directly, as a
// guest that ignores its resolver would; it prints "ANSWER" or "ERR ...".
const dnsPy = `import socket, sys
q = bytes.fromhex("12340100000100000000000007616c6c6f776564076578616d706c650000010001")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
try:
    s.sendto(q, (sys.argv[1], 53))
    s.recvfrom(512)
    print("ANSWER")
except Exception as e:
    print("ERR", type(e).__name__, e)
`

// TestNetwork boots real VMs with a NIC on the stand-in internet: open
// mode downloads 10 MB intact, restricted mode refuses a disallowed name
// and a disallowed literal IP, and a restored copy keeps the same guest
// address in its own namespace.
func TestNetwork(t *testing.T) {
	imgs := needImages(t)
	in := netnstest.New(t)
	ctx := context.Background()
	nets, err := netns.New(ctx, netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: "txvm-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := nets.Reconcile(context.Background(), nil); err != nil {
			t.Errorf("reconcile: %v", err)
		}
		nets.Close()
	})
	d, err := microvm.New(ctx, microvm.Config{
		StateDir:   t.TempDir(),
		Log:        testLogger(t),
		ProbeImage: imgs.base,
		ProbeCache: filepath.Join(imagesVal.dataDir, "kvm-probe.json"),
		Networks:   nets,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	start := func(t *testing.T, id string, pol netns.Policy) {
		t.Helper()
		if _, err := nets.Create(ctxT(t), id, netns.Spec{Policy: pol}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Create(ctxT(t), &tartarus.VMConfig{ID: id, Template: "python", Image: imgs.python, CPUs: 1, MemoryMB: 256}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = d.Destroy(context.Background(), id)
			_ = nets.Destroy(context.Background(), id)
		})
		if err := d.Start(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	}
	fetch := func(t *testing.T, id, url string) string {
		t.Helper()
		return strings.TrimSpace(run(t, d, id, "python3", "-c", fetchPy, url))
	}

	const id = "vm-net"
	start(t, id, netns.Policy{Mode: netns.ModeOpen})
	if got := run(t, d, id, "cat", "/etc/resolv.conf"); !strings.Contains(got, "nameserver "+netns.GatewayAddr.String()) {
		t.Errorf("guest resolv.conf %q", got)
	}
	wantBig := "OK 10485760 " + in.BigSHA256
	t.Run("OpenDownload", func(t *testing.T) {
		if got := fetch(t, id, "http://allowed.example/big"); got != wantBig {
			t.Fatalf("download: %q, want %q", got, wantBig)
		}
	})
	t.Run("Restricted", func(t *testing.T) {
		allow, _ := netns.ParseRule("allowed.example")
		if err := nets.Update(ctxT(t), id, netns.Spec{Policy: netns.Policy{Mode: netns.ModeRestricted, Allow: []netns.Rule{allow}}}); err != nil {
			t.Fatal(err)
		}
		if got := fetch(t, id, "http://allowed.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("allowed name: %q", got)
		}
		for _, url := range []string{
			"http://blocked.example/hello",
			"http://" + netnstest.OtherAddr.String() + "/hello",
			"http://" + netnstest.MetadataAddr.String() + "/",
		} {
			t0 := time.Now()
			if got := fetch(t, id, url); !strings.HasPrefix(got, "ERR") {
				t.Errorf("%s: %q, want refused", url, got)
			} else {
				t.Logf("%s: %s after %v", url, got, time.Since(t0))
			}
		}
		// The guest's own choice of DNS server gets nothing; its resolver works.
		if got := strings.TrimSpace(run(t, d, id, "python3", "-c", dnsPy, netnstest.OtherDNSAddr.String())); !strings.HasPrefix(got, "ERR") {
			t.Errorf("query to another DNS server: %q", got)
		}
		if got := strings.TrimSpace(run(t, d, id, "python3", "-c", dnsPy, netns.GatewayAddr.String())); got != "ANSWER" {
			t.Errorf("query to the sandbox resolver: %q", got)
		}
		recs, _, err := nets.Log(id)
		if err != nil {
			t.Fatal(err)
		}
		denied := 0
		for _, r := range recs {
			if !r.Allowed {
				denied++
			}
		}
		if denied == 0 {
			t.Errorf("connection log has no denied attempt: %+v", recs)
		}
		if err := nets.Update(ctxT(t), id, netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("GuestPort", func(t *testing.T) {
		run(t, d, id, "sh", "-c", "cd /tmp && echo served > index.html && nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
		var body string
		for i := 0; i < 50; i++ {
			c, err := nets.DialGuest(ctxT(t), id, 8000)
			if err == nil {
				_, _ = io.WriteString(c, "GET /index.html HTTP/1.0\r\n\r\n")
				b, _ := io.ReadAll(c)
				c.Close()
				if body = string(b); strings.Contains(body, "served") {
					break
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(body, "served") {
			t.Fatalf("guest web server through DialGuest: %q", body)
		}
	})
	t.Run("SnapshotRestore", func(t *testing.T) {
		snap := t.TempDir()
		if _, err := d.Snapshot(ctxT(t), id, snap); err != nil {
			t.Fatal(err)
		}
		copyID := id + "-copy"
		if _, err := nets.Create(ctxT(t), copyID, netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = d.Destroy(context.Background(), copyID)
			_ = nets.Destroy(context.Background(), copyID)
		})
		if err := d.Restore(ctxT(t), &tartarus.VMConfig{ID: copyID, Template: "python", Image: imgs.python, CPUs: 1, MemoryMB: 256}, snap); err != nil {
			t.Fatal(err)
		}
		if got := fetch(t, copyID, "http://allowed.example/big"); got != wantBig {
			t.Errorf("restored copy download: %q", got)
		}
		if err := d.Resume(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
		if got := fetch(t, id, "http://allowed.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("original after snapshot: %q", got)
		}
	})
}
