package microvm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hostTSCkHz is the host's TSC frequency. Passing it as tsc_early_khz spares
// the guest kernel its TSC calibration, which under TCG hangs about one
// boot in ten (DESIGN.md).
func hostTSCkHz() (int, error) {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			return v, nil
		}
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	return parseCPUMHz(b)
}

// parseCPUMHz reads the first "cpu MHz" line of /proc/cpuinfo as kHz.
func parseCPUMHz(cpuinfo []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || mhz <= 0 {
				return 0, fmt.Errorf("cpuinfo: bad cpu MHz %q", v)
			}
			return int(mhz * 1000), nil
		}
	}
	return 0, errors.New("cpuinfo: no cpu MHz line")
}

// hostMemoryMB returns MemTotal from /proc/meminfo in MiB.
func hostMemoryMB() (int, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("meminfo: no MemTotal")
}

// procCmdline returns a process's argv, or nil when it is gone.
func procCmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// isOurQEMU reports whether argv is the QEMU this driver started for the
// sandbox whose state directory is dir: its -name and -pidfile say so.
func isOurQEMU(argv []string, id, dir string) bool {
	if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "qemu") {
		return false
	}
	var name, pidfile bool
	for i := 0; i+1 < len(argv); i++ {
		switch argv[i] {
		case "-name":
			name = argv[i+1] == qemuName(id)
		case "-pidfile":
			pidfile = argv[i+1] == filepath.Join(dir, "qemu.pid")
		}
	}
	return name && pidfile
}

// processesOf finds every live process that is our QEMU for the sandbox.
func processesOf(id, dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ourQEMU(pid, id, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// waitGone polls until pid is gone or the timeout passes.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
