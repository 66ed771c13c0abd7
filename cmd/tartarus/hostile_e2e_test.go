package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestHostileGuestsEndToEnd runs the hostile guests in one tenant's
// jailed sandboxes on a real server, one attack at a time in a fresh
// sandbox: a fork bomb, memory touched past the guest's size, a console
// flood, and a disk filled to its limit. Throughout, another tenant's
// sandbox's exec round trip (median of 20) stays within 2× of its baseline
// (measured beside the idle hostile sandbox just before each attack; not
// assessed, only logged, when the host's load average is above its CPU
// count before the attack: the bound is about this test's sandboxes, not
// about other work on a shared host), the server answers /healthz, and the host
// holds: QEMU's peak RSS within its cgroup's memory limit, the console
// files within their cap, the sandbox's directory within its disk's size.
// (The listing of 1 MiB names is refused in pkg/guest's hostile tests; the
// guest's own agent cannot be replaced from here.)
func TestHostileGuestsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e := newE2E(t)
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))
	globex := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "globex", "--role", "sandbox-user"))
	victim := e.createAs(t, globex)

	rootfs, err := os.Stat(filepath.Join(e.data, "images", "templates", "base", "rootfs.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	phases := []struct {
		name   string
		attack string        // started in the background in the hostile guest
		settle time.Duration // before measuring, so the attack is at full force
		check  func(t *testing.T, id string)
	}{
		{"fork bomb", `f(){ f | f & }; f`, 5 * time.Second, nil},
		{"memory past the guest's size", `tail /dev/zero & tail /dev/zero & tail /dev/zero & wait`, 10 * time.Second,
			func(t *testing.T, id string) {
				pid := e.qemuOf(t, id)
				hwm, limit := vmHWM(t, pid), memoryLimit(t, pid)
				t.Logf("QEMU peak RSS %d MiB, cgroup memory limit %d MiB", hwm>>20, limit>>20)
				if limit <= 0 || hwm > limit {
					t.Errorf("QEMU's peak RSS %d bytes, cgroup limit %d", hwm, limit)
				}
				if code, out := e.execIn(t, acme, id, "dmesg | grep -c 'Killed process'"); code == 0 {
					t.Logf("guest OOM kills: %s", strings.TrimSpace(out))
				}
			}},
		{"console flood", `n=0; while :; do head -c 65536 /dev/zero | tr '\0' x > /dev/ttyS0; n=$((n+1)); echo $n > /tmp/flood.n; done`, 5 * time.Second,
			func(t *testing.T, id string) {
				if _, out := e.execIn(t, acme, id, "cat /tmp/flood.n"); out != "" {
					n, _ := strconv.Atoi(strings.TrimSpace(out))
					t.Logf("guest wrote %d KiB to its console", n*64)
				}
				for _, f := range []string{"console.log", "console.log.1", "qemu.log", "qemu.log.1"} {
					if fi, err := os.Stat(filepath.Join(e.data, "vms", id, f)); err == nil && fi.Size() > 1<<20 {
						t.Errorf("%s: %d bytes, more than the 1 MiB cap", f, fi.Size())
					}
				}
			}},
		{"disk filled to its limit", `dd if=/dev/zero of=/root/fill bs=1M > /tmp/fill.out 2>&1; sync; touch /tmp/fill.done`, 5 * time.Second,
			func(t *testing.T, id string) {
				deadline := time.Now().Add(8 * time.Minute)
				for {
					if code, _ := e.execIn(t, acme, id, "test -e /tmp/fill.done"); code == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the disk did not fill within 8 minutes")
					}
					time.Sleep(2 * time.Second)
				}
				if _, out := e.execIn(t, acme, id, "cat /tmp/fill.out"); !strings.Contains(out, "No space left on device") {
					t.Errorf("dd until full: %q; want ENOSPC", out)
				}
				used := dirSize(t, filepath.Join(e.data, "vms", id))
				t.Logf("disk full: the sandbox's directory holds %d MiB for a %d MiB disk", used>>20, rootfs.Size()>>20)
				if limit := rootfs.Size() + 64<<20 + 4<<20; used > limit {
					t.Errorf("the sandbox's directory holds %d MiB, more than its %d MiB disk plus metadata and logs", used>>20, rootfs.Size()>>20)
				}
			}},
	}
	for _, ph := range phases {
		t.Run(ph.name, func(t *testing.T) {
			id := e.createAs(t, acme)
			defer e.as(t, acme, "sandbox", "rm", id)
			// The baseline beside an idle neighbour, just before its
			// attack: the machine's load from elsewhere drifts.
			baseline := e.execRTT(t, globex, victim, 20)
			load := loadAverage(t)
			if code, out := e.execIn(t, acme, id, "setsid sh -c '"+strings.ReplaceAll(ph.attack, "'", `'\''`)+"' </dev/null >/dev/null 2>&1 &"); code != 0 {
				t.Fatalf("start the attack: exit %d %s", code, out)
			}
			time.Sleep(ph.settle)
			rtt := e.execRTT(t, globex, victim, 20)
			t.Logf("victim exec round trip under %s: median %s (baseline %s)", ph.name, rtt, baseline)
			switch {
			case rtt <= 2*baseline:
			case load > float64(runtime.NumCPU()):
				// Others' work on the host, not this test's sandboxes, then
				// decides the victim's share of the CPU: not assessable.
				t.Logf("NOT ASSESSED: victim's exec round trip %s under %s is more than twice its baseline %s, but the host's load average was %.1f on %d CPUs before the attack",
					rtt, ph.name, baseline, load, runtime.NumCPU())
			default:
				t.Errorf("victim's exec round trip %s under %s, more than twice its baseline %s (host load %.1f on %d CPUs)", rtt, ph.name, baseline, load, runtime.NumCPU())
			}
			if ph.check != nil {
				ph.check(t, id)
			}
			if resp, err := http.Get(e.url + "/healthz"); err != nil || resp.StatusCode != 200 {
				t.Fatalf("server unhealthy: %v %v", resp, err)
			} else {
				resp.Body.Close()
			}
		})
	}
	if code, out := e.execIn(t, globex, victim, "echo alive"); code != 0 || out != "alive\n" {
		t.Errorf("victim after the attacks: exit %d %q", code, out)
	}
}

