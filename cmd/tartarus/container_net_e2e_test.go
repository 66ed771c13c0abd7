package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
)

// TestContainerNetworkEndToEnd runs `tartarus server --runtimes gvisor
// --network` against a stand-in internet: a gVisor sandbox created with a
// restricted network reaches an allowed name and not a disallowed one, a
// literal address or the metadata service; a policy update applies to the
// running sandbox; its web server is reached through the port route; and
// destroy leaves no namespace or veth. A server without a network answers
// a create asking for one with 501 and the runtime's reason.
func TestContainerNetworkEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs gVisor sandboxes")
	}
	runsc := os.Getenv("TARTARUS_RUNSC")
	if runsc == "" {
		if os.Getenv("TARTARUS_E2E") == "1" {
			t.Fatal("TARTARUS_E2E=1 but TARTARUS_RUNSC is not set")
		}
		t.Skip("TARTARUS_RUNSC is not set")
	}
	e2eBinary(t)
	// The server finds runsc on its PATH.
	t.Setenv("PATH", filepath.Dir(runsc)+string(os.PathListSeparator)+os.Getenv("PATH"))
	in := netnstest.New(t)
	const prefix = "tcwire-"
	e := newE2E(t, "--runtimes", "gvisor", "--network", "--network-uplink-netns", in.Uplink, "--network-dns", in.DNS,
		"--network-netns-prefix", prefix)
	noLeaks := func(t *testing.T) {
		t.Helper()
		ents, _ := os.ReadDir("/run/netns")
		for _, ent := range ents {
			if strings.HasPrefix(ent.Name(), prefix) {
				t.Errorf("namespace %s left behind", ent.Name())
			}
		}
		out, err := exec.Command("ip", "-n", in.Uplink, "-o", "link", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link: %v %s", err, out)
		}
		if n := strings.Count(string(out), " ttv"); n != 0 {
			t.Errorf("%d sandbox veths in the uplink, want none:\n%s", n, out)
		}
	}

	id := strings.TrimSpace(e.cli(t, 0, "", "sandbox", "create", "--template", "python", "--runtime", "gvisor",
		"--network", "restricted", "--allow", "allowed.example", "--public-ports"))
	fetch := func(url string) string {
		return strings.TrimSpace(e.cli(t, 0, "", "exec", id, "--", "python3", "-c", fetchPy, url))
	}
	t.Run("Restricted", func(t *testing.T) {
		if got := fetch("http://allowed.example/hello"); !strings.HasPrefix(got, "OK") {
			t.Errorf("allowed.example: %q", got)
		}
		for _, url := range []string{"http://blocked.example/hello", "http://" + netnstest.OtherAddr.String() + "/hello",
			"http://" + netnstest.MetadataAddr.String() + "/", fmt.Sprintf("http://%s:%d/", netnstest.UplinkAddr, netnstest.HostPort)} {
			if got := fetch(url); !strings.HasPrefix(got, "ERR") {
				t.Errorf("%s: %q, want refused", url, got)
			}
		}
		if log := e.cli(t, 0, "", "sandbox", "network-log", id); !strings.Contains(log, "denied") {
			t.Errorf("connection log shows no denied attempt:\n%s", log)
		}
	})
	t.Run("Update", func(t *testing.T) {
		e.cli(t, 0, "", "sandbox", "network", id, "--mode", "restricted", "--allow", "tls.example", "--public-ports")
		if got := fetch("http://allowed.example/hello"); !strings.HasPrefix(got, "ERR") {
			t.Errorf("allowed.example after it left the allow list: %q", got)
		}
	})
	t.Run("Port", func(t *testing.T) {
		e.cli(t, 0, webPy, "exec", id, "--", "sh", "-c", "cat > /tmp/web.py; nohup python3 /tmp/web.py >/dev/null 2>&1 &")
		var code int
		var body string
		for range 50 { // the server takes a moment to listen
			resp, err := http.Get(e.url + "/v1/sandboxes/" + id + "/ports/8000/x")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				code, body = resp.StatusCode, string(b)
				if code == 200 {
					break
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		if code != 200 || !strings.HasPrefix(body, "guest /x") {
			t.Errorf("port route: %d %q", code, body)
		}
	})
	t.Run("NodeShowsJail", func(t *testing.T) {
		out := e.cli(t, 0, "", "node", "ls", "-o", "json")
		var list struct {
			Nodes []struct {
				Runtimes []struct {
					Runtime      string            `json:"runtime"`
					Capabilities map[string]bool   `json:"capabilities"`
					Details      map[string]string `json:"details"`
					Jail         *struct {
						Enabled       bool   `json:"enabled"`
						CgroupVersion string `json:"cgroup_version"`
						Seccomp       bool   `json:"seccomp"`
					} `json:"jail"`
				} `json:"runtimes"`
			} `json:"nodes"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Nodes) != 1 || len(list.Nodes[0].Runtimes) != 1 {
			t.Fatalf("node ls: %v\n%s", err, out)
		}
		fp := list.Nodes[0].Runtimes[0]
		if fp.Runtime != "gvisor" || fp.Jail == nil || !fp.Jail.Enabled || !fp.Jail.Seccomp || fp.Jail.CgroupVersion == "" ||
			!fp.Capabilities["network"] || fp.Details["log"] == "" || fp.Details["disk_limit"] == "" {
			t.Errorf("gvisor in GET /v1/nodes: %+v jail %+v", fp, fp.Jail)
		}
	})
	t.Run("Destroy", func(t *testing.T) {
		e.cli(t, 0, "", "sandbox", "rm", id)
		noLeaks(t)
	})
	t.Run("NoUplink501", func(t *testing.T) {
		plain := newE2E(t, "--runtimes", "gvisor")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, plain.bin, "sandbox", "create", "--template", "python", "--runtime", "gvisor", "--network", "open")
		cmd.Env = append(os.Environ(), "TARTARUS_URL="+plain.url, "TARTARUS_DATA_DIR="+plain.data, "TARTARUS_API_KEY=")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err == nil || !strings.Contains(out.String(), "without a network uplink") {
			t.Errorf("create with a network on a server without one: %v %q, want refused with the reason", err, out.String())
		}
		t.Logf("%s", strings.TrimSpace(out.String()))
	})
}
