package container

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
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