// createAs creates a 1-vCPU 256 MiB base sandbox with key and returns its id.
func (e *e2e) createAs(t *testing.T, key string) string {
	t.Helper()
	status, body := e.api(t, key, "POST", "/v1/sandboxes", `{"template":"base","cpus":1,"memory_mb":256,"timeout_s":1200}`)
	var sb struct{ ID string }
	if status != http.StatusCreated || json.Unmarshal(body, &sb) != nil || sb.ID == "" {
		t.Fatalf("create: %d %s", status, body)
	}
	return sb.ID
}

// execIn runs a shell line in a sandbox through the API and returns its
// exit code and stdout (-1 when the API refused or failed).
func (e *e2e) execIn(t *testing.T, key, id, line string) (int, string) {
	t.Helper()
	req, _ := json.Marshal(api.ExecRequest{Cmd: []string{"sh", "-c", line}, TimeoutS: 60})
	status, body := e.api(t, key, "POST", "/v1/sandboxes/"+id+"/exec", string(req))
	var res api.ExecResponse
	if status != http.StatusOK || json.Unmarshal(body, &res) != nil {
		return -1, string(body)
	}
	return res.ExitCode, res.Stdout
}

// execRTT is the median wall time of n execs of `true` in a sandbox.
func (e *e2e) execRTT(t *testing.T, key, id string, n int) time.Duration {
	t.Helper()
	var ds []time.Duration
	for range n {
		start := time.Now()
		if code, out := e.execIn(t, key, id, "true"); code != 0 {
			t.Fatalf("exec in %s: %d %s", id, code, out)
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// api does one JSON call with key.
func (e *e2e) api(t *testing.T, key, method, path, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	c := http.Client{Timeout: 5 * time.Minute} // the first create builds the template snapshot
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

// qemuOf finds the QEMU process of a sandbox by its command line.
func (e *e2e) qemuOf(t *testing.T, id string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(cmdline, []byte("qemu")) || !bytes.Contains(cmdline, []byte("/"+id+"/")) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		return pid
	}
	t.Fatalf("no QEMU for %s", id)
	return 0
}

// vmHWM is a process's peak resident set in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM for %d", pid)
	return 0
}

// memoryLimit reads the memory limit of a process's cgroup (v1's memory
// controller, else v2), 0 when it has none.
func memoryLimit(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var file string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if slices.Contains(strings.Split(f[1], ","), "memory") {
			file = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes")
			break
		}
		if f[0] == "0" && file == "" {
			file = filepath.Join("/sys/fs/cgroup", f[2], "memory.max")
		}
	}
	v, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("memory limit of %d: %v", pid, err)
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
	return n
}

// loadAverage is the host's one-minute load average.
func loadAverage(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatalf("/proc/loadavg: %q", b)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
