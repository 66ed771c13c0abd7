package images

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// run runs a host tool in dir and returns its standard output. A failure
// carries the tool's last lines of standard error.
func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(stderr.String(), 8))
	}
	return stdout.Bytes(), nil
}

// tail returns the last n lines of s, trimmed.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// aptPackage is a Debian package at the version apt would install.
type aptPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

func (p aptPackage) String() string { return p.Name + "=" + p.Version }

// resolveKernelPackage finds the concrete kernel package behind the
// linux-image-amd64 meta package ("linux-image-6.1.0-56-amd64").
func resolveKernelPackage(ctx context.Context) (aptPackage, error) {
	out, err := run(ctx, "", "apt-cache", "depends", "linux-image-amd64")
	if err != nil || parseKernelDepends(out) == "" {
		// A fresh machine may have no package lists yet.
		if _, uerr := run(ctx, "", "apt-get", "update", "-qq"); uerr == nil {
			out, err = run(ctx, "", "apt-cache", "depends", "linux-image-amd64")
		}
	}
	if err != nil {
		return aptPackage{}, fmt.Errorf("resolve kernel package: %w", err)
	}
	name := parseKernelDepends(out)
	if name == "" {
		return aptPackage{}, fmt.Errorf("resolve kernel package: apt-cache knows no linux-image-* behind linux-image-amd64 (run apt-get update)")
	}
	return packageVersion(ctx, name)
}

// parseKernelDepends picks the first "Depends: linux-image-…" of apt-cache depends.
func parseKernelDepends(out []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && strings.TrimPrefix(f[0], "|") == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1]
		}
	}
	return ""
}

// packageVersion asks apt which version of name it would install.
func packageVersion(ctx context.Context, name string) (aptPackage, error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return aptPackage{}, fmt.Errorf("package %s: %w (run apt-get update)", name, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Version: "); ok {
			return aptPackage{Name: name, Version: strings.TrimSpace(v)}, nil
		}
	}
	return aptPackage{}, fmt.Errorf("package %s: apt-cache shows no version (run apt-get update)", name)
}

// downloadAndExtract fetches pkg with apt-get download into dir and unpacks
// it into dir/root. It returns the unpacked tree's path.
func downloadAndExtract(ctx context.Context, dir string, pkg aptPackage) (string, error) {
	// apt drops privileges to _apt for downloads; let it write here.
	if err := os.Chmod(dir, 0o777); err != nil {
		return "", err
	}
	if _, err := run(ctx, dir, "apt-get", "download", "-q", pkg.String()); err != nil {
		return "", fmt.Errorf("download %s: %w", pkg, err)
	}
	debs, err := findFiles(dir, ".deb")
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("download %s: want one .deb in %s, found %d (%v)", pkg, dir, len(debs), err)
	}
	root := dir + "/root"
	if _, err := run(ctx, dir, "dpkg-deb", "-x", debs[0], root); err != nil {
		return "", fmt.Errorf("unpack %s: %w", pkg, err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return "", err
	}
	return root, nil
}

// findFiles lists the files in dir (not below) whose names end in suffix.
func findFiles(dir, suffix string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), suffix) {
			out = append(out, dir+"/"+e.Name())
		}
	}
	return out, nil
}
