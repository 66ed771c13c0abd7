package kampe

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ExtractTar unpacks a tar stream (such as `docker export`) into dir, which
// must exist. Every name is resolved inside dir (os.Root), so no entry —
// through "..", an absolute name or a symbolic link planted by an earlier
// entry — can write outside it. Device nodes are skipped (the microVM
// guest has its own /dev); it returns how many entries it skipped.
func ExtractTar(ctx context.Context, r io.Reader, dir string) (skipped int, err error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	return ExtractTarRoot(ctx, r, root)
}

// ExtractTarRoot is ExtractTar into an open root. An entry replaces
// whatever non-directory its name holds (a symbolic link is removed, never
// written through).
func ExtractTarRoot(ctx context.Context, r io.Reader, root *os.Root) (skipped int, err error) {
	type dirTime struct {
		name string
		hdr  *tar.Header
	}
	var dirs []dirTime
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return skipped, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return skipped, fmt.Errorf("extract: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "/"))
		if name == "." || name == "" {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			return skipped, tartarus.Errorf(tartarus.ErrInvalid, "extract: entry %q escapes the root", hdr.Name)
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return skipped, fmt.Errorf("extract %s: %w", name, err)
			}
		}
		mode := os.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, mode); err != nil && !errors.Is(err, fs.ErrExist) {
				return skipped, fmt.Errorf("extract %s: %w", name, err)
			}
			dirs = append(dirs, dirTime{name, hdr})
		case tar.TypeReg:
			_ = root.Remove(name)
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
			if err != nil {
				return skipped, fmt.Errorf("extract %s: %w", name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return skipped, fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return skipped, fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeLink:
			target := path.Clean(strings.TrimPrefix(hdr.Linkname, "/"))
			_ = root.Remove(name)
			if err := root.Link(target, name); err != nil {
				return skipped, fmt.Errorf("extract %s: hard link to %s: %w", name, target, err)
			}
			continue // owner and mode are the target's
		default:
			skipped++
			continue
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return skipped, fmt.Errorf("extract %s: %w", name, err)
		}
		if hdr.Typeflag != tar.TypeSymlink {
			// Chmod again: the umask trimmed the mode given at creation,
			// and setuid/setgid/sticky bits are not in Perm.
			if err := root.Chmod(name, tarMode(hdr.Mode)); err != nil {
				return skipped, fmt.Errorf("extract %s: %w", name, err)
			}
			_ = root.Chtimes(name, hdr.ModTime, hdr.ModTime)
		}
	}
	// Directory times last: creating their entries changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = root.Chtimes(dirs[i].name, dirs[i].hdr.ModTime, dirs[i].hdr.ModTime)
	}
	return skipped, nil
}

func tarMode(m int64) os.FileMode {
	fm := os.FileMode(m).Perm()
	if m&04000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&02000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&01000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// MakeExt4 writes the tree under dir into a new ext4 image at out (mke2fs
// -d), sized for the tree plus headroom so the sandbox's overlay has room.
func MakeExt4(ctx context.Context, dir, out string, headroomMB int) error {
	var bytes, inodes int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += (fi.Size() + 4095) &^ 4095
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("size %s: %w", dir, err)
	}
	sizeMB := (bytes+inodes*512)*5/4>>20 + int64(headroomMB) + 16
	_ = os.Remove(out)
	cmd := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs",
		"-N", fmt.Sprint(inodes*2+4096), "-d", dir, out, fmt.Sprintf("%dM", sizeMB))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mke2fs %s: %w: %s", out, err, strings.TrimSpace(string(b)))
	}
	return nil
}
