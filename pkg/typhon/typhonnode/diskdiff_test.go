package typhonnode

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDiffDisk builds a small ext4 template, an overlay over it, writes
// into one file's block through the overlay (as a guest would) and wants
// the diff to name that file, and only it, as a template file.
func TestDiffDisk(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	// Names of any bytes: the guest picks them.
	files := map[string]string{"etc/passwd": strings.Repeat("root:x:0:0\n", 400), "home/a\nb": "x", "bin/\x1b[31mls": strings.Repeat("y", 9000)}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := filepath.Join(dir, "rootfs.ext4")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("mkfs.ext4", "-q", "-b", "4096", "-d", root, base, "16M")
	blk := strings.TrimSpace(run("debugfs", "-R", "bmap /etc/passwd 0", base))
	blk = blk[strings.LastIndexByte(blk, '\n')+1:]
	n, err := strconv.ParseInt(blk, 10, 64)
	if err != nil {
		t.Fatalf("bmap: %q", blk)
	}
	overlay := filepath.Join(dir, "overlay.qcow2")
	run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 "+strconv.FormatInt(n*4096, 10)+" 4096", overlay)

	d, err := diffDisk(context.Background(), overlay, base, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", d)
	if d.ChangedBlocks != 1 || len(d.Files) != 1 || d.Files[0].Path != "/etc/passwd" || !d.Files[0].InTemplate || d.Files[0].Blocks != 1 {
		t.Fatalf("diff: %+v", d)
	}
	// A link in place of the overlay is not followed.
	link := filepath.Join(dir, "link.qcow2")
	if err := os.Symlink(overlay, link); err != nil {
		t.Fatal(err)
	}
	if _, err := diffDisk(context.Background(), link, base, dir); err == nil {
		t.Fatal("a link was followed")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "diskdiff-*")); len(left) != 0 {
		t.Fatalf("scratch left: %v", left)
	}
}
