package container

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// maxAccountFile bounds what is read of a sandbox's /etc/passwd or
// /etc/group: the tree comes from a tenant's image.
const maxAccountFile = 4 << 20

// User is who an exec runs as, resolved from a sandbox's own files.
type User struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups, the primary one included
	Home     string
}

// LookupUser resolves an exec's user (NAME, UID, NAME:GROUP or UID:GID;
// empty is root) against etc/passwd and etc/group of the root file system
// tree at root, read inside it (no link leads out of it), as the microVM
// guest agent does in its guest: a name that is not there is refused, a
// numeric uid that is not there runs with gid 0 and home "/".
func LookupUser(root, spec string) (*User, error) {
	if spec == "" {
		spec = "root"
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	passwd, err := readAccountFile(root, "etc/passwd")
	if err != nil {
		return nil, err
	}
	groups, err := readAccountFile(root, "etc/group")
	if err != nil {
		return nil, err
	}
	u := &User{Home: "/"}
	userName := ""
	if f, ok := findAccount(passwd, name, 2, 7); ok {
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "user %s: bad entry in the sandbox's /etc/passwd", name)
		}
		u.UID, u.GID, userName = uint32(uid), uint32(gid), f[0]
		if f[5] != "" {
			u.Home = f[5]
		}
	} else if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.UID = uint32(n)
	} else {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "user %s is not in the sandbox's /etc/passwd", name)
	}
	if hasGroup {
		if f, ok := findAccount(groups, group, 2, 3); ok {
			gid, err := strconv.ParseUint(f[2], 10, 32)
			if err != nil {
				return nil, tartarus.Errorf(tartarus.ErrInvalid, "group %s: bad entry in the sandbox's /etc/group", group)
			}
			u.GID = uint32(gid)
		} else if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "group %s is not in the sandbox's /etc/group", group)
		}
		u.Groups = []uint32{u.GID}
		return u, nil
	}
	u.Groups = []uint32{u.GID}
	if userName == "" {
		return u, nil
	}
	for _, line := range groups {
		f := strings.Split(line, ":")
		if len(f) < 4 || !slices.Contains(strings.Split(f[3], ","), userName) {
			continue
		}
		if gid, err := strconv.ParseUint(f[2], 10, 32); err == nil && !slices.Contains(u.Groups, uint32(gid)) {
			u.Groups = append(u.Groups, uint32(gid))
		}
	}
	return u, nil
}

// findAccount returns the fields of the first line whose name (field 0),
// or else whose id (field idField), is key; lines with fewer than n fields
// are skipped.
func findAccount(lines []string, key string, idField, n int) ([]string, bool) {
	for _, byID := range []bool{false, true} {
		for _, line := range lines {
			f := strings.Split(line, ":")
			if len(f) < n {
				continue
			}
			if (!byID && f[0] == key) || (byID && f[idField] == key) {
				return f, true
			}
		}
	}
	return nil, false
}

// readAccountFile reads the lines of name inside root; a missing file has
// none.
func readAccountFile(root, name string) ([]string, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("sandbox root: %w", err)
	}
	defer r.Close()
	// Non-blocking and then checked: a FIFO there must not hold the exec.
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "the sandbox's /%s: %v", name, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "the sandbox's /%s is not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxAccountFile))
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "the sandbox's /%s: %v", name, err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxAccountFile)
	for sc.Scan() {
		if l := sc.Text(); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines, nil
}
