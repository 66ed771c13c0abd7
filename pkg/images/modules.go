package images

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// guestModules are the kernel modules a guest needs to reach its root disk
// and the host: virtio over MMIO (microvm exposes its devices that way), the
// block and console drivers, and ext4. crc32c_generic backs ext4's metadata
// checksums (ext4 and jbd2 ask for "crypto-crc32c" through a soft
// dependency, which no modprobe resolves inside our initramfs). virtio_net
// is the sandbox's NIC (it brings net_failover and failover).
var guestModules = []string{"virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "crc32c_generic", "ext4"}

// moduleName turns a module path or file name into the kernel's module name:
// kernel/drivers/char/virtio-rng.ko.xz → virtio_rng.
func moduleName(p string) string {
	base := path.Base(p)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		base = strings.TrimSuffix(base, ext)
	}
	base = strings.TrimSuffix(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// parseModulesDep reads modules.dep ("path: dep-path dep-path…") into a
// module name → (path, dependency names) table.
func parseModulesDep(r io.Reader) (map[string]moduleEntry, error) {
	mods := map[string]moduleEntry{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, deps, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep: bad line %q", line)
		}
		e := moduleEntry{Path: strings.TrimSpace(p)}
		for _, d := range strings.Fields(deps) {
			e.Depends = append(e.Depends, moduleName(d))
		}
		mods[moduleName(e.Path)] = e
	}
	return mods, sc.Err()
}

// moduleEntry is one module in a kernel's module tree.
type moduleEntry struct {
	Path    string   // relative to lib/modules/<release>/
	Depends []string // module names it needs loaded first
}

// lazyModules is a kernel's module table built from modules.order (one path
// a line) and each module's own "depends=" field, read by depsOf from its
// .modinfo section. Debian's package ships modules.order but not modules.dep
// (depmod makes that at install time), so this is how the dependency table
// is built from the package alone. Only the modules that resolution visits
// are read.
type lazyModules struct {
	paths  map[string]string // name → path
	depsOf func(path string) ([]string, error)
	cache  map[string]moduleEntry
}

func (l *lazyModules) lookup(name string) (moduleEntry, error) {
	if e, ok := l.cache[name]; ok {
		return e, nil
	}
	p, ok := l.paths[name]
	if !ok {
		return moduleEntry{}, fmt.Errorf("module %s: not in the kernel's module tree", name)
	}
	deps, err := l.depsOf(p)
	if err != nil {
		return moduleEntry{}, fmt.Errorf("module %s: %w", name, err)
	}
	e := moduleEntry{Path: p, Depends: deps}
	l.cache[name] = e
	return e, nil
}

// resolveModules returns the modules to load for want, dependencies first,
// each once. Modules listed in builtin (module names built into the kernel)
// are skipped, as are their dependencies' built-in parts.
func resolveModules(want []string, builtin map[string]bool, lookup func(string) (moduleEntry, error)) ([]moduleEntry, error) {
	var order []moduleEntry
	state := map[string]int{} // 0 unseen, 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = moduleName(name)
		if builtin[name] {
			return nil
		}
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " → "))
		case 2:
			return nil
		}
		state[name] = 1
		e, err := lookup(name)
		if err != nil {
			return err
		}
		for _, d := range e.Depends {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, e)
		return nil
	}
	for _, w := range want {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// parseBuiltin reads modules.builtin (one path a line) into a name set.
func parseBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			set[moduleName(line)] = true
		}
	}
	return set, sc.Err()
}

// modinfoDepends reads the "depends=" field from the .modinfo section of an
// uncompressed module file.
func modinfoDepends(file string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", file)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: read .modinfo: %w", file, err)
	}
	return parseModinfoDepends(data), nil
}

// parseModinfoDepends extracts the dependency names from raw .modinfo bytes
// (NUL-separated key=value strings).
func parseModinfoDepends(data []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
	}
	sort.Strings(deps)
	return deps
}

// readLines returns the non-empty lines of a file.
func readLines(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out, nil
}
