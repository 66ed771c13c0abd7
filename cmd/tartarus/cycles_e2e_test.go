package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestCreateDestroyCyclesEndToEnd creates and destroys networked microVM
// sandboxes through a real server (jailed, on a stand-in internet), and
// half way kills the server with SIGKILL while a create and a destroy are
// in flight; after the restart and the last cycle nothing is left: no
// sandbox namespace, no veth in the uplink, no nft chain or map entry of a
// sandbox, no QEMU, no sandbox cgroup. CI runs 20 cycles (each a real VM
// restored from its template snapshot, about 1-3 s under TCG);
// TARTARUS_CYCLES=200 runs the full count.
func TestCreateDestroyCyclesEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	cycles := 20
	if v := os.Getenv("TARTARUS_CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			t.Fatalf("TARTARUS_CYCLES=%q: want a number of at least 2", v)
		}
		cycles = n
	}
	e2eBinary(t) // skips without root, QEMU or templates
	in := netnstest.New(t)
	const prefix = "tcyc-"
	e := newE2E(t, "--network", "--network-uplink-netns", in.Uplink, "--network-dns", in.DNS,
		"--network-netns-prefix", prefix)
	admin, err := os.ReadFile(filepath.Join(e.data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(admin))
	const body = `{"template":"base","cpus":1,"memory_mb":256,"timeout_s":900,"network":{"mode":"restricted","allow":["allowed.example"]}}`
	var ids []string
	create := func() string {
		t.Helper()
		status, b := e.api(t, key, "POST", "/v1/sandboxes", body)
		var sb struct{ ID string }
		if status != http.StatusCreated || json.Unmarshal(b, &sb) != nil {
			t.Fatalf("create: %d %s", status, b)
		}
		ids = append(ids, sb.ID)
		return sb.ID
	}
	destroy := func(id string) {
		t.Helper()
		if status, b := e.api(t, key, "DELETE", "/v1/sandboxes/"+id, ""); status != http.StatusAccepted && status != http.StatusNotFound {
			t.Fatalf("destroy %s: %d %s", id, status, b)
		}
	}

	start := time.Now()
	for i := range cycles {
		if i == cycles/2 {
			e.killMidway(t, key, body, create(), destroy)
			continue
		}
		destroy(create())
	}
	t.Logf("%d create/destroy cycles and a kill -9 in %s", cycles, time.Since(start).Round(time.Second))

	// Whatever the crash left (a create that finished after all, a destroy
	// cut short) is the server's to finish: every sandbox ends.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		status, b := e.api(t, key, "GET", "/v1/sandboxes", "")
		var list api.SandboxList
		if status != http.StatusOK || json.Unmarshal(b, &list) != nil {
			t.Fatalf("list: %d %s", status, b)
		}
		live := 0
		for _, sb := range list.Sandboxes {
			if !sb.State.Final() {
				live++
				destroy(sb.ID)
			}
		}
		if live == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sandboxes still not ended: %s", live, b)
		}
		time.Sleep(time.Second)
	}
	if left := leftovers(t, in, prefix, ids); left != "" {
		t.Errorf("left behind after %d cycles and a kill -9:\n%s", cycles, left)
	}
	if q := e.qemus(t); len(q) != 0 {
		t.Errorf("QEMU processes left: %v", q)
	}
}

// killMidway SIGKILLs the server while a create and the destroy of id are
// in flight, and starts it again (recovery adopts or cleans up).
func (e *e2e) killMidway(t *testing.T, key, body, id string, destroy func(string)) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// Errors are expected: the server dies under these requests.
		c := http.Client{Timeout: time.Minute}
		req, _ := http.NewRequest("POST", e.url+"/v1/sandboxes", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	go func() {
		defer wg.Done()
		c := http.Client{Timeout: time.Minute}
		req, _ := http.NewRequest("DELETE", e.url+"/v1/sandboxes/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(300 * time.Millisecond) // both are being served
	e.kill(t)
	wg.Wait()
	e.start(t)
	destroy(id)
}

// leftovers lists what sandboxes could leak: namespaces with prefix, links
// and nft chains, sets or map entries of sandboxes in the uplink, and
// cgroups named for the sandboxes.
func leftovers(t *testing.T, in *netnstest.Internet, prefix string, ids []string) string {
	t.Helper()
	var b strings.Builder
	ents, _ := os.ReadDir("/run/netns")
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), prefix) {
			fmt.Fprintln(&b, "namespace", ent.Name())
		}
	}
	out, err := exec.Command("ip", "-n", in.Uplink, "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "ttv") {
			fmt.Fprintln(&b, "veth", f[1])
		}
	}
	out, _ = exec.Command("ip", "netns", "exec", in.Uplink, "nft", "list", "table", "inet", "tartarus").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "chain sb") || strings.HasPrefix(l, "set sb") || strings.Contains(l, "jump sb") {
			fmt.Fprintln(&b, "nft", l)
		}
	}
	for _, id := range ids {
		for _, pat := range []string{"/sys/fs/cgroup/*/tartarus/*/" + id, "/sys/fs/cgroup/tartarus/*/" + id} {
			dirs, _ := filepath.Glob(pat)
			for _, d := range dirs {
				fmt.Fprintln(&b, "cgroup", d)
			}
		}
	}
	return b.String()
}
