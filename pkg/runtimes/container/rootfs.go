package container

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
	"slices"
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
//
// Every entry is opened inside dir (os.Root), never by a host path, and a
// regular file is read only if the file opened is the one just listed: a
// symbolic link swapped in by whoever owns the tree (a running container)
// cannot send the walk to the host's files; it makes the walk fail instead.
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
	// OpenRoot follows dir itself when it is a link (/proc/<pid>/root is
	// one); everything below is resolved inside it.
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	defer root.Close()
	st, err := root.Stat(".")
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	tw := tar.NewWriter(w)
	if err := walkTar(ctx, root, tw, ".", st, devOf(st), oneFS); err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return tw.Close()
}

// walkTar writes the entries of directory rel of root, depth first, in
// name order; dirInfo is what Lstat said of it, and the directory opened
// must be that one.
func walkTar(ctx context.Context, root *os.Root, tw *tar.Writer, rel string, dirInfo os.FileInfo, rootDev uint64, oneFS bool) error {
	d, err := root.Open(rel)
	if err != nil {
		return err
	}
	if got, err := d.Stat(); err != nil || !os.SameFile(dirInfo, got) {
		d.Close()
		return fmt.Errorf("%s changed while it was read: refused", rel)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := path.Join(rel, name)
		if p == ".tartarus-unpacked" {
			continue
		}
		fi, err := root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSocket != 0 {
			continue
		}
		link := ""
		if fi.Mode()&os.ModeSymlink != 0 {
			if link, err = root.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = p
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
			hdr.Uname, hdr.Gname = "", ""
		}
		hdr.Format = tar.FormatPAX
		if hdr.Typeflag == tar.TypeReg {
			if err := writeRegular(root, tw, p, fi, hdr); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.IsDir() && !(oneFS && devOf(fi) != rootDev) {
			if err := walkTar(ctx, root, tw, p, fi, rootDev, oneFS); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeRegular writes the header and content of the regular file p, which
// Lstat described as fi. The file opened must be that same file (device and
// inode): a link swapped in since is refused, not followed.
func writeRegular(root *os.Root, tw *tar.Writer, p string, fi os.FileInfo, hdr *tar.Header) error {
	f, err := root.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	got, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if !got.Mode().IsRegular() || !os.SameFile(fi, got) {
		return fmt.Errorf("%s changed while it was read (now %s): refused", p, got.Mode().Type())
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	// A file that grows is cut at its listed size; one that shrinks fails
	// the archive rather than padding it.
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

func devOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev)
	}
	return 0
}
