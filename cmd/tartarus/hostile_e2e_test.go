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
// flood, and a disk filled to its limit. Throughout, the hostile sandbox's
// QEMU uses no more CPU than its cgroup's quota (vCPUs + a quarter core for
// its own threads, read from the cgroup's usage over the attack), another
// tenant's sandbox keeps answering (its exec round trip, median of 20, is
// logged beside its baseline and fails only when starved: past 1 s and 20×
// the baseline; how much slower it gets on a 2-core host shared with other
// tests is a figure for docs/BENCHMARKS.md, not a unit-test bound), the
// server answers /healthz, and the host holds: QEMU's peak RSS within its
// cgroup's memory limit, the console files within their cap, the sandbox's
// directory within its disk's size. (The listing of 1 MiB names is refused
// in pkg/guest's hostile tests; the guest's own agent cannot be replaced
// from here.)
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
			pid := e.qemuOf(t, id)
			quota := cpuQuota(t, pid)
			used0, start := cpuUsage(t, pid), time.Now()
			rtt := e.execRTT(t, globex, victim, 20)
			used, window := cpuUsage(t, pid)-used0, time.Since(start)
			t.Logf("under %s: victim exec round trip median %s (baseline %s, host load %.1f on %d CPUs before); hostile QEMU used %.2f cores (quota %.2f)",
				ph.name, rtt, baseline, load, runtime.NumCPU(), used.Seconds()/window.Seconds(), quota)
			// The CFS quota is enforced per period; allow one period's
			// overshoot at each end of the window.
			if quota <= 0 {
				t.Errorf("the hostile sandbox's QEMU has no CPU quota")
			} else if limit := time.Duration(quota*float64(window)) + 200*time.Millisecond; used > limit {
				t.Errorf("the hostile QEMU used %s of CPU in %s, more than its quota of %.2f cores allows (%s)", used, window, quota, limit)
			}
			if rtt > time.Second && rtt > 20*baseline {
				t.Errorf("victim starved under %s: exec round trip %s (baseline %s)", ph.name, rtt, baseline)
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

// cgroupFile is the path of a file of a process's cgroup: under v1's
// controller when the host mounts it, else under the unified hierarchy.
func cgroupFile(t *testing.T, pid int, controller, v1, v2 string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var unified string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if slices.Contains(strings.Split(f[1], ","), controller) {
			return filepath.Join("/sys/fs/cgroup", f[1], f[2], v1)
		}
		if f[0] == "0" {
			unified = f[2]
		}
	}
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if p := filepath.Join(root, unified, v2); fileExists(p) {
			return p
		}
	}
	t.Fatalf("no %s or %s for pid %d", v1, v2, pid)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// cpuUsage is the CPU time a process and its threads have used
// (utime + stime from /proc/PID/stat, in clock ticks of 10 ms).
func cpuUsage(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces: fields count from after its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// cpuQuota is a process's cgroup's CPU quota in cores, 0 when unlimited.
func cpuQuota(t *testing.T, pid int) float64 {
	t.Helper()
	p := cgroupFile(t, pid, "cpu", "cpu.cfs_quota_us", "cpu.max")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if filepath.Base(p) == "cpu.cfs_quota_us" {
		period, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cpu.cfs_period_us"))
		if err != nil {
			t.Fatal(err)
		}
		f = append(f, strings.TrimSpace(string(period)))
	}
	if len(f) != 2 || f[0] == "max" || f[0] == "-1" {
		return 0
	}
	q, _ := strconv.ParseFloat(f[0], 64)
	per, _ := strconv.ParseFloat(f[1], 64)
	if per <= 0 {
		return 0
	}
	return q / per
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
