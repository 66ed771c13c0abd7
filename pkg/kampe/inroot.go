package kampe

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// MkdirInRoot returns directory name of the tree at rootDir, made when it
// is missing, as an os.Root. name is resolved as the guest would resolve it
// with rootDir as "/" (openat2 with RESOLVE_IN_ROOT): an absolute symbolic
// link or ".." in the image stays inside rootDir, so no link planted in an
// image can send a later write to the host. A missing component is made a
// directory; a dangling link or other non-directory where a directory is
// needed is replaced by one.
func MkdirInRoot(rootDir, name string) (*os.Root, error) {
	rel := strings.TrimPrefix(path.Clean("/"+name), "/")
	top, err := unix.Open(rootDir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", rootDir, err)
	}
	defer unix.Close(top)
	fd, err := mkdirInRoot(top, rel)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", "/"+rel, rootDir, err)
	}
	defer unix.Close(fd)
	// The magic link opens the very directory fd holds.
	r, err := os.OpenRoot(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", "/"+rel, rootDir, err)
	}
	return r, nil
}

func openInRoot(top int, rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(top, rel, &unix.OpenHow{
			Flags:   unix.O_DIRECTORY | unix.O_RDONLY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue // a rename raced the lookup; the kernel asks to retry
		}
		return fd, err
	}
}

func mkdirInRoot(top int, rel string) (int, error) {
	fd, err := openInRoot(top, rel)
	if err == nil || rel == "" {
		return fd, err
	}
	if !replaceable(err) {
		return -1, err
	}
	// Make it one component at a time, each parent resolved in the root.
	parts := strings.Split(rel, "/")
	parent, err := openInRoot(top, "")
	if err != nil {
		return -1, err
	}
	for i, p := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := openInRoot(top, prefix)
		if replaceable(err) {
			err = unix.Mkdirat(parent, p, 0o755)
			if errors.Is(err, unix.EEXIST) {
				// A dangling link or a file: neutralise it.
				var st unix.Stat_t
				if serr := unix.Fstatat(parent, p, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
					err = tartarus.Errorf(tartarus.ErrInvalid, "%s changed while it was made", prefix)
				} else if err = unix.Unlinkat(parent, p, 0); err == nil {
					err = unix.Mkdirat(parent, p, 0o755)
				}
			}
			if err == nil {
				fd, err = openInRoot(top, prefix)
			}
		}
		unix.Close(parent)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", prefix, err)
		}
		parent = fd
	}
	return parent, nil
}

// replaceable reports whether err says the name is missing or is not a
// usable directory (a file, a dangling link, a loop of links).
func replaceable(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP)
}
