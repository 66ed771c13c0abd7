package agent

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// maxProcs bounds the process table read for OpSignalProcesses; a guest
// has far fewer, and the bound keeps a fork bomb from making one call
// unbounded.
const maxProcs = 1 << 16

// signalDescendants sends sig to every process whose chain of parents
// reaches the agent, and returns how many it reached. As PID 1 that is
// every user process of the guest; as a subreaper, everything it started,
// orphans included; otherwise its children and their descendants. The
// agent itself is never signalled.
func signalDescendants(sig unix.Signal) (*proto.SignalResult, error) {
	parents, err := readParents("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	n := 0
	for pid := range parents {
		if pid == self || !descends(parents, pid, self) {
			continue
		}
		if err := unix.Kill(pid, sig); err == nil {
			n++
		}
	}
	return &proto.SignalResult{Processes: n}, nil
}

// descends reports whether ancestor is on pid's chain of parents.
func descends(parents map[int]int, pid, ancestor int) bool {
	for range len(parents) + 1 { // a cycle (pid reuse mid-read) ends the walk
		pp, ok := parents[pid]
		if !ok || pp == 0 {
			return false
		}
		if pp == ancestor {
			return true
		}
		pid = pp
	}
	return false
}

// readParents maps each pid under procDir to its parent's pid.
func readParents(procDir string) (map[int]int, error) {
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procDir, err)
	}
	parents := map[int]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if len(parents) >= maxProcs {
			break
		}
		b, err := os.ReadFile(procDir + "/" + e.Name() + "/stat")
		if err != nil {
			continue // it exited
		}
		if pp, ok := parseStatPPID(b); ok {
			parents[pid] = pp
		}
	}
	return parents, nil
}

// parseStatPPID reads the parent pid from /proc/PID/stat: "pid (comm)
// state ppid …", where comm may hold spaces and parentheses, so the
// fields start after the last ')'.
func parseStatPPID(b []byte) (int, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(string(f[1]))
	return pp, err == nil
}
