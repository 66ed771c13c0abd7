package container

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// HostResources returns the host's CPU count and memory in MiB.
func HostResources() (cpus, memoryMB int) {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err == nil {
		memoryMB = int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
	}
	return runtime.NumCPU(), memoryMB
}

// CheckLimits returns an error wrapping tartarus.ErrResourceExhausted when
// cfg asks for more than the fingerprint allows, and ErrInvalid for a
// configuration that cannot be created at all.
func CheckLimits(fp *tartarus.Fingerprint, cfg *tartarus.VMConfig) error {
	switch {
	case cfg == nil || cfg.ID == "":
		return tartarus.Errorf(tartarus.ErrInvalid, "create: no sandbox id")
	case !tartarus.ValidName(cfg.ID):
		return tartarus.Errorf(tartarus.ErrInvalid, "create: sandbox id %q", cfg.ID)
	case cfg.Image == nil || cfg.Image.RootFS == "":
		return tartarus.Errorf(tartarus.ErrInvalid, "create %s: no template image", cfg.ID)
	case cfg.CPUs < 1 || cfg.MemoryMB < tartarus.MinMemoryMB:
		return tartarus.Errorf(tartarus.ErrInvalid, "create %s: %d CPUs and %d MiB", cfg.ID, cfg.CPUs, cfg.MemoryMB)
	case cfg.CPUs > fp.MaxCPUs:
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "create %s: %d CPUs, this host gives at most %d", cfg.ID, cfg.CPUs, fp.MaxCPUs)
	case cfg.MemoryMB > fp.MaxMemoryMB:
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "create %s: %d MiB, this host gives at most %d", cfg.ID, cfg.MemoryMB, fp.MaxMemoryMB)
	}
	return tartarus.ValidEnv(cfg.Env)
}

// ProcessTree returns pid and all its descendants, read from /proc.
func ProcessTree(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := parentPID(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

func parentPID(pid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after its last ')' are fixed: state, ppid, …
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[1])
	return pp, err == nil
}

// KillTree sends sig to pid and every descendant of it. The tree is read
// first and signalled after, so children reparented by the first kills are
// still reached.
func KillTree(pid int, sig syscall.Signal) {
	if pid <= 1 {
		return
	}
	for _, p := range ProcessTree(pid) {
		_ = syscall.Kill(p, sig)
	}
}

// SignalName returns the name `kill -s` takes for sig ("TERM").
func SignalName(sig syscall.Signal) (string, error) {
	names := map[syscall.Signal]string{
		syscall.SIGHUP: "HUP", syscall.SIGINT: "INT", syscall.SIGQUIT: "QUIT", syscall.SIGKILL: "KILL",
		syscall.SIGUSR1: "USR1", syscall.SIGUSR2: "USR2", syscall.SIGTERM: "TERM", syscall.SIGCONT: "CONT",
		syscall.SIGSTOP: "STOP", syscall.SIGALRM: "ALRM", syscall.SIGPIPE: "PIPE", syscall.SIGWINCH: "WINCH",
		syscall.SIGTSTP: "TSTP", syscall.SIGABRT: "ABRT",
	}
	n, ok := names[sig]
	if !ok {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "signal %d", int(sig))
	}
	return n, nil
}

// InitCommand is the first process of every container sandbox: a shell
// that waits forever, reaps its children and ends on SIGTERM. Sandboxes from
// Tartarus templates always have sh; commands then run through exec.
var InitCommand = []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"}

// EnvList turns base and extra into KEY=VALUE entries; extra wins.
func EnvList(base []string, extra ...map[string]string) []string {
	idx := map[string]int{}
	out := make([]string, 0, len(base))
	set := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			return
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	for _, kv := range base {
		set(kv)
	}
	for _, m := range extra {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			set(k + "=" + m[k])
		}
	}
	return out
}

// DefaultPath is the PATH of sandboxes whose image sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
