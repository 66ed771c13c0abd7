package images

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kernelInfo is what the kernel cache directory holds, recorded in its kernel.json.
type kernelInfo struct {
	Package aptPackage `json:"package"`
	// Release is the kernel's uname -r ("6.1.0-56-amd64").
	Release string `json:"release"`
	// Modules are the module file names under modules/, in load order.
	Modules []string `json:"modules"`
	// Wanted is the guestModules list the modules were resolved from; a
	// cached kernel built for another list is built again.
	Wanted []string `json:"wanted,omitempty"`

	dir string
}

func (k *kernelInfo) vmlinux() string   { return filepath.Join(k.dir, "vmlinux") }
func (k *kernelInfo) moduleDir() string { return filepath.Join(k.dir, "modules") }
func kernelCacheDir(dataDir string, pkg aptPackage) string {
	return filepath.Join(dataDir, "images", "kernel", safeName(pkg.Name+"_"+pkg.Version))
}

// safeName keeps a name usable as one path element.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r == ':' {
			return '_'
		}
		return r
	}, s)
}

// loadKernel reads a cached kernel; it returns (nil, nil) when there is none.
func loadKernel(dir string) (*kernelInfo, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	k := &kernelInfo{dir: dir}
	if err := json.Unmarshal(b, k); err != nil {
		return nil, fmt.Errorf("%s/kernel.json: %w", dir, err)
	}
	return k, nil
}

// buildKernel fetches Debian's kernel package, extracts the uncompressed
// vmlinux and the guest's modules into dir (built in a temporary sibling
// and renamed into place).
func buildKernel(ctx context.Context, dir string, pkg aptPackage) (*kernelInfo, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(filepath.Dir(dir), ".build-kernel-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	dl := filepath.Join(work, "pkg")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return nil, err
	}
	root, err := downloadAndExtract(ctx, dl, pkg)
	if err != nil {
		return nil, err
	}
	vmlinuzs, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil || len(vmlinuzs) != 1 {
		return nil, fmt.Errorf("kernel %s: want one boot/vmlinuz-*, found %d", pkg, len(vmlinuzs))
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuzs[0]), "vmlinuz-")
	out := filepath.Join(work, "out")
	if err := os.MkdirAll(filepath.Join(out, "modules"), 0o755); err != nil {
		return nil, err
	}
	if err := extractVmlinux(ctx, vmlinuzs[0], filepath.Join(out, "vmlinux")); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", pkg, err)
	}
	k := &kernelInfo{Package: pkg, Release: release, Wanted: guestModules, dir: out}
	if err := copyModules(ctx, filepath.Join(root, "lib", "modules", release), k); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", pkg, err)
	}
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, "kernel.json"), b, 0o644); err != nil {
		return nil, err
	}
	if err := replaceDir(out, dir); err != nil {
		return nil, err
	}
	k.dir = dir
	return k, nil
}

// xzMagic starts every xz stream.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// extractVmlinux finds the xz stream inside a bzImage, decompresses it with
// the xz tool (the kernel's stream uses the x86 BCJ filter, which pure-Go
// xz readers lack) and checks that the result is an ELF file.
func extractVmlinux(ctx context.Context, bzImage, dst string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	for off := 0; ; {
		i := bytes.Index(data[off:], xzMagic)
		if i < 0 {
			return fmt.Errorf("%s: no xz stream decompresses to an ELF vmlinux", bzImage)
		}
		off += i
		if err := xzToFile(ctx, data[off:], dst); err == nil && isELF(dst) {
			return nil
		}
		off++
	}
}

func xzToFile(ctx context.Context, stream []byte, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	// --single-stream ignores what follows the stream inside the bzImage.
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(stream)
	cmd.Stdout = f
	if err := cmd.Run(); err != nil {
		return err
	}
	return f.Close()
}

func isELF(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	hdr := make([]byte, 4)
	_, err = io.ReadFull(f, hdr)
	return err == nil && string(hdr) == "\x7fELF"
}

// copyModules resolves the guest's modules in modDir (lib/modules/<release>),
// copies them, decompressed, into k's modules/ and writes modules/load.
func copyModules(ctx context.Context, modDir string, k *kernelInfo) error {
	builtin := map[string]bool{}
	if f, err := os.Open(filepath.Join(modDir, "modules.builtin")); err == nil {
		builtin, err = parseBuiltin(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	lookup, err := moduleTable(ctx, modDir)
	if err != nil {
		return err
	}
	order, err := resolveModules(guestModules, builtin, lookup)
	if err != nil {
		return err
	}
	var load []string
	for _, m := range order {
		name := moduleName(m.Path) + ".ko"
		if err := decompressModule(ctx, filepath.Join(modDir, m.Path), filepath.Join(k.moduleDir(), name)); err != nil {
			return err
		}
		load = append(load, name)
	}
	k.Modules = load
	return os.WriteFile(filepath.Join(k.moduleDir(), "load"), []byte(strings.Join(load, "\n")+"\n"), 0o644)
}

// moduleTable returns a lookup over modules.dep when the tree has one, else
// over modules.order and each module's .modinfo.
func moduleTable(ctx context.Context, modDir string) (func(string) (moduleEntry, error), error) {
	if f, err := os.Open(filepath.Join(modDir, "modules.dep")); err == nil {
		defer f.Close()
		mods, err := parseModulesDep(f)
		if err != nil {
			return nil, err
		}
		return func(name string) (moduleEntry, error) {
			e, ok := mods[name]
			if !ok {
				return moduleEntry{}, fmt.Errorf("module %s: not in modules.dep", name)
			}
			return e, nil
		}, nil
	}
	paths, err := readLines(filepath.Join(modDir, "modules.order"))
	if err != nil {
		return nil, fmt.Errorf("module tree %s has neither modules.dep nor modules.order: %w", modDir, err)
	}
	l := &lazyModules{paths: map[string]string{}, cache: map[string]moduleEntry{}}
	for _, p := range paths {
		// modules.order names .ko files; the package may ship them compressed.
		if _, err := os.Stat(filepath.Join(modDir, p)); err != nil {
			if _, errXZ := os.Stat(filepath.Join(modDir, p+".xz")); errXZ == nil {
				p += ".xz"
			}
		}
		l.paths[moduleName(p)] = p
	}
	l.depsOf = func(p string) ([]string, error) {
		file := filepath.Join(modDir, p)
		if strings.HasSuffix(p, ".xz") {
			tmp, err := os.CreateTemp("", "tartarus-mod-*.ko")
			if err != nil {
				return nil, err
			}
			tmp.Close()
			defer os.Remove(tmp.Name())
			if err := decompressModule(ctx, file, tmp.Name()); err != nil {
				return nil, err
			}
			file = tmp.Name()
		}
		return modinfoDepends(file)
	}
	return l.lookup, nil
}

// decompressModule copies a module file, decompressing .ko.xz.
func decompressModule(ctx context.Context, src, dst string) error {
	if !strings.HasSuffix(src, ".xz") {
		return copyFile(src, dst, 0o644)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := xzToFile(ctx, b, dst); err != nil {
		return fmt.Errorf("decompress %s: %w", src, err)
	}
	return nil
}

// copyFile copies src to dst with mode perm.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// replaceDir moves the fully built directory src to dst, replacing what was
// there. The old dst is renamed aside first, so dst is never half-written.
func replaceDir(src, dst string) error {
	old := dst + ".old"
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	if err := os.Rename(dst, old); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	return os.RemoveAll(old)
}
