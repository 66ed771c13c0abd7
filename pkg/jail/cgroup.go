package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupVersion is "v1" (one hierarchy per controller, as on this project's
// build hosts) or "v2" (the unified hierarchy).
type cgroups struct {
	version string
	root    string // /sys/fs/cgroup
	parent  string // relative path of the directory holding every sandbox's cgroup
	ioFile  string // the I/O weight file this host has, "" when none
}

// v1Controllers are the v1 hierarchies a sandbox joins.
var v1Controllers = []string{"memory", "cpu", "pids", "blkio"}

// detectCgroups finds which cgroup version governs the controllers we need.
// A host with v1 controllers mounted uses v1 even when a unified hierarchy
// is mounted beside them (it then holds no controllers of its own).
func detectCgroups(root, parent string) (*cgroups, error) {
	cg := &cgroups{root: root, parent: parent}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		cg.version = "v2"
		b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
		if err != nil {
			return nil, err
		}
		have := strings.Fields(string(b))
		for _, want := range []string{"memory", "cpu", "pids"} {
			if !contains(have, want) {
				return nil, fmt.Errorf("cgroup v2 at %s lacks the %s controller", root, want)
			}
		}
		if contains(have, "io") {
			cg.ioFile = "io.weight"
		}
		return cg, nil
	}
	for _, c := range []string{"memory", "cpu", "pids"} {
		if _, err := os.Stat(filepath.Join(root, c, "cgroup.procs")); err != nil {
			return nil, fmt.Errorf("no cgroup v2 at %s and no v1 %s controller: %w", root, c, err)
		}
	}
	cg.version = "v1"
	for _, f := range []string{"blkio.weight", "blkio.bfq.weight"} {
		if _, err := os.Stat(filepath.Join(root, "blkio", f)); err == nil {
			cg.ioFile = f
			break
		}
	}
	return cg, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// limits are what one sandbox's cgroup allows.
type limits struct {
	memoryBytes int64
	cpuQuotaUS  int64 // per cpuPeriodUS
	pids        int
	ioWeight    int
}

const cpuPeriodUS = 100_000

// dirs returns the sandbox's cgroup directories (one per v1 controller, one for v2).
func (cg *cgroups) dirs(name string) []string {
	if cg.version == "v2" {
		return []string{filepath.Join(cg.root, cg.parent, name)}
	}
	var out []string
	for _, c := range v1Controllers {
		if c == "blkio" && cg.ioFile == "" {
			continue
		}
		out = append(out, filepath.Join(cg.root, c, cg.parent, name))
	}
	return out
}

// create makes the sandbox's cgroup with its limits and returns the
// cgroup.procs files the jailed process writes itself into.
func (cg *cgroups) create(name string, l limits) ([]string, error) {
	if cg.version == "v2" {
		if err := cg.enableV2(); err != nil {
			return nil, err
		}
	}
	var procs []string
	for _, dir := range cg.dirs(name) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", dir, err)
		}
		procs = append(procs, filepath.Join(dir, "cgroup.procs"))
	}
	var writes [][2]string
	if cg.version == "v2" {
		dir := cg.dirs(name)[0]
		writes = [][2]string{
			{filepath.Join(dir, "memory.max"), strconv.FormatInt(l.memoryBytes, 10)},
			{filepath.Join(dir, "memory.swap.max"), "0"},
			{filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", l.cpuQuotaUS, cpuPeriodUS)},
			{filepath.Join(dir, "pids.max"), strconv.Itoa(l.pids)},
		}
		if cg.ioFile != "" {
			writes = append(writes, [2]string{filepath.Join(dir, cg.ioFile), "default " + strconv.Itoa(l.ioWeight)})
		}
	} else {
		at := func(ctrl, file string) string { return filepath.Join(cg.root, ctrl, cg.parent, name, file) }
		writes = [][2]string{
			{at("memory", "memory.limit_in_bytes"), strconv.FormatInt(l.memoryBytes, 10)},
			{at("cpu", "cpu.cfs_period_us"), strconv.Itoa(cpuPeriodUS)},
			{at("cpu", "cpu.cfs_quota_us"), strconv.FormatInt(l.cpuQuotaUS, 10)},
			{at("pids", "pids.max"), strconv.Itoa(l.pids)},
		}
		// Without swap accounting the memory limit already covers all the
		// process can use; with it, swap must not extend the limit.
		if _, err := os.Stat(at("memory", "memory.memsw.limit_in_bytes")); err == nil {
			writes = append(writes, [2]string{at("memory", "memory.memsw.limit_in_bytes"), strconv.FormatInt(l.memoryBytes, 10)})
		}
		if cg.ioFile != "" {
			writes = append(writes, [2]string{at("blkio", cg.ioFile), strconv.Itoa(l.ioWeight)})
		}
	}
	for _, w := range writes {
		if err := os.WriteFile(w[0], []byte(w[1]), 0); err != nil {
			cg.remove(name)
			return nil, fmt.Errorf("cgroup limit %s=%s: %w", w[0], w[1], err)
		}
	}
	return procs, nil
}

// enableV2 turns on the controllers a sandbox needs in every directory
// from the root down to the parent, as v2 requires.
func (cg *cgroups) enableV2() error {
	dir := cg.root
	ctrls := "+memory +cpu +pids"
	if cg.ioFile != "" {
		ctrls += " +io"
	}
	for _, elem := range strings.Split(cg.parent, "/") {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(ctrls), 0); err != nil {
			return fmt.Errorf("cgroup %s: enable controllers: %w", dir, err)
		}
		dir = filepath.Join(dir, elem)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(ctrls), 0); err != nil {
		return fmt.Errorf("cgroup %s: enable controllers: %w", dir, err)
	}
	return nil
}

// remove deletes the sandbox's cgroup. Its processes must be gone; a
// cgroup whose last process is still being reaped is retried briefly.
func (cg *cgroups) remove(name string) error {
	var errs []error
	for _, dir := range cg.dirs(name) {
		var err error
		for i := 0; i < 50; i++ {
			err = syscall.Rmdir(dir)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			if !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// names lists the sandbox cgroups under the parent.
func (cg *cgroups) names() []string {
	dir := filepath.Join(cg.root, cg.parent)
	if cg.version == "v1" {
		dir = filepath.Join(cg.root, "memory", cg.parent)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// removeParent removes the empty parent directories, deepest first; a
// directory still in use stays (rmdir fails on a non-empty cgroup).
func (cg *cgroups) removeParent() {
	tops := []string{cg.root}
	if cg.version == "v1" {
		tops = nil
		for _, c := range v1Controllers {
			tops = append(tops, filepath.Join(cg.root, c))
		}
	}
	for _, top := range tops {
		for d := filepath.Join(top, cg.parent); d != top && d != "." && d != "/"; d = filepath.Dir(d) {
			if syscall.Rmdir(d) != nil {
				break
			}
		}
	}
}
