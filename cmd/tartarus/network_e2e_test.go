package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
)

// fetchPy fetches a URL in the guest: "OK <len> <sha256>" or "ERR ...".
const fetchPy = `import urllib.request, hashlib, sys
try:
    d = urllib.request.urlopen(sys.argv[1], timeout=5).read()
    print("OK", len(d), hashlib.sha256(d).hexdigest())
except Exception as e:
    print("ERR", type(e).__name__, e)
`

// webPy serves HTTP on port 8000 and, for an Upgrade request, switches
// protocols and echoes lines (enough to prove WebSocket pass-through).
const webPy = `import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                self.wfile.write(b"echo " + line)
                self.wfile.flush()
        body = ("guest " + self.path + " host=" + self.headers.get("Host", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
`

// TestNetworkEndToEnd runs `tartarus server --network` against a stand-in
// internet (namespaces of its own) with real VMs: open mode downloads
// 10 MB intact, a policy update on the running sandbox refuses a
// disallowed host at once and the log shows it, a guest web server is
// reached by path and by host and a WebSocket-style upgrade echoes, a
// hibernated sandbox wakes on a port request, and destroy and a kill -9
// of the server (recovery cleans up) leave no namespace or veth behind.
func TestNetworkEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e2eBinary(t) // skips without root, QEMU or templates
	in := netnstest.New(t)
	const prefix = "twire-"
	e := newE2E(t, "--network", "--network-uplink-netns", in.Uplink, "--network-dns", in.DNS,
		"--network-netns-prefix", prefix, "--sandbox-domain", "sb.test")
	noLeaks := func(t *testing.T, keep ...string) {
		t.Helper()
		ents, _ := os.ReadDir("/run/netns")
		for _, ent := range ents {
			id, ok := strings.CutPrefix(ent.Name(), prefix)
			if ok && !contains(keep, id) {
				t.Errorf("namespace %s left behind", ent.Name())
			}
		}
		out, err := exec.Command("ip", "-n", in.Uplink, "-o", "link", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link: %v %s", err, out)
		}
		if n := strings.Count(string(out), " ttv"); n != len(keep) {
			t.Errorf("%d sandbox veths in the uplink, want %d:\n%s", n, len(keep), out)
		}
	}

	// Public ports: the test has no API key for raw HTTP requests (the
	// credential check itself is TestPortRoutes).
	id := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--template", "python", "--network", "open", "--public-ports"))
	fetch := func(url string) string {
		return strings.TrimSpace(e.cli(t, 0, "", "exec", id, "--", "python3", "-c", fetchPy, url))
	}
	t.Run("OpenDownload", func(t *testing.T) {
		if got, want := fetch("http://allowed.example/big"), fmt.Sprintf("OK %d %s", netnstest.BigSize, in.BigSHA256); got != want {
			t.Fatalf("download: %q, want %q", got, want)
		}
	})
	t.Run("UpdateToRestricted", func(t *testing.T) {
		e.cli(t, 0, "", "sandbox", "network", id, "--mode", "restricted", "--allow", "allowed.example", "--public-ports")
		if got := fetch("http://blocked.example/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("blocked.example after the update: %q", got)
		}
		if got := fetch("http://" + netnstest.OtherAddr.String() + "/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("literal IP of a disallowed host: %q", got)
		}
		if got := fetch("http://allowed.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("allowed.example: %q", got)
		}
		if got := fetch("http://" + netnstest.MetadataAddr.String() + "/"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("metadata service: %q", got)
		}
		log := e.cli(t, 0, "", "sandbox", "network-log", id)
		if !strings.Contains(log, "denied") {
			t.Errorf("connection log shows no denied attempt:\n%s", log)
		}
	})
	t.Run("Ports", func(t *testing.T) {
		e.cli(t, 0, webPy, "exec", id, "--", "sh", "-c", "cat > /tmp/web.py; nohup python3 /tmp/web.py >/dev/null 2>&1 &")
		get := func(host, path string) (int, string) {
			t.Helper()
			var last error
			for range 150 { // the guest server takes a moment to listen (python under TCG on a loaded host: seconds)
				req, _ := http.NewRequest("GET", e.url+path, nil)
				if host != "" {
					req.Host = host
				}
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusServiceUnavailable {
						return resp.StatusCode, string(b)
					}
					last = fmt.Errorf("%d %s", resp.StatusCode, b)
				} else {
					last = err
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Fatalf("port %s%s: %v", host, path, last)
			return 0, ""
		}
		if code, body := get("", "/v1/sandboxes/"+id+"/ports/8000/x/y"); code != 200 || !strings.HasPrefix(body, "guest /x/y") {
			t.Errorf("path route: %d %q", code, body)
		}
		host := "8000-" + id + ".sb.test"
		if code, body := get(host, "/z"); code != 200 || body != "guest /z host="+host {
			t.Errorf("host route: %d %q", code, body)
		}
		c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/sandboxes/%s/ports/8000/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", id)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		fmt.Fprintf(c, "hello\n")
		if line, err := br.ReadString('\n'); err != nil || line != "echo hello\n" {
			t.Errorf("echo: %q %v", line, err)
		}
	})
	t.Run("PortToken", func(t *testing.T) {
		// Ports no longer public: no credentials is 401, the sandbox's
		// token (header, or query once then the cookie) reaches the guest.
		e.cli(t, 0, "", "sandbox", "network", id, "--mode", "restricted", "--allow", "allowed.example")
		defer e.cli(t, 0, "", "sandbox", "network", id, "--mode", "restricted", "--allow", "allowed.example", "--public-ports")
		token := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "port-token", id))
		noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		try := func(path string, hdr map[string]string) (*http.Response, string) {
			t.Helper()
			req, _ := http.NewRequest("GET", e.url+path, nil)
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp, string(b)
		}
		base := "/v1/sandboxes/" + id + "/ports/8000"
		if resp, body := try(base+"/t", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("no credentials: %d %q", resp.StatusCode, body)
		}
		if resp, body := try(base+"/t", map[string]string{"X-Tartarus-Port-Token": token}); resp.StatusCode != 200 || !strings.HasPrefix(body, "guest /t") {
			t.Errorf("token header: %d %q", resp.StatusCode, body)
		}
		resp, body := try(base+"/q?tartarus_token="+token, nil)
		cookies := resp.Cookies()
		if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 {
			t.Fatalf("token in the query: %d %q %v", resp.StatusCode, body, cookies)
		}
		if resp, body := try(resp.Header.Get("Location"), map[string]string{"Cookie": cookies[0].Name + "=" + cookies[0].Value}); resp.StatusCode != 200 || body != "guest /q host="+strings.TrimPrefix(e.url, "http://") {
			t.Errorf("cookie: %d %q", resp.StatusCode, body)
		}
	})
	t.Run("WakeOnPort", func(t *testing.T) {
		e.cli(t, 0, "", "sandbox", "hibernate", id)
		noLeaks(t) // a hibernated sandbox holds no network
		start := time.Now()
		resp, err := http.Get(e.url + "/v1/sandboxes/" + id + "/ports/8000/after-sleep")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "guest /after-sleep") {
			t.Fatalf("port request to a hibernated sandbox: %d %q", resp.StatusCode, b)
		}
		t.Logf("woke and answered in %v", time.Since(start))
		// The policy set before sleep still holds.
		if got := fetch("http://blocked.example/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("blocked.example after wake: %q", got)
		}
	})
	t.Run("DestroyAndCrash", func(t *testing.T) {
		other := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--template", "python", "--network", "none"))
		e.cli(t, 0, "", "sandbox", "rm", id)
		noLeaks(t, other)
		// kill -9 the server, remove the sandbox's VM behind its back,
		// restart: recovery finds the sandbox lost and removes its network.
		e.kill(t)
		for _, pid := range e.qemus(t) {
			_ = exec.Command("kill", "-9", fmt.Sprint(pid)).Run()
		}
		e.start(t)
		noLeaks(t)
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
