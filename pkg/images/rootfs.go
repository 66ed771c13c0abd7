package images

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// freeSpace is what every root filesystem leaves free for users' files: each
// sandbox writes into a copy-on-write overlay of it, so free space costs
// nothing on the host until used.
const freeSpace = 1 << 30

// buildBase lays out a busybox root filesystem in dir from Debian's
// busybox-static package: the binary, one symlink per applet, and the few
// files and directories a shell expects.
func buildBase(ctx context.Context, dir, work string, pkg aptPackage) error {
	root, err := downloadAndExtract(ctx, work, pkg)
	if err != nil {
		return err
	}
	bb := filepath.Join(dir, "bin", "busybox")
	if err := os.MkdirAll(filepath.Dir(bb), 0o755); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		return err
	}
	out, err := run(ctx, "", bb, "--list-full")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" || !strings.Contains(applet, "/") || strings.Contains(applet, "..") {
			continue
		}
		link := filepath.Join(dir, applet)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", link); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return writeSkeleton(dir, `PRETTY_NAME="Tartarus base (busybox `+pkg.Version+`)"`)
}

// writeSkeleton adds the directories and /etc files every template has.
func writeSkeleton(dir, prettyName string) error {
	dirs := map[string]os.FileMode{
		"etc": 0o755, "root": 0o700, "tmp": 0o1777, "proc": 0o555, "sys": 0o555,
		"dev": 0o755, "run": 0o755, "home": 0o755, "var/tmp": 0o1777, "usr/bin": 0o755, "usr/sbin": 0o755, "sbin": 0o755,
	}
	for d, perm := range dirs {
		p := filepath.Join(dir, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, perm); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
		"etc/shadow":      "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
		"etc/resolv.conf": "",
		"etc/os-release":  prettyName + "\nID=tartarus\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err == nil {
			continue // the distribution's own file wins
		}
		perm := os.FileMode(0o644)
		if name == "etc/shadow" {
			perm = 0o640
		}
		if err := os.WriteFile(p, []byte(content), perm); err != nil {
			return err
		}
	}
	return nil
}

// debianSuite is the release the python template is bootstrapped from.
const debianSuite = "bookworm"

// buildDebian bootstraps a minimal Debian with the given extra packages
// into dir from the mirror apt already uses, then drops apt's caches.
func buildDebian(ctx context.Context, dir string, include []string, mirror string) error {
	args := []string{"--variant=minbase"}
	if len(include) > 0 {
		args = append(args, "--include="+strings.Join(include, ","))
	}
	args = append(args, debianSuite, dir, mirror)
	if _, err := run(ctx, "", "debootstrap", args...); err != nil {
		return fmt.Errorf("debootstrap: %w", err)
	}
	for _, glob := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*", "var/log/*.log", "var/log/apt/*"} {
		matches, _ := filepath.Glob(filepath.Join(dir, glob))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	return writeSkeleton(dir, `PRETTY_NAME="Tartarus python (Debian `+debianSuite+`)"`)
}

// aptMirror returns the Debian mirror that apt on this machine already uses
// for the main archive, from /etc/apt/sources.list.d/*.sources (deb822) or
// /etc/apt/sources.list.
func aptMirror(etcApt string) (string, error) {
	files, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*.sources"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := mirrorFromDeb822(string(b)); m != "" {
			return m, nil
		}
	}
	lists, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*.list"))
	lists = append([]string{filepath.Join(etcApt, "sources.list")}, lists...)
	for _, f := range lists {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := mirrorFromList(string(b)); m != "" {
			return m, nil
		}
	}
	return "", fmt.Errorf("no Debian mirror for %s in %s: configure apt first", debianSuite, etcApt)
}

// mirrorFromDeb822 finds the URI of the first enabled "Types: deb" stanza
// whose Suites include the bootstrap suite.
func mirrorFromDeb822(s string) string {
	for _, stanza := range strings.Split(strings.ReplaceAll(s, "\r", ""), "\n\n") {
		fields := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(stanza))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if ok && !strings.HasPrefix(k, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if strings.EqualFold(fields["enabled"], "no") || !hasWord(fields["types"], "deb") || !hasWord(fields["suites"], debianSuite) {
			continue
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return uris[0]
		}
	}
	return ""
}

// mirrorFromList finds the URI of the first "deb URI bookworm …" line.
func mirrorFromList(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 1 && strings.HasPrefix(f[1], "[") { // deb [options] uri suite
			for len(f) > 1 && !strings.HasSuffix(f[1], "]") {
				f = append(f[:1], f[2:]...)
			}
			if len(f) > 1 {
				f = append(f[:1], f[2:]...)
			}
		}
		if len(f) >= 3 && f[0] == "deb" && f[2] == debianSuite {
			return f[1]
		}
	}
	return ""
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// makeExt4 writes dir into a sparse ext4 image at dst sized to hold it with
// freeSpace to spare.
func makeExt4(ctx context.Context, dir, dst string) error {
	used, err := treeSize(dir)
	if err != nil {
		return err
	}
	// ext4 metadata (inode tables, journal) takes room too; a tenth plus
	// 64 MiB covers it for images of this size.
	size := used + used/10 + 64<<20 + freeSpace
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	_, err = run(ctx, "", "mke2fs", "-q", "-F", "-t", "ext4", "-d", dir, "-L", "root",
		"-m", "0", "-E", "root_owner=0:0", dst, fmt.Sprintf("%dk", size>>10))
	if err != nil {
		return fmt.Errorf("make ext4 image: %w", err)
	}
	return nil
}

// treeSize adds up the space dir's entries need, in 4 KiB blocks.
func treeSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 4096 // inode and directory entry, roughly
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += (info.Size() + 4095) &^ 4095
		}
		return nil
	})
	return total, err
}
