package kampe

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ImageKey names a template image's content for caches: its name and
// digest, or, without a digest, a hash of the root filesystem's path, size
// and modification time.
func ImageKey(img *tartarus.Image) (string, error) {
	if img == nil || img.RootFS == "" {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "image without a root filesystem")
	}
	if !tartarus.ValidName(img.Name) {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "image name %q", img.Name)
	}
	d := img.Digest
	if d == "" {
		st, err := os.Stat(img.RootFS)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", img.Name, err)
		}
		sum := sha256.Sum256(fmt.Appendf(nil, "%s|%d|%d", img.RootFS, st.Size(), st.ModTime().UnixNano()))
		d = hex.EncodeToString(sum[:])
	}
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 16 {
		d = d[:16]
	}
	return img.Name + "-" + d, nil
}

// UnpackImage returns a directory holding img's root filesystem, unpacked
// under cacheDir once per image (ImageKey) and shared read-only afterwards.
// A RootFS that is already a directory is returned as it is. An ext4 image
// is read with debugfs (e2fsprogs), which keeps owners, modes and symbolic
// links and needs no mount.
func UnpackImage(ctx context.Context, img *tartarus.Image, cacheDir string) (string, error) {
	key, err := ImageKey(img)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(img.RootFS)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", img.Name, err)
	}
	if st.IsDir() {
		return img.RootFS, nil
	}
	dir := filepath.Join(cacheDir, key)
	if _, err := os.Stat(filepath.Join(dir, ".tartarus-unpacked")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".unpack-"+key+"-")
	if err != nil {
		return "", fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "rdump / "+root, img.RootFS)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("unpack image %s: debugfs: %w: %s", img.Name, err, strings.TrimSpace(out.String()))
	}
	// debugfs exits 0 even when it could not read the image; an empty
	// directory is how that shows.
	if ents, _ := os.ReadDir(root); len(ents) == 0 {
		return "", fmt.Errorf("unpack image %s: debugfs wrote nothing: %s", img.Name, strings.TrimSpace(out.String()))
	}
	_ = os.Remove(filepath.Join(root, "lost+found"))
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run"} {
		_ = os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	_ = os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	if err := os.WriteFile(filepath.Join(root, ".tartarus-unpacked"), []byte(key+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(root, dir); err != nil {
		// Another caller unpacked it first; theirs is as good as ours.
		if _, statErr := os.Stat(filepath.Join(dir, ".tartarus-unpacked")); statErr == nil {
			return dir, nil
		}
		return "", fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	return dir, nil
}

// WriteTar writes the tree under dir to w as a tar stream with names
// relative to dir, keeping owners, modes, symbolic links and device nodes.
// Files named .tartarus-unpacked (the unpack marker) are left out.
func WriteTar(ctx context.Context, dir string, w io.Writer) error {
	return writeTar(ctx, dir, w, false)
}

// WriteTarOneFileSystem is WriteTar that stays on dir's file system: the
// directories other file systems are mounted on are written empty. It reads
// a running container's root through /proc/<pid>/root without descending
// into its /proc, /sys or /dev.
func WriteTarOneFileSystem(ctx context.Context, dir string, w io.Writer) error {
	return writeTar(ctx, dir, w, true)
}

func writeTar(ctx context.Context, dir string, w io.Writer, oneFS bool) error {
	var rootDev uint64
	if st, err := os.Stat(dir); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			rootDev = sys.Dev
		}
	}
	// A trailing slash makes the walk follow dir itself when it is a link
	// (/proc/<pid>/root is one).
	walkRoot := dir
	if !strings.HasSuffix(walkRoot, "/") {
		walkRoot += "/"
	}
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(walkRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." || rel == ".tartarus-unpacked" {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var skipBelow bool
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && oneFS && fi.IsDir() && sys.Dev != rootDev {
			skipBelow = true
		}
		if fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		link := ""
		if fi.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
			hdr.Uname, hdr.Gname = "", ""
		}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if skipBelow {
			return filepath.SkipDir
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return tw.Close()
}

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
